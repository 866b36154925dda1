package lbimbalance

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pmetric"
)

func near(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Fatalf("%s = %v, want %v ± %v", what, got, want, tol)
	}
}

// skewedStep returns cumulative counters after step k of a service where
// pod-a gets 80% of the traffic and pod-b, pod-c 10% each.
func skewedStep(k int) []podCounters {
	f := float64(k)
	return []podCounters{
		{pod: "pod-a", node: "n1", conns: 80 * f, reqs: 800 * f, bytes: 8000 * f},
		{pod: "pod-b", node: "n1", conns: 10 * f, reqs: 100 * f, bytes: 1000 * f},
		{pod: "pod-c", node: "n2", conns: 10 * f, reqs: 100 * f, bytes: 1000 * f},
	}
}

func TestSkewedServiceFlagsHotPod(t *testing.T) {
	h := newHarness(t, nil)
	for k := 1; k <= 3; k++ {
		h.consume(agentBatch(t0.Add(time.Duration(k)*10*time.Second), "shop", "cart", skewedStep(k)))
	}
	// Window totals: 240 / 30 / 30 connections.
	for _, sig := range []string{"connections", "requests", "bytes"} {
		near(t, "share pod-a "+sig, h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-a", "lbpath.signal", sig)), 0.8, 1e-9)
		near(t, "share pod-b "+sig, h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-b", "lbpath.signal", sig)), 0.1, 1e-9)
		near(t, "max/mean "+sig, h.value("lbpath.lb.max_mean_ratio", svcAttrs("lbpath.signal", sig)), 2.4, 1e-9)
		// mean 100, population stddev sqrt((140²+70²+70²)/3) = 98.995
		near(t, "cv "+sig, h.value("lbpath.lb.cv", svcAttrs("lbpath.signal", sig)), math.Sqrt(9800)/100, 1e-9)
		near(t, "node_share n1 "+sig, h.value("lbpath.lb.node_share", svcAttrs("k8s.node.name", "n1", "lbpath.signal", sig)), 0.9, 1e-9)
		near(t, "node_share n2 "+sig, h.value("lbpath.lb.node_share", svcAttrs("k8s.node.name", "n2", "lbpath.signal", sig)), 0.1, 1e-9)
	}
	if got := h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-a", "k8s.node.name", "n1")); got != 1 {
		t.Errorf("pod-a hot = %v, want 1", got)
	}
	for _, p := range []string{"pod-b", "pod-c"} {
		if got := h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", p)); got != 0 {
			t.Errorf("%s hot = %v, want 0", p, got)
		}
	}
	if got := h.value("lbpath.lb.pods", svcAttrs()); got != 3 {
		t.Errorf("pods = %v, want 3", got)
	}
	// pod-a was hot from the first batch on: one edge, not three.
	if got := h.value("lbpath.lb.hot_transitions", svcAttrs()); got != 1 {
		t.Errorf("hot_transitions = %v, want 1", got)
	}
	events := h.logs.FilterMessage("pod turned hot").AllUntimed()
	if len(events) != 1 || events[0].ContextMap()["k8s.pod.name"] != "pod-a" {
		t.Fatalf("hot log records = %v, want one for pod-a", events)
	}
}

func TestBalancedServiceWithNoiseIsNotHot(t *testing.T) {
	h := newHarness(t, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	pods := make([]podCounters, 10)
	for i := range pods {
		pods[i] = podCounters{pod: "pod-" + string(rune('a'+i)), node: "n" + string(rune('0'+i%3))}
	}
	for k := 1; k <= 12; k++ {
		for i := range pods {
			c := 100 + rng.NormFloat64()*15 // ±15% noise per 10s per pod
			pods[i].conns += math.Round(c)
			pods[i].reqs += math.Round(c * 9)
			pods[i].bytes += math.Round(c * 4096)
		}
		h.consume(agentBatch(t0.Add(time.Duration(k)*10*time.Second), "shop", "cart", pods))
	}
	for i := range pods {
		if got := h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", pods[i].pod)); got != 0 {
			t.Errorf("%s hot = %v in a balanced service", pods[i].pod, got)
		}
	}
	if cv := h.value("lbpath.lb.cv", svcAttrs("lbpath.signal", "connections")); cv > 0.1 {
		t.Errorf("cv = %v, want < 0.1 for a balanced service", cv)
	}
	if r := h.value("lbpath.lb.max_mean_ratio", svcAttrs("lbpath.signal", "connections")); r < 1 || r > 1.2 {
		t.Errorf("max/mean = %v, want in [1, 1.2]", r)
	}
	if n := h.logs.FilterMessage("pod turned hot").Len(); n != 0 {
		t.Errorf("%d hot log records for a balanced service", n)
	}
}

