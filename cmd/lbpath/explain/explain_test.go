package explain

import (
	"bytes"
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/common/model"

	"github.com/lbpath/lbpath/dashboards/querycheck"
)

func TestBar(t *testing.T) {
	for _, c := range []struct {
		frac  float64
		width int
		want  string
	}{
		{0.5, 10, "█████     "},
		{1, 4, "████"},
		{1.7, 4, "████"}, // clamped
		{0, 4, "    "},
		{math.NaN(), 4, "    "},
		{-1, 4, "    "},
		{0.001, 4, "▏   "}, // something is not nothing
		{0.71, 30, strings.Repeat("█", 21) + "▎" + strings.Repeat(" ", 8)}, // 21.3 cells → 21 2/8
		{0.999, 10, "██████████"},                                          // 79.92/8 rounds to full
		{0.05, 10, "▌         "},
	} {
		got := bar(c.frac, c.width)
		if got != c.want {
			t.Errorf("bar(%v, %d) = %q, want %q", c.frac, c.width, got, c.want)
		}
		if n := utf8.RuneCountInString(got); n != c.width {
			t.Errorf("bar(%v, %d) is %d cells wide", c.frac, c.width, n)
		}
	}
}

func TestFormatting(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{percent(0.714), "71%"},
		{percent(0.005), "<1%"},
		{percent(0.996), ">99%"},
		{percent(1), "100%"},
		{percent(0), "0%"},
		{percent(math.NaN()), "–"},
		{seconds(0.098), "98ms"},
		{seconds(0.0045), "4.5ms"},
		{seconds(0.0005), "500µs"},
		{seconds(2.5), "2.50s"},
		{seconds(math.NaN()), "–"},
		{count(1234567.4), "1,234,567"},
		{count(999), "999"},
		{count(1000), "1,000"},
		{count(-1500), "-1,500"},
		{perSecond(3.374), "3.37"},
		{perSecond(45.66), "45.7"},
		{perSecond(12345), "12,345"},
		{pvalue(1e-12), "p=1e-12"},
		{pvalue(0.43), "p=0.43"},
		{pvalue(0.0042), "p=0.004"},
		{pvalue(0), "p<1e-300"},
		{times(2.1224), "×2.1"},
		{times(12.4), "×12"},
		{ago(4 * time.Minute), "4m"},
		{ago(45 * time.Second), "45s"},
		{ago(125 * time.Minute), "2h05m"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestParseService(t *testing.T) {
	for in, want := range map[string]string{
		"shop/web": "shop/web", "service/shop/web": "shop/web", "svc/shop/web": "shop/web", "services/shop/web": "shop/web",
		"service/web": "service/web", // a namespace named "service"
	} {
		ns, n, err := ParseService(in)
		if err != nil || ns+"/"+n != want {
			t.Errorf("ParseService(%q) = %q, %q, %v; want %s", in, ns, n, err, want)
		}
	}
	for _, bad := range []string{"web", "/web", "shop/", "a/b/c/d", "service/a/b/c"} {
		if _, _, err := ParseService(bad); err == nil {
			t.Errorf("ParseService(%q) accepted", bad)
		}
	}
}

func metricOf(kv ...string) model.Metric {
	m := model.Metric{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[model.LabelName(kv[i])] = model.LabelValue(kv[i+1])
	}
	return m
}

// TestBreakdownViews checks that each connection is counted once although
// two nodes record it.
func TestBreakdownViews(t *testing.T) {
	b := newBreakdown()
	rec := func(v float64, kv ...string) { b.add(metricOf(kv...), v) }
	// LB → node-a → pod on node-b (Cluster policy): forward + server(direct).
	rec(30, lRole, "forward", lEntry, "loadbalancer", lEntryNode, "node-a", lSNAT, "true", lCross, "true", lOutcome, "forwarded")
	rec(30, lRole, "server", lEntry, "direct", lEntryNode, "node-a", lSNAT, "true", lCross, "true", lOutcome, "ok")
	// LB → node-a → pod on node-a: one server record with the NAT.
	rec(10, lRole, "server", lEntry, "loadbalancer", lEntryNode, "node-a", lSNAT, "true", lCross, "false", lOutcome, "ok")
	// Pod on node-c → ClusterIP → pod on node-b: client(cross) + server(direct).
	rec(20, lRole, "client", lEntry, "clusterip", lEntryNode, "node-c", lSNAT, "false", lCross, "true", lOutcome, "ok")
	rec(20, lRole, "server", lEntry, "direct", lSNAT, "false", lCross, "false", lOutcome, "ok")
	// Pod on node-b → ClusterIP → pod on node-b: client (not cross) + server with the NAT.
	rec(5, lRole, "client", lEntry, "clusterip", lEntryNode, "node-b", lSNAT, "false", lCross, "false", lOutcome, "ok")
	rec(5, lRole, "server", lEntry, "clusterip", lEntryNode, "node-b", lSNAT, "false", lCross, "false", lOutcome, "ok")
	// Failures: refused by a REJECT rule, a reset after accept.
	rec(4, lRole, "reject", lEntry, "clusterip", lEntryNode, "node-c", lSNAT, "false", lCross, "false", lOutcome, "refused")
	rec(1, lRole, "server", lEntry, "direct", lSNAT, "false", lCross, "false", lOutcome, "reset")

	if b.served != 66 {
		t.Errorf("served %v, want 66 (every server record)", b.served)
	}
	if b.entries["loadbalancer"] != 40 || b.entries["clusterip"] != 25 || b.entryTotal != 65 {
		t.Errorf("entries %v total %v, want lb 40, clusterip 25", b.entries, b.entryTotal)
	}
	if b.external != 40 || b.snatShare() != 1 {
		t.Errorf("external %v, SNAT %v", b.external, b.snatShare())
	}
	if got := b.crossShare(); math.Abs(got-50.0/65) > 1e-9 {
		t.Errorf("cross share %v, want 50/65", got)
	}
	if b.failed != 5 || b.attempts != 70 || b.failures[failKey{"reject", "refused"}] != 4 {
		t.Errorf("failed %v of %v: %v", b.failed, b.attempts, b.failures)
	}
}

func balanced() *Report {
	r := &Report{Namespace: "shop", Name: "api", At: time.Unix(0, 0), Window: DefaultWindow,
		Served: 300, ConnRate: 1, ReqRate: math.NaN(), P50: math.NaN(), P90: math.NaN(), P99: math.NaN(),
		Entries: []EntryCount{{"loadbalancer", 300}}, EntryConns: 300, External: 300, SNAT: 0, CrossNode: 0,
		FairShare: 1.0 / 3, ShareSource: "lbimbalance", FailureRate: 0}
	for i, n := range []string{"node-a", "node-b", "node-c"} {
		r.Pods = append(r.Pods, PodShare{Pod: "api-" + string(rune('1'+i)), Node: n, Connections: 1.0 / 3, Requests: math.NaN(), Bytes: 1.0 / 3})
		r.Nodes = append(r.Nodes, NodeShare{Node: n, Share: 1.0 / 3, Pods: 1})
	}
	r.Deploys = []Deploy{{Deployment: "api", Tested: true, PValue: 0.43,
		Before: Revision{Hash: "a", P50: .02, P90: .05, P99: .08, Samples: 100}, After: Revision{Hash: "b", P50: .02, P90: .051, P99: .08, Samples: 100}}}
	return r
}

func TestDiagnoseBalanced(t *testing.T) {
	r := balanced()
	r.diagnose()
	if len(r.Findings) != 0 {
		t.Fatalf("balanced Service has findings: %+v", r.Findings)
	}
	var out bytes.Buffer
	if err := r.Render(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "✓ nothing abnormal") {
		t.Errorf("no all-clear line:\n%s", out.String())
	}
}

func TestDiagnoseNodeSkew(t *testing.T) {
	// Local policy: the LB spreads per node, so node-a's one pod gets half
	// the traffic while node-b's two pods share the other half.
	r := balanced()
	r.Pods = []PodShare{
		{Pod: "api-1", Node: "node-a", Connections: 0.7}, {Pod: "api-2", Node: "node-b", Connections: 0.15}, {Pod: "api-3", Node: "node-b", Connections: 0.15}}
	r.Nodes = []NodeShare{{"node-a", 0.7, 1}, {"node-b", 0.3, 2}}
	r.diagnose()
	if !r.Has(KindNodeSkew, "node-a") || r.Has(KindNodeSkew, "node-b") {
		t.Fatalf("findings %+v", r.Findings)
	}
	// The same shares under Cluster policy are a pod matter, not a node one.
	r.SNAT = 1
	r.diagnose()
	if r.Has(KindNodeSkew, "") {
		t.Errorf("node skew flagged under Cluster policy: %+v", r.Findings)
	}
}

func TestDiagnoseOrderAndThresholds(t *testing.T) {
	r := balanced()
	r.SNAT = 0.005 // a stray health check, not a finding
	r.FailureRate = 0.004
	r.Failures = []Failure{{"server", "reset", 1}}
	r.Pods[0].Hot = true
	r.Deploys[0].Regression = true
	r.Deploys[0].PValue = 1e-9
	r.Deploys[0].Since = 4 * time.Minute
	r.diagnose()
	var kinds []string
	for _, f := range r.Findings {
		kinds = append(kinds, string(f.Kind))
	}
	if strings.Join(kinds, ",") != "deploy_regression,hot_pod" {
		t.Errorf("findings %v, want regression then hot pod only", kinds)
	}
}

// TestRenderAlignment checks that the pod rows' columns line up whatever
// the names' lengths.
func TestRenderAlignment(t *testing.T) {
	r := balanced()
	r.Pods[0].Pod = "api-with-a-much-longer-name-1"
	r.diagnose()
	var out bytes.Buffer
	if err := r.Render(&out); err != nil {
		t.Fatal(err)
	}
	var rows []string
	in := false
	for _, l := range strings.Split(out.String(), "\n") {
		switch {
		case strings.HasPrefix(l, "PODS"):
			in = true
		case in && l == "":
			in = false
		case in:
			rows = append(rows, l)
		}
	}
	if len(rows) != 4 {
		t.Fatalf("pod table rows %q", rows)
	}
	w := utf8.RuneCountInString(rows[1])
	for _, l := range rows[1:] {
		if utf8.RuneCountInString(l) != w {
			t.Errorf("pod rows differ in width:\n%s", strings.Join(rows, "\n"))
		}
	}
}

func TestRenderTop(t *testing.T) {
	rows := []TopRow{
		{Namespace: "shop", Name: "web", ConnRate: 3.37, ReqRate: 1.2, P90: 0.098, HotPods: []string{"web-1"}, SNAT: 1, CrossNode: 0.3, Failing: 0, Regressed: []string{"web"}},
		{Namespace: "shop", Name: "legacy-backend", ConnRate: 0.34, ReqRate: math.NaN(), P90: math.NaN(), SNAT: 0, CrossNode: 1, Failing: 0.09},
	}
	var out bytes.Buffer
	if err := RenderTop(&out, rows, time.Unix(0, 0), DefaultWindow); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("output:\n%s", out.String())
	}
	// Right-aligned figures: the CONN/S column ends at the same offset.
	h := strings.Index(lines[1], "CONN/S") + len("CONN/S")
	for _, l := range lines[2:] {
		if l[h-1] == ' ' {
			t.Errorf("CONN/S not right-aligned:\n%s", out.String())
		}
	}
	if !strings.Contains(lines[2], "REGRESSED web") || !strings.Contains(lines[3], "–") {
		t.Errorf("output:\n%s", out.String())
	}
}

// TestNamesInCatalog checks every series and label this package queries
// against the names dashboards/querycheck derives from lbpath's sources
// through Prometheus' OTLP translation.
func TestNamesInCatalog(t *testing.T) {
	_, self, _, _ := runtime.Caller(0)
	cat, err := querycheck.LoadCatalog(filepath.Join(filepath.Dir(self), "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	uses := map[string][]string{
		mConnections:              {lNamespace, lService, lPod, lNode, lDeployment, lRole, lOutcome, lEntry, lEntryNode, lSNAT, lCross, lCluster},
		mRequests:                 {lNamespace, lService, lPod, lNode, lDeployment},
		mBytes:                    {lNamespace, lService, lPod, lNode, lRole},
		mReqDuration:              {lNamespace, lService},
		mReqDuration + "_bucket":  {lNamespace, lService, "le"},
		mShare:                    {lNamespace, lService, lPod, lNode, lSignal},
		mHot:                      {lNamespace, lService, lPod, lNode},
		mPods:                     {lNamespace, lService},
		mNodeShare:                {lNamespace, lService, lNode, lSignal},
		mDeployP50:                {lNamespace, lDeployment, lRevision, lHash},
		mDeployP90:                {lNamespace, lDeployment, lRevision, lHash},
		mDeployP99:                {lNamespace, lDeployment, lRevision, lHash},
		mRegression:               {lNamespace, lDeployment},
		mPValue:                   {lNamespace, lDeployment},
		mTimeSince:                {lNamespace, lDeployment},
		mDeploySamples:            {lNamespace, lDeployment, lRevision},
		mIngressRequests:          {lNamespace, lService, lPod, lIngressName, lIngressRoute, lIngressProxy},
		mIngressDuration:          {lNamespace, lService, lPod, lIngressRoute, lIngressProxy},
		mIngressDuration + "_sum": {lIngressProxy},
		mReqDuration + "_sum":     {lNamespace, lPod},
	}
	for name, labels := range uses {
		m := cat.Metrics[name]
		if m == nil {
			t.Errorf("%s is not a series lbpath produces", name)
			continue
		}
		for _, l := range labels {
			if !m.Labels[l] && !cat.Global[l] {
				t.Errorf("%s has no label %s", name, l)
			}
		}
	}
}

// TestBreakdownHiddenEntries: pods' own records of translations lbpath
// could not see count as entries and as external traffic with the client
// IP kept, but not in the cross-node share (their entry node is unknown),
// and the PATH section says what they mean.
func TestBreakdownHiddenEntries(t *testing.T) {
	b := newBreakdown()
	rec := func(v float64, kv ...string) { b.add(metricOf(kv...), v) }
	rec(30, lRole, "server", lEntry, "external_not_visible", lSNAT, "false", lCross, "false", lOutcome, "ok")
	rec(10, lRole, "server", lEntry, "nodeport", lEntryNode, "node-a", lSNAT, "false", lCross, "true", lOutcome, "ok")
	rec(5, lRole, "server", lEntry, "unknown", lSNAT, "false", lCross, "false", lOutcome, "ok")
	if b.entries["external_not_visible"] != 30 || b.entries["unknown"] != 5 || b.entryTotal != 45 {
		t.Errorf("entries %v total %v", b.entries, b.entryTotal)
	}
	if b.external != 40 || b.snatShare() != 0 {
		t.Errorf("external %v SNAT %v: want 40 external, client IP kept", b.external, b.snatShare())
	}
	if got := b.crossShare(); got != 1 {
		t.Errorf("cross-node share %v, want 1 (10 of the 10 with a known entry node)", got)
	}
	var out bytes.Buffer
	renderHiddenEntries(&out, []EntryCount{{Entry: "external_not_visible", Conns: 30}, {Entry: "unknown", Conns: 5}}, 20)
	for _, want := range []string{"30 connections entered from outside through a translation lbpath cannot see",
		"TC/XDP eBPF NodePort", "5 connections from outside reached the pods' own addresses", "--isolated-pod-network"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("PATH notes lack %q:\n%s", want, out.String())
		}
	}
}
