package querycheck

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/storage"

	"github.com/lbpath/lbpath/deploy/rules"
)

const repoRoot = "../.."

func loadCatalog(t *testing.T) *Catalog {
	t.Helper()
	c, err := LoadCatalog(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCatalogDerivedFromSources(t *testing.T) {
	c := loadCatalog(t)
	for _, p := range c.Problems {
		t.Errorf("telemetry sources disagree: %s", p)
	}
	// Spot checks of the translation, not a second list: each must come out
	// of the parsed sources.
	want := map[string][]string{
		"lbpath_connections_total":               {"lbpath_role", "lbpath_entry_node", "k8s_pod_name", "lbpath_pod_template_hash"},
		"lbpath_bytes_total":                     {"lbpath_direction"},
		"lbpath_request_duration_seconds_bucket": {"le", "k8s_deployment_name"},
		"lbpath_request_duration_seconds":        {"k8s_deployment_name"}, // native histogram
		"lbpath_agent_dropped_total":             {"lbpath_stage", "lbpath_reason"},
		"lbpath_lb_share_ratio":                  {"lbpath_signal", "k8s_pod_name"},
		"lbpath_deploy_latency_p90_seconds":      {"lbpath_revision"},
		"lbpath_deploy_rollouts_total":           {"k8s_deployment_name"},
	}
	for name, labels := range want {
		m, ok := c.Metrics[name]
		if !ok {
			t.Errorf("%s not derived (have %s)", name, c.near(name))
			continue
		}
		for _, l := range labels {
			if !m.Labels[l] {
				t.Errorf("%s: label %s not derived", name, l)
			}
		}
	}
	if _, ok := c.Metrics["lbpath_lb_share"]; ok {
		t.Error("lbpath.lb.share has unit 1: its Prometheus name must carry _ratio")
	}
	if c.Metrics["lbpath_rtt_seconds_sum"].Labels["le"] || c.Metrics["lbpath_rtt_seconds"].Labels["le"] {
		t.Error("le belongs to _bucket only")
	}
	for _, g := range []string{"k8s_cluster_name", "k8s_node_name", "job"} {
		if !c.Global[g] {
			t.Errorf("resource label %s not derived from docs/TELEMETRY.md", g)
		}
	}
	if len(c.Metrics) < 30 {
		t.Errorf("only %d series names derived", len(c.Metrics))
	}
}

func TestCheckNamesRejectsUndeclared(t *testing.T) {
	c := loadCatalog(t)
	for _, bad := range []string{
		`lbpath_lb_share{lbpath_signal="connections"}`,                // missing the _ratio suffix
		`rate(lbpath_connections_total{lbpath_pod="x"}[5m])`,          // no such label
		`sum by (lbpath_direction) (rate(lbpath_requests_total[5m]))`, // label of another metric
		`lbpath_lb_hot{le="1"}`,
		`sum(rate(lbpath_connections_total[5m]`, // syntax
	} {
		if err := c.CheckNames(bad, nil); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// TestEveryQueryParsesAndUsesDeclaredNames is the unit-level proof of every
// shipped query: it parses with Prometheus' parser and uses only names lbpath
// declares.
func TestEveryQueryParsesAndUsesDeclaredNames(t *testing.T) {
	c := loadCatalog(t)
	qs, err := All()
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rules.All()
	if err != nil {
		t.Fatal(err)
	}
	recorded, err := c.Recorded(rs)
	if err != nil {
		t.Fatal(err)
	}
	var dash, rule int
	for _, q := range qs {
		if q.Source == "dashboard" {
			dash++
		} else {
			rule++
		}
		e, err := Expand(q.Expr, nil)
		if err != nil {
			t.Errorf("%s: %v", q, err)
			continue
		}
		if err := c.CheckNames(e, recorded); err != nil {
			t.Errorf("%s: %s\n  %v", q, e, err)
		}
	}
	if dash < 50 || rule < 7 {
		t.Errorf("only %d dashboard and %d rule queries found", dash, rule)
	}
}

// evalAt is the instant the synthetic series are queried at (minute 60).
var evalAt = time.Unix(3600, 0)

func evaluate(t *testing.T, ng *promql.Engine, st storage.Queryable, q Query) parser.Value {
	t.Helper()
	e, err := Expand(q.Expr, nil)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	var qry promql.Query
	if q.Instant {
		qry, err = ng.NewInstantQuery(context.Background(), st, nil, e, evalAt)
	} else {
		qry, err = ng.NewRangeQuery(context.Background(), st, nil, e, evalAt.Add(-time.Hour), evalAt, time.Minute)
	}
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	res := qry.Exec(context.Background())
	if res.Err != nil {
		t.Fatalf("%s: %s: %v", q, e, res.Err)
	}
	return res.Value
}

func seriesOf(v parser.Value) []map[string]string {
	var out []map[string]string
	switch v := v.(type) {
	case promql.Vector:
		for _, s := range v {
			out = append(out, s.Metric.Map())
		}
	case promql.Matrix:
		for _, s := range v {
			out = append(out, s.Metric.Map())
		}
	case promql.Scalar:
		out = append(out, map[string]string{})
	}
	return out
}

// expectedEmpty are queries that rightly return nothing on the fixture.
var expectedEmpty = map[string]string{
	"lbpath:client_ip_required": "the committed rules file lists no Service (the fixture feeds the recorded series directly)",
}

// TestEveryQueryEvaluates runs each query on the PromQL engine over the
// synthetic cluster and requires a non-empty answer, then checks that the
// panels and alerts that must single out the hot pod, the regressed
// Deployment and the silent agent do so.
//
// It runs twice: with classic latency histograms (agents with
// --latency-histogram=explicit) and with native ones (the default
// exponential histograms through Prometheus' OTLP receiver).
func TestEveryQueryEvaluates(t *testing.T) {
	t.Run("classic histograms", func(t *testing.T) { everyQueryEvaluates(t, buildFixture(), promqltest.DefaultMaxSamplesPerQuery) })
	// A native histogram weighs its bucket count in the engine's sample
	// limit: the fixture's 160-bucket histograms over a one-hour range query
	// need more than the test engine's default (10,000), far less than a
	// Prometheus server's (--query.max-samples, 50,000,000).
	t.Run("native histograms", func(t *testing.T) { everyQueryEvaluates(t, buildNativeFixture(), 1_000_000) })
}

func everyQueryEvaluates(t *testing.T, fixture string, maxSamples int) {
	st := promqltest.LoadedStorage(t, fixture)
	ng := promqltest.NewTestEngine(t, false, 0, maxSamples)
	qs, err := All()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]map[string]string{}
	for _, q := range qs {
		s := seriesOf(evaluate(t, ng, st, q))
		got[q.Group+"/"+q.Name+"/"+q.RefID] = s
		if len(s) == 0 && expectedEmpty[q.Name] == "" {
			t.Errorf("%s: empty result\n  %s", q, q.Expr)
		}
	}
	only := func(key, label, want string) {
		t.Helper()
		s, ok := got[key]
		if !ok {
			t.Errorf("no query %s", key)
			return
		}
		if len(s) == 0 {
			t.Errorf("%s: empty", key)
		}
		for _, m := range s {
			if m[label] != want {
				t.Errorf("%s: returned %s=%q, want only %q", key, label, m[label], want)
			}
		}
	}
	only("lbpath / Service load balance/Hot pods/A", "k8s_pod_name", hotPod)
	only("lbpath / Deploys/Regression/A", "k8s_deployment_name", regressedDe)
	only("lbpath-load-balance/LbpathHotPod/", "k8s_pod_name", hotPod)
	only("lbpath-load-balance/LbpathServiceImbalanced/", "k8s_service_name", "web")
	only("lbpath-deploys/LbpathDeployRegression/", "k8s_deployment_name", regressedDe)
	only("lbpath-agent/LbpathAgentSilent/", "k8s_node_name", silentNode)
	only("lbpath-agent/LbpathAgentExportFailing/", "lbpath_reason", "queue_full")
	only("lbpath-node/LbpathConntrackDropping/", "k8s_node_name", "node-b")
	only("lbpath-node/LbpathConntrackNearlyFull/", "k8s_node_name", "node-b")
	only("lbpath-client-ip/LbpathClientIPLost/", "k8s_service_name", "web")
	only("lbpath / Client IP/Services that must keep the client IP/A", "k8s_service_name", "web")
	only("lbpath / LB path overview/variable cluster/", "k8s_cluster_name", "prod")

	entries := map[string]bool{}
	for _, m := range got["lbpath / LB path overview/Connections by entry/A"] {
		entries[m["lbpath_entry"]] = true
	}
	if !entries["loadbalancer"] || !entries["clusterip"] || entries[""] {
		t.Errorf("connections by entry: got entries %v, want loadbalancer and clusterip, none unknown", entries)
	}
}

// TestHotPodShareValue checks a value, not just a label: the hot-pods table
// reports the hot pod's connection share.
func TestHotPodShareValue(t *testing.T) {
	st := promqltest.LoadedStorage(t, buildFixture())
	ng := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	v := evaluate(t, ng, st, Query{Expr: "lbpath_lb_share_ratio{lbpath_signal=\"connections\"} and on (k8s_namespace_name, k8s_service_name, k8s_pod_name) (lbpath_lb_hot == 1)", Instant: true})
	vec := v.(promql.Vector)
	if len(vec) != 1 || vec[0].F != 0.75 {
		t.Fatalf("got %v, want the hot pod at 0.75", vec)
	}
}

// TestRunRemote runs every query through RunRemote against an HTTP server
// that answers /api/v1/query from the same engine and fixture, so the real
// Prometheus proof (which calls RunRemote on a live server) exercises code
// that is already tested.
func TestRunRemote(t *testing.T) {
	st := promqltest.LoadedStorage(t, buildFixture())
	ng := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/query" || r.ParseForm() != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		resp := map[string]any{"status": "success"}
		q, err := ng.NewInstantQuery(r.Context(), st, nil, r.Form.Get("query"), evalAt)
		var res *promql.Result
		if err == nil {
			res = q.Exec(r.Context())
			err = res.Err
		}
		if err != nil {
			resp = map[string]any{"status": "error", "errorType": "bad_data", "error": err.Error()}
		} else {
			var out []map[string]any
			for _, m := range seriesOf(res.Value) {
				out = append(out, map[string]any{"metric": m, "value": []any{3600, "1"}})
			}
			resp["data"] = map[string]any{"resultType": "vector", "result": out}
		}
		_ = json.NewEncoder(w).Encode(resp)
	}))
	defer srv.Close()

	qs, err := All()
	if err != nil {
		t.Fatal(err)
	}
	res := RunRemote(context.Background(), srv.Client(), srv.URL, qs, nil, evalAt)
	if len(res) != len(qs) {
		t.Fatalf("%d results for %d queries", len(res), len(qs))
	}
	for _, r := range res {
		if r.Err != nil {
			t.Errorf("%s: %v", r.Query, r.Err)
		}
		if r.Empty() && expectedEmpty[r.Query.Name] == "" && r.Query.Instant {
			t.Errorf("%s: empty over HTTP\n  %s", r.Query, r.Expanded)
		}
	}
	bad := RunRemote(context.Background(), srv.Client(), srv.URL, []Query{{Expr: "sum(", Instant: true}}, nil, evalAt)
	if bad[0].Err == nil || !strings.Contains(bad[0].Err.Error(), "bad_data") {
		t.Errorf("syntax error not reported: %v", bad[0].Err)
	}
}