func TestMinConnectionsGatesHotFlag(t *testing.T) {
	h := newHarness(t, nil)
	// 8/1/1 connections: 80% share, but 10 < min_connections (20).
	h.consume(agentBatch(t0.Add(10*time.Second), "shop", "cart", []podCounters{
		{pod: "pod-a", node: "n1", conns: 8}, {pod: "pod-b", node: "n1", conns: 1}, {pod: "pod-c", node: "n2", conns: 1},
	}))
	near(t, "share", h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-a", "lbpath.signal", "connections")), 0.8, 1e-9)
	if got := h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-a")); got != 0 {
		t.Fatalf("hot = %v below min_connections", got)
	}
	// No requests were reported, so there is no request share to emit.
	if _, n := lookup(h.computed(), "lbpath.lb.share", svcAttrs("lbpath.signal", "requests")); n != 0 {
		t.Fatalf("%d request shares for a service without requests", n)
	}
}

func TestCumulativeToDelta(t *testing.T) {
	at := func(k int) time.Time { return t0.Add(time.Duration(k) * 10 * time.Second) }
	connShare := func(h *harness, pod string) float64 {
		return h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", pod, "lbpath.signal", "connections"))
	}
	t.Run("value decreases", func(t *testing.T) {
		h := newHarness(t, nil)
		// pod-a: 100, 150, then the agent restarted and reports 30:
		// deltas 100 + 50 + 30 = 180. pod-b: 60, 120, 180 → 180.
		for k, a := range []float64{100, 150, 30} {
			h.consume(agentBatch(at(k+1), "shop", "cart", []podCounters{
				{pod: "pod-a", node: "n1", conns: a}, {pod: "pod-b", node: "n2", conns: 60 * float64(k+1)},
			}))
		}
		near(t, "pod-a share", connShare(h, "pod-a"), 0.5, 1e-9)
	})
	t.Run("start timestamp changes", func(t *testing.T) {
		h := newHarness(t, nil)
		// pod-a: 100, 150 (start s0), then 170 with a new start: the stream
		// restarted, so 170 is new traffic, not +20. Total 320 vs pod-b 80.
		for k, a := range []float64{100, 150, 170} {
			start := t0.Add(-5 * time.Second)
			if k == 2 {
				start = at(2).Add(time.Second)
			}
			h.consume(agentBatch(at(k+1), "shop", "cart", []podCounters{
				{pod: "pod-a", node: "n1", conns: a, start: start}, {pod: "pod-b", node: "n2", conns: 80},
			}))
		}
		near(t, "pod-a share", connShare(h, "pod-a"), 320.0/400, 1e-9)
	})
	t.Run("old stream is a baseline", func(t *testing.T) {
		h := newHarness(t, nil)
		// pod-a's stream began an hour ago (collector restart): its first
		// value is history, only the +100 that follows counts.
		old := t0.Add(-time.Hour)
		for k, a := range []float64{1000, 1100} {
			h.consume(agentBatch(at(k+1), "shop", "cart", []podCounters{
				{pod: "pod-a", node: "n1", conns: a, start: old}, {pod: "pod-b", node: "n2", conns: 100 * float64(k+1)},
			}))
		}
		near(t, "pod-a share", connShare(h, "pod-a"), 100.0/300, 1e-9)
	})
	t.Run("duplicate point is ignored", func(t *testing.T) {
		h := newHarness(t, nil)
		b := []podCounters{{pod: "pod-a", node: "n1", conns: 100}, {pod: "pod-b", node: "n2", conns: 100}}
		h.consume(agentBatch(at(1), "shop", "cart", b))
		h.consume(agentBatch(at(1), "shop", "cart", b)) // exporter retry
		b[0].conns = 300
		h.consume(agentBatch(at(2), "shop", "cart", b))
		near(t, "pod-a share", connShare(h, "pod-a"), 300.0/400, 1e-9)
	})
}

