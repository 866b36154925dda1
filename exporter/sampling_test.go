package exporter

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/internal/otlpsink"
)

// TestThresholdEncodingSpecExamples: the th values and exact probabilities
// of the specification's table of 1-in-N probabilities at the default
// precision of four significant digits (TraceState: Probability Sampling,
// "Converting floating-point probability to threshold value").
func TestThresholdEncodingSpecExamples(t *testing.T) {
	for _, tc := range []struct {
		p      float64
		th     string
		actual float64 // 0: not checked
	}{
		{1, "0", 1},
		{0.5, "8", 0.5},
		{1.0 / 3, "aaab", 0.3333282470703125},
		{0.25, "c", 0.25},
		{0.2, "cccd", 0.1999969482421875},
		{0.125, "e", 0.125},
		{0.1, "e666", 0.100006103515625},
		{0.0625, "f", 0.0625},
		{0.01, "fd70a", 0.010000228881835938},
		{0.001, "ffbe77", 0.0009999871253967285},
		{0.0001, "fff9724", 0.00010000169277191162},
		{0.00001, "ffff583a", 0},
		{0.000001, "ffffef39", 0},
	} {
		th := ThresholdFor(tc.p)
		if th.TH() != tc.th {
			t.Errorf("p=%v: th:%s, want th:%s", tc.p, th.TH(), tc.th)
		}
		if tc.actual != 0 && th.Probability() != tc.actual {
			t.Errorf("p=%v: actual probability %v, want %v", tc.p, th.Probability(), tc.actual)
		}
		if got := th.ts.String(); got != "ot=th:"+tc.th {
			t.Errorf("p=%v: tracestate %q", tc.p, got)
		}
	}
	if third := ThresholdFor(1.0 / 3); third.t != 0xaaab0000000000 {
		t.Errorf("1/3: threshold %014x, want aaab0000000000", third.t)
	}
	if never := ThresholdFor(0); never.TH() != "" || never.Probability() != 0 {
		t.Errorf("p=0: th %q probability %v, want none and 0", never.TH(), never.Probability())
	}
}

// traceIDWithRandomness builds a trace ID whose 56 least-significant bits
// are r and whose other bits are all ones (they must not matter).
func traceIDWithRandomness(r uint64) trace.TraceID {
	var id trace.TraceID
	for i := range id {
		id[i] = 0xff
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], r)
	copy(id[9:], b[1:])
	return id
}

// TestKeepComparesRandomnessWithThreshold: keep exactly when R >= T, R
// being the trace ID's 56 least-significant bits.
func TestKeepComparesRandomnessWithThreshold(t *testing.T) {
	th := ThresholdFor(0.25) // T = 0xc0000000000000
	for _, tc := range []struct {
		r    uint64
		keep bool
	}{
		{0, false}, {0xbfffffffffffff, false}, {0xc0000000000000, true}, {0xffffffffffffff, true},
	} {
		if got := th.Keep(traceIDWithRandomness(tc.r)); got != tc.keep {
			t.Errorf("R=%014x T=%014x: keep %v, want %v", tc.r, th.t, got, tc.keep)
		}
	}
	if !AlwaysKeep.Keep(traceIDWithRandomness(0)) {
		t.Error("probability 1 dropped R=0")
	}
	if ThresholdFor(0).Keep(traceIDWithRandomness(0xffffffffffffff)) {
		t.Error("probability 0 kept the largest R")
	}
}

// TestDecisionsAreConsistent: over many connections' trace IDs the
// decision is the same every time it is taken, and a connection kept at
// one probability is kept at every larger one (the property that lets two
// Services' spans of one trace nest).
func TestDecisionsAreConsistent(t *testing.T) {
	ps := []float64{0.001, 0.01, 1.0 / 16, 0.1, 0.25, 1.0 / 3, 0.5, 0.9, 1}
	kept := make([]int, len(ps))
	for port := range 20000 {
		c := flow.Connection{PodSrc: netip.AddrPortFrom(snat.Addr(), uint16(port)), PodDst: podIP, Start: t0}
		id := ConnectionTraceID(&c)
		prev := false
		for i, p := range ps {
			k := ThresholdFor(p).Keep(id)
			if k != ThresholdFor(p).Keep(ConnectionTraceID(&c)) {
				t.Fatalf("port %d p=%v: decision changed", port, p)
			}
			if prev && !k {
				t.Fatalf("port %d: kept at a smaller probability than %v, dropped at %v", port, ps[i-1], p)
			}
			if k {
				kept[i]++
			}
			prev = k
		}
	}
	if kept[len(ps)-1] != 20000 {
		t.Errorf("probability 1 kept %d of 20000", kept[len(ps)-1])
	}
	t.Logf("kept of 20000 by probability %v: %v", ps, kept)
}

