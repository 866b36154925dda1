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

	"github.com/lbpath/lbpath/dashboards/querycheck"
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