func TestWindowSlidesAndTransitionsAreEdges(t *testing.T) {
	h := newHarness(t, nil)
	var conns [3]float64
	step := func(k int, a, b, c float64) {
		conns[0] += a
		conns[1] += b
		conns[2] += c
		h.consume(agentBatch(t0.Add(time.Duration(k)*10*time.Second), "shop", "cart", []podCounters{
			{pod: "pod-a", node: "n1", conns: conns[0]}, {pod: "pod-b", node: "n1", conns: conns[1]}, {pod: "pod-c", node: "n2", conns: conns[2]},
		}))
	}
	k := 1
	for ; k <= 6; k++ {
		step(k, 80, 10, 10)
	}
	if got := h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-a")); got != 1 {
		t.Fatalf("pod-a hot = %v while skewed", got)
	}
	// Six balanced buckets push the skew out of the one-minute window.
	for ; k <= 12; k++ {
		step(k, 40, 40, 40)
	}
	if got := h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-a")); got != 0 {
		t.Fatalf("pod-a hot = %v after a balanced window", got)
	}
	near(t, "share", h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-a", "lbpath.signal", "connections")), 1.0/3, 1e-9)
	for ; k <= 14; k++ {
		step(k, 400, 10, 10)
	}
	if got := h.value("lbpath.lb.hot_transitions", svcAttrs()); got != 2 {
		t.Fatalf("hot_transitions = %v, want 2 (hot, cool, hot again)", got)
	}
	if n := h.logs.FilterMessage("pod turned hot").Len(); n != 2 {
		t.Fatalf("%d hot log records, want 2", n)
	}
}

func TestEvictionsAreCounted(t *testing.T) {
	evictions := func(h *harness, reason string) float64 {
		return h.value("lbpath.lb.evictions", map[string]string{"lbpath.reason": reason})
	}
	t.Run("max_services", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.MaxServices = 2 })
		for i, svc := range []string{"s1", "s2", "s3", "s1"} {
			h.consume(agentBatch(t0.Add(time.Duration(i+1)*time.Second), "shop", svc, []podCounters{{pod: "p", node: "n1", conns: 5}}))
		}
		// s3 evicts s1 (oldest); s1 coming back evicts s2.
		if got := evictions(h, "service_limit"); got != 2 {
			t.Fatalf("service_limit evictions = %v, want 2", got)
		}
	})
	t.Run("max_pods_per_service", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.MaxPodsPerService = 2 })
		for i, pod := range []string{"pod-a", "pod-b", "pod-c"} {
			h.consume(agentBatch(t0.Add(time.Duration(i+1)*10*time.Second), "shop", "cart", []podCounters{{pod: pod, node: "n1", conns: 5}}))
		}
		// pod-c displaces pod-a, the least recently seen.
		if got := evictions(h, "pod_limit"); got != 1 {
			t.Fatalf("pod_limit evictions = %v, want 1", got)
		}
		if got := h.value("lbpath.lb.pods", svcAttrs()); got != 2 {
			t.Fatalf("pods = %v, want 2 (bounded)", got)
		}
		if _, n := lookup(h.computed(), "lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-a")); n != 0 {
			t.Fatal("evicted pod-a still reported")
		}
	})
	t.Run("max_streams", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.MaxStreams = 4 })
		// 2 pods × 4 streams (connections, requests, 2× bytes) = 8 streams.
		h.consume(agentBatch(t0.Add(10*time.Second), "shop", "cart", []podCounters{
			{pod: "pod-a", node: "n1", conns: 5}, {pod: "pod-b", node: "n1", conns: 5},
		}))
		if got := evictions(h, "stream_limit"); got < 4 {
			t.Fatalf("stream_limit evictions = %v, want ≥ 4", got)
		}
	})
	t.Run("stale_after", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.StaleAfter = time.Minute })
		h.consume(agentBatch(t0.Add(10*time.Second), "shop", "cart", []podCounters{{pod: "pod-gone", node: "n1", conns: 5}}))
		for k := 2; k <= 9; k++ {
			h.consume(agentBatch(t0.Add(time.Duration(k)*10*time.Second), "shop", "cart", []podCounters{
				{pod: "pod-a", node: "n1", conns: float64(10 * k)}, {pod: "pod-b", node: "n2", conns: float64(10 * k)},
			}))
		}
		if got := evictions(h, "stale_pod"); got != 1 {
			t.Fatalf("stale_pod evictions = %v, want 1", got)
		}
		if got := evictions(h, "stale_stream"); got != 4 {
			t.Fatalf("stale_stream evictions = %v, want 4", got)
		}
	})
}

