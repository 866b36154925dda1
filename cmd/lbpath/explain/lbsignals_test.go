package explain

import (
	"bytes"
	"context"
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/dashboards/querycheck"
	"github.com/lbpath/lbpath/exporter"
)

func TestSignalNamesInCatalog(t *testing.T) {
	_, self, _, _ := runtime.Caller(0)
	cat, err := querycheck.LoadCatalog(filepath.Join(filepath.Dir(self), "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for name, labels := range signalNames {
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

func TestSignalFindings(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		name string
		s    LBSignals
		want []Kind
		subj string
	}{
		{"healthy Local: 200 where the pods are, 503 elsewhere", LBSignals{ReadyPods: 2, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 2, ReadyPods: 2}, {Node: "b", Status: 503, LocalEndpoints: 0, ReadyPods: 0}}}, nil, ""},
		{"pending", LBSignals{PendingFor: 12 * time.Minute, ReadyPods: nan}, []Kind{KindLBPending}, ""},
		{"503 on every node", LBSignals{ReadyPods: 0, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 503, LocalEndpoints: 0, ReadyPods: 0}, {Node: "b", Status: 503, LocalEndpoints: 0, ReadyPods: 0}}}, []Kind{KindNoHealthyNode}, ""},
		{"no answer anywhere", LBSignals{ReadyPods: nan, HealthChecks: []NodeHealthCheck{
			{Node: "a", LocalEndpoints: nan, Error: "timeout", ReadyPods: nan}}}, []Kind{KindNoHealthyNode}, ""},
		{"ready pod on a node answering 503", LBSignals{ReadyPods: 2, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 1, ReadyPods: 1}, {Node: "b", Status: 503, LocalEndpoints: 0, ReadyPods: 1}}}, []Kind{KindHealthCheckFails}, "b"},
		{"a node that does not answer, without pods, is no finding", LBSignals{ReadyPods: 1, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 1, ReadyPods: 1}, {Node: "c", LocalEndpoints: nan, Error: "timeout", ReadyPods: 0}}}, nil, ""},
		// The agents' side: load-balancer probes per node.
		{"healthy Local: the load balancer probes every node, passing or not", LBSignals{ReadyPods: 1, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 1, ReadyPods: 1, Probes: 60, ProbesEver: 900},
			{Node: "b", Status: 503, LocalEndpoints: 0, ReadyPods: 0, Probes: 60, ProbesEver: 900}}}, nil, ""},
		{"no probe ever (MetalLB does not probe the port): a note, no finding", LBSignals{ReadyPods: 1, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 1, ReadyPods: 1}, {Node: "b", Status: 503, LocalEndpoints: 0, ReadyPods: 0}}}, nil, ""},
		{"probes stopped", LBSignals{ReadyPods: 1, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 1, ReadyPods: 1, ProbesEver: 900},
			{Node: "b", Status: 503, LocalEndpoints: 0, ReadyPods: 0, ProbesEver: 900}}}, []Kind{KindLBProbesStopped}, ""},
		{"probes stopped while pending: the pending finding says it", LBSignals{PendingFor: time.Hour, ReadyPods: 1, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 1, ReadyPods: 1, ProbesEver: 900}}}, []Kind{KindLBPending}, ""},
		{"probes only at the node failing the check", LBSignals{ReadyPods: 1, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 1, ReadyPods: 1},
			{Node: "b", Status: 503, LocalEndpoints: 0, ReadyPods: 0, Probes: 60, ProbesEver: 900}}}, []Kind{KindLBProbesOnlyFailing}, ""},
		{"the passing node's agent did not report: no evidence", LBSignals{ReadyPods: 1, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 200, LocalEndpoints: 1, ReadyPods: 1, Probes: nan, ProbesRefused: nan, ProbesEver: nan},
			{Node: "b", Status: 503, LocalEndpoints: 0, ReadyPods: 0, Probes: 60, ProbesEver: 900}}}, nil, ""},
		{"agents' rows alone (no receiver) raise no health-check finding", LBSignals{ReadyPods: nan, HealthChecks: []NodeHealthCheck{
			{Node: "a", LocalEndpoints: nan, ReadyPods: nan, Probes: 60, ProbesEver: 900, Unchecked: true}}}, nil, ""},
		{"no node passes: that finding, not the probes'", LBSignals{ReadyPods: 0, HealthChecks: []NodeHealthCheck{
			{Node: "a", Status: 503, LocalEndpoints: 0, ReadyPods: 0, ProbesEver: 900}}}, []Kind{KindNoHealthyNode}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &Report{Namespace: "shop", Name: "api", Signals: &c.s}
			r.signalFindings()
			var got []Kind
			for _, f := range r.Findings {
				got = append(got, f.Kind)
				if c.subj != "" && f.Subject != c.subj {
					t.Errorf("finding about %q, want %q", f.Subject, c.subj)
				}
			}
			if strings.Join(kindStrings(got), ",") != strings.Join(kindStrings(c.want), ",") {
				t.Errorf("findings %v, want %v: %+v", got, c.want, r.Findings)
			}
		})
	}
}