// TestKeepAlways: with probability 0 only failed, diagnosed (beyond SNAT
// and a cross-node hop) and slow connections are kept, with th:0; a
// Service's annotations override the agent's probability and threshold.
func TestKeepAlways(t *testing.T) {
	s := newSampler(Sampling{Enabled: true, Probability: 0, SlowThreshold: time.Second})
	entry, server := twoViews() // entry has the SNAT and cross-node diagnoses
	tid := ConnectionTraceID(&server.Conn)
	check := func(name string, p path.Path, want *Threshold) {
		t.Helper()
		got := s.decide(&p, tid)
		if (got == nil) != (want == nil) || (got != nil && got.TH() != want.TH()) {
			t.Errorf("%s: decision %v, want %v", name, got, want)
		}
	}
	check("healthy server", server, nil)
	check("healthy forward with SNAT and cross-node diagnoses", entry, nil)
	for _, o := range []flow.Outcome{flow.OutcomeReset, flow.OutcomeRefused, flow.OutcomeTimeout, flow.OutcomeUnreachable, flow.OutcomeFailed} {
		p := server
		p.Conn.Outcome = o
		check(string(o), p, &AlwaysKeep)
	}
	p := server
	p.Diagnoses = []path.Diagnosis{{Code: path.DiagEndpointNotReady}}
	check("diagnosed", p, &AlwaysKeep)
	p = server
	p.Conn.End = p.Conn.Start.Add(1500 * time.Millisecond)
	check("slow", p, &AlwaysKeep)
	p.Conn.End = p.Conn.Start.Add(time.Second)
	check("exactly the threshold", p, nil)
	fwd := entry
	fwd.Conn.End = fwd.Conn.Start.Add(time.Hour) // a forward record has no duration of its own
	check("forward", fwd, nil)

	one, zero := 1.0, time.Duration(0)
	p = server
	p.Service = &kube.Service{Namespace: "default", Name: "web", SpanSampling: &one}
	check("Service at probability 1", p, &AlwaysKeep)
	p.Conn.End = p.Conn.Start.Add(time.Minute)
	p.Service = &kube.Service{Namespace: "default", Name: "web", SlowThreshold: &zero}
	check("Service without slow rule", p, nil)

	if got := newSampler(Sampling{}).decide(&server, tid); got != &AlwaysKeep {
		t.Errorf("sampling off: %v, want every connection kept", got)
	}
}