func TestPassThroughAndFiltering(t *testing.T) {
	h := newHarness(t, nil)
	md := agentBatch(t0.Add(10*time.Second), "shop", "cart", []podCounters{
		{pod: "pod-a", node: "n1", conns: 50}, {pod: "pod-b", node: "n2", conns: 50},
	})
	// A client-side view of pod-a's connections (another node's agent) and
	// a point whose namespace is only on the resource, overridden by the
	// data point elsewhere.
	rm := md.ResourceMetrics().AppendEmpty()
	rm.Resource().Attributes().PutStr("k8s.node.name", "n9")
	rm.Resource().Attributes().PutStr("k8s.namespace.name", "shop")
	m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
	m.SetName("lbpath.connections")
	sum := m.SetEmptySum()
	sum.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	for _, role := range []string{"client", "forward"} {
		dp := sum.DataPoints().AppendEmpty()
		dp.SetStartTimestamp(ts(t0))
		dp.SetTimestamp(ts(t0.Add(10 * time.Second)))
		dp.SetIntValue(10000)
		dp.Attributes().PutStr("k8s.service.name", "cart")
		dp.Attributes().PutStr("k8s.pod.name", "pod-a")
		dp.Attributes().PutStr("lbpath.role", role)
	}
	// Same pod on the pod side, namespace from the resource.
	dp := sum.DataPoints().AppendEmpty()
	dp.SetStartTimestamp(ts(t0))
	dp.SetTimestamp(ts(t0.Add(10 * time.Second)))
	dp.SetIntValue(100)
	dp.Attributes().PutStr("k8s.service.name", "cart")
	dp.Attributes().PutStr("k8s.pod.name", "pod-c")
	dp.Attributes().PutStr("lbpath.role", "server")

	want := pmetric.NewMetrics()
	md.CopyTo(want)
	h.consume(md)

	got := h.sink.AllMetrics()[0]
	if got.ResourceMetrics().Len() != want.ResourceMetrics().Len()+1 {
		t.Fatalf("resource metrics = %d, want input %d + 1 computed", got.ResourceMetrics().Len(), want.ResourceMetrics().Len())
	}
	head := pmetric.NewMetrics()
	for i := 0; i < want.ResourceMetrics().Len(); i++ {
		got.ResourceMetrics().At(i).CopyTo(head.ResourceMetrics().AppendEmpty())
	}
	var mj pmetric.JSONMarshaler
	a, _ := mj.MarshalMetrics(want)
	b, _ := mj.MarshalMetrics(head)
	if string(a) != string(b) {
		t.Fatalf("input was altered:\nwant %s\ngot  %s", a, b)
	}
	// client/forward points ignored: 50 / 50 / 100 on the server side.
	near(t, "pod-a share", h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-a", "lbpath.signal", "connections")), 0.25, 1e-9)
	near(t, "pod-c share", h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-c", "k8s.node.name", "n9", "lbpath.signal", "connections")), 0.5, 1e-9)
}