func kindStrings(ks []Kind) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = string(k)
	}
	return out
}

// TestSignalsAgainstPrometheus pushes the lbsignals receiver's series (as
// the collector exports them: resource service.name=lbpath-collector, the
// names and units of receiver/lbsignals) to a real Prometheus over OTLP and
// checks what explain makes of them: per node the health-check answer,
// kube-proxy's local endpoints and the ready pods, and the findings.
func TestSignalsAgainstPrometheus(t *testing.T) {
	s := startPrometheus(t)
	f := newFleet(t, s.OTLPMetricsURL(), false)
	m := f.collector().mp.Meter("github.com/lbpath/lbpath/receiver/lbsignals")
	gauge := func(name, unit string) metric.Int64Gauge {
		g, err := m.Int64Gauge(name, metric.WithUnit(unit))
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	ctx := context.Background()
	kv := func(svc string, more ...string) metric.MeasurementOption {
		a := []attribute.KeyValue{attribute.String("k8s.namespace.name", "shop"), attribute.String("k8s.service.name", svc)}
		for i := 0; i+1 < len(more); i += 2 {
			a = append(a, attribute.String(more[i], more[i+1]))
		}
		return metric.WithAttributes(a...)
	}
	age, err := m.Float64Gauge("lbpath.loadbalancer.pending.age", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	age.Record(ctx, 754, kv("legacy"))
	ready := gauge("lbpath.service.endpoint.ready", "{endpoint}")
	for _, p := range [][2]string{{"api-1", "node-a"}, {"api-2", "node-a"}, {"api-3", "node-b"}} {
		ready.Record(ctx, 1, kv("api", "k8s.pod.name", p[0], "k8s.node.name", p[1], "network.transport", "tcp"))
		ready.Record(ctx, 1, kv("api", "k8s.pod.name", p[0], "k8s.node.name", p[1], "network.transport", "udp"))
	}
	status, local := gauge("lbpath.service.health_check.status", ""), gauge("lbpath.service.health_check.local_endpoints", "{endpoint}")
	// node-a: two local endpoints, 200; node-b: its pod is ready but
	// kube-proxy reports none (503); node-c: probes time out.
	status.Record(ctx, 200, kv("api", "k8s.node.name", "node-a"))
	local.Record(ctx, 2, kv("api", "k8s.node.name", "node-a"))
	status.Record(ctx, 503, kv("api", "k8s.node.name", "node-b"))
	local.Record(ctx, 0, kv("api", "k8s.node.name", "node-b"))
	errs, err := m.Int64Counter("lbpath.service.health_check.errors", metric.WithUnit("{probe}"))
	if err != nil {
		t.Fatal(err)
	}
	// Two pushes a minute apart, so that increase() over the window sees
	// the counter grow (a first sample alone has no increase).
	errs.Add(ctx, 1, kv("api", "k8s.node.name", "node-c", "error.type", "timeout"))
	f.push()
	errs.Add(ctx, 2, kv("api", "k8s.node.name", "node-c", "error.type", "timeout"))
	// Prometheus' OTLP receiver stamps the SDK's collection time: wait for
	// the samples to be a little apart, then ask at "now".
	time.Sleep(1100 * time.Millisecond)
	f.push()
	now := time.Now()

	r, err := Inspect(ctx, s.URL(), "shop/api", now, nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, s.Log())
	}
	var out bytes.Buffer
	if err := r.Render(&out); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	if r.Signals == nil {
		t.Fatal("no LB signals read")
	}
	want := []NodeHealthCheck{
		{Node: "node-a", Status: 200, LocalEndpoints: 2, ReadyPods: 2},
		{Node: "node-b", Status: 503, LocalEndpoints: 0, ReadyPods: 1},
		{Node: "node-c", LocalEndpoints: math.NaN(), Error: "timeout", ReadyPods: 0},
	}
	got := r.Signals.HealthChecks
	if len(got) != len(want) {
		t.Fatalf("health checks %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Node != w.Node || g.Status != w.Status || g.Error != w.Error || g.ReadyPods != w.ReadyPods ||
			!(g.LocalEndpoints == w.LocalEndpoints || math.IsNaN(g.LocalEndpoints) && math.IsNaN(w.LocalEndpoints)) {
			t.Errorf("node %d: %+v, want %+v", i, g, w)
		}
	}
	if r.Signals.ReadyPods != 3 {
		t.Errorf("ready pods %v, want 3 (one per pod, whatever the transports)", r.Signals.ReadyPods)
	}
	if !r.Has(KindHealthCheckFails, "node-b") || r.Has(KindHealthCheckFails, "node-c") || r.Has(KindNoHealthyNode, "") {
		t.Errorf("findings %+v: want the health check failing on node-b only", r.Findings)
	}
	for _, line := range []string{
		"HEALTH CHECK FAILS ON node-b (503) with 1 ready pod on the node",
		"  node-a  200                               2           2",
		"  node-c  no answer: timeout                –           0",
	} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("output lacks %q", line)
		}
	}

	// A pending LoadBalancer with no traffic at all is still explained.
	r, err = Inspect(ctx, s.URL(), "shop/legacy", now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Has(KindLBPending, "") || r.Signals.PendingFor != 754*time.Second {
		t.Errorf("legacy: findings %+v pending %v, want pending for 754s", r.Findings, r.Signals.PendingFor)
	}
}

// TestProbesAgainstPrometheus: the agents' lbpath.loadbalancer.health_probes
// as the real exporter sends it (two exporters, one per node, over OTLP
// into a real Prometheus) next to the receiver's health-check answers:
// per node the probes arriving, and the finding for probes that reached
// the nodes before and none in the window.
func TestProbesAgainstPrometheus(t *testing.T) {
	s := startPrometheus(t)
	ctx := context.Background()
	f := newFleet(t, s.OTLPMetricsURL(), false)
	m := f.collector().mp.Meter("github.com/lbpath/lbpath/receiver/lbsignals")
	status, err := m.Int64Gauge("lbpath.service.health_check.status")
	if err != nil {
		t.Fatal(err)
	}
	svc := func(name, node string) metric.RecordOption {
		return metric.WithAttributes(attribute.String("k8s.namespace.name", "shop"), attribute.String("k8s.service.name", name),
			attribute.String("k8s.node.name", node))
	}
	// shop/api: probes arrive at both nodes (node-b refuses two); shop/edge:
	// probes arrived before and no more.
	for _, name := range []string{"api", "edge"} {
		status.Record(ctx, 200, svc(name, "node-a"))
		status.Record(ctx, 503, svc(name, "node-b"))
	}
	counts := map[string][]path.ProbeCount{}
	agents := map[string]*exporter.Exporter{}
	for _, node := range []string{"node-a", "node-b"} {
		e, err := exporter.New(ctx, exporter.Config{Endpoint: strings.TrimSuffix(s.OTLPMetricsURL(), "/v1/metrics"), Protocol: "http/protobuf",
			Insecure: true, Node: node, Cluster: "test", MetricInterval: time.Hour, Timeout: 5 * time.Second}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.SetHealthProbes(func() []path.ProbeCount { return counts[node] })
		agents[node] = e
	}
	pc := func(svc string, o flow.Outcome, n uint64) path.ProbeCount {
		return path.ProbeCount{Namespace: "shop", Service: svc, Outcome: o, Count: n}
	}
	push := func() {
		f.push()
		for node, e := range agents {
			if err := e.ForceFlush(ctx); err != nil {
				t.Fatalf("%s: %v", node, err)
			}
		}
	}
	// As the agents report: ok and refused from 0 for every Service with
	// a healthCheckNodePort.
	counts["node-a"] = []path.ProbeCount{pc("api", flow.OutcomeOK, 10), pc("api", flow.OutcomeRefused, 0), pc("edge", flow.OutcomeOK, 40), pc("edge", flow.OutcomeRefused, 0)}
	counts["node-b"] = []path.ProbeCount{pc("api", flow.OutcomeOK, 10), pc("api", flow.OutcomeRefused, 0), pc("edge", flow.OutcomeOK, 35), pc("edge", flow.OutcomeRefused, 0)}
	push()
	time.Sleep(1100 * time.Millisecond)
	counts["node-a"] = []path.ProbeCount{pc("api", flow.OutcomeOK, 16), pc("api", flow.OutcomeRefused, 0), pc("edge", flow.OutcomeOK, 40), pc("edge", flow.OutcomeRefused, 0)}
	counts["node-b"] = []path.ProbeCount{pc("api", flow.OutcomeOK, 14), pc("api", flow.OutcomeRefused, 2), pc("edge", flow.OutcomeOK, 35), pc("edge", flow.OutcomeRefused, 0)}
	push()
	now := time.Now()
	for _, e := range agents {
		if err := e.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}

	r, err := Inspect(ctx, s.URL(), "shop/api", now, &Options{Cluster: "test"})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.Log())
	}
	var out bytes.Buffer
	if err := r.Render(&out); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	if r.Signals == nil || len(r.Signals.HealthChecks) != 2 {
		t.Fatalf("signals %+v, want node-a and node-b", r.Signals)
	}
	a, b := r.Signals.HealthChecks[0], r.Signals.HealthChecks[1]
	// increase() extrapolates within the window; the counter's value is
	// exact.
	if a.Node != "node-a" || !(a.Probes > 0) || a.ProbesRefused != 0 || a.ProbesEver != 16 || a.Unchecked {
		t.Errorf("node-a: %+v, want probes arriving, none refused, 16 since start", a)
	}
	if b.Node != "node-b" || !(b.Probes > 0) || !(b.ProbesRefused > 0) || b.ProbesEver != 16 || b.Unchecked {
		t.Errorf("node-b: %+v, want probes arriving, some refused, 16 since start", b)
	}
	if len(r.Findings) != 0 {
		t.Errorf("findings %+v, want none: the load balancer probes both nodes", r.Findings)
	}
	if !strings.Contains(out.String(), "LB probes arriving") || !strings.Contains(out.String(), "refused)") {
		t.Errorf("output lacks the probe column")
	}

	r, err = Inspect(ctx, s.URL(), "shop/edge", now, &Options{Cluster: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Has(KindLBProbesStopped, "") || len(r.Findings) != 1 {
		t.Errorf("edge: findings %+v, want the probes stopped", r.Findings)
	}
	for _, h := range r.Signals.HealthChecks {
		if h.Probes != 0 || h.ProbesEver == 0 {
			t.Errorf("edge %s: %+v, want 0 in the window, some before", h.Node, h)
		}
	}
}
