package explain

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// Prometheus names of the series read here: the OTLP names of
// docs/TELEMETRY.md through Prometheus' default translation. A test checks
// each against dashboards/querycheck's catalog, which derives them from
// lbpath's sources, so a renamed metric fails the build's tests, not an
// incident.
const (
	mConnections   = "lbpath_connections_total"
	mRequests      = "lbpath_requests_total"
	mBytes         = "lbpath_bytes_total"
	mReqDuration   = "lbpath_request_duration_seconds" // native histogram (exponential); classic: + _bucket
	mShare         = "lbpath_lb_share_ratio"
	mHot           = "lbpath_lb_hot"
	mPods          = "lbpath_lb_pods"
	mNodeShare     = "lbpath_lb_node_share_ratio"
	mDeployP50     = "lbpath_deploy_latency_p50_seconds"
	mDeployP90     = "lbpath_deploy_latency_p90_seconds"
	mDeployP99     = "lbpath_deploy_latency_p99_seconds"
	mRegression    = "lbpath_deploy_regression"
	mPValue        = "lbpath_deploy_p_value"
	mTimeSince     = "lbpath_deploy_time_since_seconds"
	mDeploySamples = "lbpath_deploy_samples"
)

// Label names (OTLP attribute names through the same translation).
const (
	lNamespace  = "k8s_namespace_name"
	lService    = "k8s_service_name"
	lPod        = "k8s_pod_name"
	lNode       = "k8s_node_name"
	lDeployment = "k8s_deployment_name"
	lCluster    = "k8s_cluster_name"
	lRole       = "lbpath_role"
	lOutcome    = "lbpath_outcome"
	lEntry      = "lbpath_entry"
	lEntryNode  = "lbpath_entry_node"
	lSNAT       = "lbpath_snat"
	lCross      = "lbpath_cross_node"
	lSignal     = "lbpath_signal"
	lRevision   = "lbpath_revision"
	lHash       = "lbpath_pod_template_hash"
)

// querier runs instant queries at one evaluation time.
type querier struct {
	api promv1.API
	url string
	at  time.Time
}

func newQuerier(promURL string, client *http.Client, at time.Time) (*querier, error) {
	cfg := api.Config{Address: strings.TrimRight(promURL, "/")}
	if client != nil {
		cfg.Client = client
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("prometheus client for %s: %w", promURL, err)
	}
	return &querier{api: promv1.NewAPI(c), url: promURL, at: at}, nil
}

// vector runs expr; an absent metric is an empty vector, not an error, since
// several sections are optional (no HTTP, no collector processors).
func (q *querier) vector(ctx context.Context, expr string) (model.Vector, error) {
	v, _, _, err := q.api.Query(ctx, expr, q.at)
	if err != nil {
		return nil, fmt.Errorf("query Prometheus at %s (%s): %w", q.url, expr, err)
	}
	switch r := v.(type) {
	case model.Vector:
		return r, nil
	case *model.Scalar:
		return model.Vector{{Metric: model.Metric{}, Value: r.Value, Timestamp: r.Timestamp}}, nil
	}
	return nil, fmt.Errorf("query Prometheus at %s (%s): unexpected %s result", q.url, expr, v.Type())
}

// scalar is the single value of expr, NaN when it has none.
func (q *querier) scalar(ctx context.Context, expr string) (float64, error) {
	v, err := q.vector(ctx, expr)
	if err != nil {
		return math.NaN(), err
	}
	if len(v) == 0 {
		return math.NaN(), nil
	}
	return float64(v[0].Value), nil
}

// matchers renders label matchers; values are quoted with Go syntax, which
// PromQL string literals accept.
func matchers(kv ...string) string {
	parts := make([]string, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		op := "="
		name := kv[i]
		if strings.HasSuffix(name, "!") {
			name, op = strings.TrimSuffix(name, "!"), "!="
		} else if strings.HasSuffix(name, "~") {
			name, op = strings.TrimSuffix(name, "~"), "=~"
		}
		parts = append(parts, name+op+strconv.Quote(kv[i+1]))
	}
	return strings.Join(parts, ", ")
}

// latencyQuantile is the q-quantile of the agents' request latency matched
// by sel over w, grouped by the labels in by (none: one value), from either
// form Prometheus may hold: a native histogram (the agents' default
// exponential histograms through Prometheus' OTLP receiver: one series, no
// _bucket) or classic _bucket series (--latency-histogram=explicit). A
// series exists in one form only, so `native or classic` answers from
// whichever is there; with agents of both kinds behind one Service the
// native answer wins for the label sets both have.
func latencyQuantile(q, by, sel, w string) string {
	return quantileOf(mReqDuration, q, by, sel, w)
}

// quantileOf is latencyQuantile for any latency histogram m.
func quantileOf(m, q, by, sel, w string) string {
	native := fmt.Sprintf(`histogram_quantile(%s, sum(rate(%s{%s}[%s])))`, q, m, sel, w)
	classic := fmt.Sprintf(`histogram_quantile(%s, sum by (le) (rate(%s_bucket{%s}[%s])))`, q, m, sel, w)
	if by != "" {
		native = fmt.Sprintf(`histogram_quantile(%s, sum by (%s) (rate(%s{%s}[%s])))`, q, by, m, sel, w)
		classic = fmt.Sprintf(`histogram_quantile(%s, sum by (%s, le) (rate(%s_bucket{%s}[%s])))`, q, by, m, sel, w)
	}
	return native + " or " + classic
}

// promDuration renders d in PromQL duration syntax (whole seconds).
func promDuration(d time.Duration) string {
	return model.Duration(d.Round(time.Second)).String()
}

func label(m model.Metric, name string) string { return string(m[model.LabelName(name)]) }

// regexAlt is an anchored alternation of literal names for =~.
func regexAlt(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = regexpQuote(n)
	}
	sort.Strings(q)
	return strings.Join(q, "|")
}

// regexpQuote escapes RE2 metacharacters; Kubernetes names only ever
// contain '.', but the matcher must not depend on that.
func regexpQuote(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