// TestExpand covers Grafana's variable syntaxes and label_values.
func TestExpand(t *testing.T) {
	got, err := Expand(`label_values(lbpath_connections_total{k8s_cluster_name=~"$cluster",x=~"${service:regex}"}, k8s_namespace_name)`, map[string]string{"cluster": "prod"})
	if err != nil {
		t.Fatal(err)
	}
	want := `group by (k8s_namespace_name) (lbpath_connections_total{k8s_cluster_name=~"prod",x=~".*"})`
	if got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	if _, err := parser.NewParser(parser.Options{}).ParseExpr(got); err != nil {
		t.Error(err)
	}
	if _, err := Expand(`rate(x[$unknown])`, nil); err == nil {
		t.Error("unknown variable accepted")
	}
}

// TestLatencyQuantileOnBothHistogramForms checks a value, not just a
// label, on both forms: the Deploys board's per-revision p90 of checkout's
// new revision, whose latency follows F(v) = v/(v+0.1 s), i.e. p90 = 0.9 s.
// The native answer is within one schema-3 bucket (a factor 2^(1/8)); the
// classic one within its 0.75–1 s bucket.
func TestLatencyQuantileOnBothHistogramForms(t *testing.T) {
	qs, err := All()
	if err != nil {
		t.Fatal(err)
	}
	var q Query
	for _, c := range qs {
		if c.Group == "lbpath / Deploys" && c.Name == "p90 at the pods by revision" {
			q = c
		}
	}
	if q.Expr == "" {
		t.Fatal("no per-revision p90 query on the Deploys board")
	}
	q.Instant = true
	for _, tc := range []struct {
		name     string
		fixture  string
		lo, hi   float64
		maxSampl int
	}{
		{"classic", buildFixture(), 0.75, 1, promqltest.DefaultMaxSamplesPerQuery},
		{"native", buildNativeFixture(), 0.9 / math.Exp2(1.0/8), 0.9 * math.Exp2(1.0/8), 1_000_000},
	} {
		st := promqltest.LoadedStorage(t, tc.fixture)
		ng := promqltest.NewTestEngine(t, false, 0, tc.maxSampl)
		var got float64
		n := 0
		for _, s := range evaluate(t, ng, st, q).(promql.Vector) {
			if s.Metric.Get("lbpath_pod_template_hash") == "8e9f" {
				got, n = s.F, n+1
			}
		}
		if n != 1 || !(got >= tc.lo && got <= tc.hi) {
			t.Errorf("%s: p90 of checkout 8e9f = %v (%d series), want in [%.3f, %.3f]", tc.name, got, n, tc.lo, tc.hi)
		}
	}
}