// TestSampledSpansOverOTLP: two nodes' exporters at probability 1/4 over
// real OTLP: connections whose trace ID passes the threshold arrive from
// both nodes with ot=th:c and the W3C random flag, the others from
// neither; those of a Service annotated 1/2 follow th:8; a refused
// connection arrives with th:0; metrics count every connection;
// lbpath.agent.spans_sampled_out counts the rest.
func TestSampledSpansOverOTLP(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	ctx := context.Background()
	smp := Sampling{Enabled: true, Probability: 0.25, SlowThreshold: time.Second}
	mk := func(node string) *Exporter {
		e, err := New(ctx, Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: node, MetricInterval: time.Hour, Sampling: smp}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	eEntry, eServer := mk("node2"), mk("node1")
	th, thHalf := ThresholdFor(0.25), ThresholdFor(0.5)
	half := 0.5 // every other connection's Service is annotated lbpath.io/span-sampling: "0.5"
	svcHalf := &kube.Service{Namespace: "default", Name: "web", SpanSampling: &half}
	const n = 200
	want := map[string]bool{}     // trace ID → kept
	wantTS := map[string]string{} // trace ID → tracestate
	for i := range n {
		entry, server := twoViews()
		src := netip.AddrPortFrom(snat.Addr(), uint16(20000+i))
		entry.Conn.PodSrc, server.Conn.PodSrc, server.Conn.Client = src, src, src
		applied := th
		if i%2 == 1 {
			entry.Service, server.Service, applied = svcHalf, svcHalf, thHalf
		}
		eEntry.Path(&entry)
		eServer.Path(&server)
		id := ConnectionTraceID(&server.Conn).String()
		want[id], wantTS[id] = applied.Keep(ConnectionTraceID(&server.Conn)), "ot=th:"+applied.TH()
	}
	refused := path.Path{Conn: flow.Connection{Node: "node1", Role: flow.RoleReject, Outcome: flow.OutcomeRefused, Start: t0, End: t0,
		Client: client, Target: lb, PodSrc: client, PodDst: lb}, Service: svc, Entry: kube.EntryLoadBalancer, EntryNode: "node1"}
	var refusedID string
	for port := uint16(1); ; port++ { // a refused connection the probability alone would drop
		refused.Conn.PodSrc = netip.AddrPortFrom(client.Addr(), port)
		if id := ConnectionTraceID(&refused.Conn); !th.Keep(id) {
			refusedID = id.String()
			break
		}
	}
	eServer.Path(&refused)
	for _, e := range []*Exporter{eEntry, eServer} {
		if err := e.ForceFlush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	keptWant := 0
	for _, k := range want {
		if k {
			keptWant++
		}
	}
	if keptWant == 0 || keptWant == n {
		t.Fatalf("%d of %d kept: the test needs both outcomes", keptWant, n)
	}
	got := map[string]map[string]bool{} // trace ID → nodes with a root span
	for _, s := range sink.Spans() {
		if s.Flags&0x3 != 0x3 {
			t.Errorf("span %s flags %#x: want sampled and random", s.Name, s.Flags)
		}
		ts := wantTS[s.TraceID]
		if s.TraceID == refusedID {
			ts = "ot=th:0"
		}
		if s.TraceState != ts {
			t.Errorf("span %s of %s: tracestate %q, want %q", s.Name, s.TraceID, s.TraceState, ts)
		}
		if s.ParentID == "" {
			if got[s.TraceID] == nil {
				got[s.TraceID] = map[string]bool{}
			}
			got[s.TraceID][s.Resource["k8s.node.name"].(string)] = true
		}
	}
	for id, keep := range want {
		if nodes := got[id]; keep != (len(nodes) == 2) || (!keep && len(nodes) != 0) {
			t.Errorf("trace %s: predicted kept %v, root spans from %v", id, keep, nodes)
		}
	}
	if !got[refusedID]["node1"] {
		t.Errorf("refused connection %s not kept", refusedID)
	}
	if out := eServer.Stats.SampledOut.Load(); out != uint64(n-keptWant) {
		t.Errorf("node1 spans_sampled_out = %d, want %d", out, n-keptWant)
	}
	var conns, sampledOut float64
	for _, p := range sink.Points() {
		if p.Resource["k8s.node.name"] != "node1" {
			continue
		}
		switch p.Metric {
		case MetricConnections:
			conns += p.Value
		case MetricSpansSampledOut:
			sampledOut = p.Value
		}
	}
	if conns != n+1 || sampledOut != float64(n-keptWant) {
		t.Errorf("node1 metrics: %s %v (want %d), %s %v (want %d)", MetricConnections, conns, n+1,
			MetricSpansSampledOut, sampledOut, n-keptWant)
	}
	for _, e := range []*Exporter{eEntry, eServer} {
		if err := e.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMetricsSurviveSpanOverflow: the collector stalls on traces (it holds
// every trace export unanswered) while metrics flow. 10,000 connections
// overflow the span path (SDK queue, then the exporter's 16-slot queue);
// the metrics still count all 10,000 before a single span is delivered,
// and once traces flow again every connection's spans are either
// delivered or counted in queue_full: queue_full is exactly the shortfall.
func TestMetricsSurviveSpanOverflow(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	release := sink.HoldTraces()
	defer release()
	ctx := context.Background()
	e, err := New(ctx, Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: "node1", MetricInterval: time.Hour,
		QueueSize: 16, Timeout: time.Minute}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, server := twoViews()
	const n = 10000
	start := time.Now()
	for i := range n {
		p := server
		p.Conn.PodSrc = netip.AddrPortFrom(snat.Addr(), uint16(10000+i))
		e.Path(&p)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("feeding %d connections took %v: Path blocked", n, d)
	}
	full := e.Stats.QueueFull.Load()
	if full == 0 {
		t.Fatal("the span path did not overflow; the test proves nothing")
	}
	if err := e.mp.ForceFlush(ctx); err != nil {
		t.Fatalf("metrics flush while traces are held: %v", err)
	}
	if spans, _ := sink.Counts(); spans != 0 {
		t.Fatalf("%d spans delivered while held", spans)
	}
	var conns, bytesToServer float64
	for _, p := range sink.Points() {
		switch {
		case p.Metric == MetricConnections:
			conns += p.Value
		case p.Metric == MetricBytes && p.Attrs["lbpath.direction"] == "to_server":
			bytesToServer += p.Value
		}
	}
	if conns != n || bytesToServer != n*float64(server.Conn.BytesToServer) {
		t.Errorf("metrics count %v connections and %v bytes to server, want %d and %d (queue_full %d)",
			conns, bytesToServer, n, n*server.Conn.BytesToServer, full)
	}
	release()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	spans, _ := sink.Counts()
	per := spanCount(&server)
	if failed := e.Stats.SpansFailed.Load(); failed != 0 {
		t.Errorf("spans_failed = %d, want 0 (the collector answered every export once released)", failed)
	}
	if want := per * int(n-full); spans != want {
		t.Errorf("delivered %d spans, want %d: %d connections minus queue_full %d, × %d spans", spans, want, n, full, per)
	}
	t.Logf("%d connections: metrics %v, queue_full %d, spans delivered %d", n, conns, full, spans)
}
