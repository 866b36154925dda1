package exporter

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/internal/otlpsink"
)

// fakeClock is the series clock of a test: collections happen when the
// test flushes, and the clock says how much time they stand for.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// startSink starts a receiver stopped after the test's exporters shut
// down (cleanups run last-registered first).
func startSink(t testing.TB) *otlpsink.Sink {
	t.Helper()
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Stop)
	return sink
}

// seriesExporter exports metrics only, over real OTLP/gRPC into sink,
// collecting only when the test flushes.
func seriesExporter(t testing.TB, sink *otlpsink.Sink, mod func(*Config)) *Exporter {
	t.Helper()
	cfg := Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: "node1", MetricInterval: time.Hour,
		Timeout: 5 * time.Second, NoTraces: true}
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Shutdown(context.Background()) })
	return e
}

// collect flushes e and returns the points of that one export.
func collect(t testing.TB, e *Exporter, sink *otlpsink.Sink) []otlpsink.Point {
	t.Helper()
	before := len(sink.Points())
	if err := e.ForceFlush(context.Background()); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return sink.Points()[before:]
}

func podN(i int) *kube.Pod {
	return &kube.Pod{Namespace: "churn", Name: fmt.Sprintf("web-%d", i), Node: "node1", Deployment: "web", ReplicaSet: "web-1", TemplateHash: "1"}
}

// serverPath is a complete server-side connection to p (every per-pod
// connection metric records it).
func serverPath(p *kube.Pod, d time.Duration) *path.Path {
	_, s := twoViews()
	s.Pod = p
	s.Conn.End = s.Conn.Start.Add(d)
	return &s
}

// byMetric filters points of one metric; overflow reports whether to keep
// the overflow series (true), the others (false), or both (nil).
func byMetric(pts []otlpsink.Point, name string) []otlpsink.Point {
	var out []otlpsink.Point
	for _, p := range pts {
		if p.Metric == name {
			out = append(out, p)
		}
	}
	return out
}

func isOverflow(p otlpsink.Point) bool { return p.Attrs["otel.metric.overflow"] == true }

// selfValue is a self-metric's value for lbpath.metric=name (or the
// metric's only point when name is "").
func selfValue(t testing.TB, pts []otlpsink.Point, metric, name string) float64 {
	t.Helper()
	for _, p := range byMetric(pts, metric) {
		if name == "" || p.Attrs["lbpath.metric"] == name {
			return p.Value
		}
	}
	t.Fatalf("%s{lbpath.metric=%q} not exported", metric, name)
	return 0
}

// TestExponentialLatencyOverOTLP: by default the latency histograms reach
// the wire as base-2 exponential histograms at the finest scale whose
// buckets hold the recorded range in 160 buckets (computed here from the
// values, independently of the SDK), and p50/p90/p99 read from the wire
// buckets are within the scale's relative error of the exact quantiles
// of the recorded latencies (1–100 ms, log-uniform).
func TestExponentialLatencyOverOTLP(t *testing.T) {
	sink := startSink(t)
	e := seriesExporter(t, sink, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	lat := make([]float64, 5000)
	for i := range lat {
		// Whole microseconds, as the agent measures them.
		us := math.Round(1000 * math.Pow(100, rng.Float64()))
		lat[i] = us / 1e6
		e.Request(&path.Request{Req: flow.Request{Latency: time.Duration(us) * time.Microsecond}, Pod: pod, Service: svc})
	}
	e.Path(serverPath(pod, 40*time.Millisecond))
	pts := collect(t, e, sink)
	for _, name := range latencyInstruments {
		ps := byMetric(pts, name)
		if len(ps) != 1 || !ps[0].Exponential {
			t.Fatalf("%s: want one exponential histogram point, got %+v", name, ps)
		}
	}
	p := byMetric(pts, MetricRequestDuration)[0]
	if p.Count != uint64(len(lat)) || p.ZeroCount != 0 {
		t.Fatalf("count %d zero %d, want %d 0", p.Count, p.ZeroCount, len(lat))
	}
	lo, hi := slices.Min(lat), slices.Max(lat)
	if want := expectScale(lo, hi, expoMaxSize); p.Scale != want {
		t.Errorf("scale %d, want %d for %g–%g s in %d buckets", p.Scale, want, lo, hi, expoMaxSize)
	}
	base := math.Exp2(math.Exp2(-float64(p.Scale)))
	bound := (base - 1) / (base + 1)
	if bound > 0.022 {
		t.Errorf("relative error %.4f at scale %d: the 1–100 ms precision documented is 2.2 %%", bound, p.Scale)
	}
	slices.Sort(lat)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		exact := lat[int(math.Ceil(q*float64(len(lat))))-1]
		got := expoQuantile(p, q)
		if rel := math.Abs(got-exact) / exact; rel > bound {
			t.Errorf("p%g: %.6f s from the wire, exact %.6f s: relative error %.4f > %.4f", q*100, got, exact, rel, bound)
		} else {
			t.Logf("p%g: wire %.6f s, exact %.6f s, error %.4f (bound %.4f, scale %d)", q*100, got, exact, rel, bound, p.Scale)
		}
	}
}

// expectScale is the largest scale ≤ 20 at which [lo, hi] spans at most
// size buckets (bucket i holds (base^i, base^(i+1)]).
func expectScale(lo, hi float64, size int) int32 {
	for s := 20; s >= -10; s-- {
		f := math.Exp2(float64(s))
		idx := func(v float64) int { return int(math.Ceil(math.Log2(v)*f)) - 1 }
		if idx(hi)-idx(lo)+1 <= size {
			return int32(s)
		}
	}
	return -10
}

// expoQuantile estimates the q-quantile from the positive buckets: the
// bucket holding the rank, read at 2·lo·hi/(lo+hi), whose relative error
// to any value in the bucket is at most (base-1)/(base+1).
func expoQuantile(p otlpsink.Point, q float64) float64 {
	rank := uint64(math.Ceil(q * float64(p.Count)))
	base := math.Exp2(math.Exp2(-float64(p.Scale)))
	var cum uint64
	for i, c := range p.BucketCounts {
		cum += c
		if cum >= rank {
			lo := math.Pow(base, float64(int(p.Offset)+i))
			hi := lo * base
			return 2 * lo * hi / (lo + hi)
		}
	}
	return math.NaN()
}

// TestExplicitLatencyHistogram: --latency-histogram=explicit keeps the
// fixed buckets on the wire.
func TestExplicitLatencyHistogram(t *testing.T) {
	sink := startSink(t)
	e := seriesExporter(t, sink, func(c *Config) { c.LatencyHistogram = HistogramExplicit })
	e.Request(&path.Request{Req: flow.Request{Latency: 30 * time.Millisecond}, Pod: pod, Service: svc})
	e.Path(serverPath(pod, 40*time.Millisecond))
	pts := collect(t, e, sink)
	for name, bounds := range map[string][]float64{MetricRequestDuration: requestBuckets,
		MetricConnectionDuration: connectionBuckets, MetricRTT: rttBuckets} {
		ps := byMetric(pts, name)
		if len(ps) != 1 || ps[0].Exponential || !slices.Equal(ps[0].Bounds, bounds) || ps[0].Count != 1 {
			t.Errorf("%s: want one explicit histogram with %v, got %+v", name, bounds, ps)
		}
	}
}

// TestDeltaTemporality: with delta, every point says delta and carries
// only its interval's increments, and a series with no measurement in an
// interval is not exported again: a deleted pod's series is gone after
// one collection. Self-metrics are delta too.
func TestDeltaTemporality(t *testing.T) {
	sink := startSink(t)
	e := seriesExporter(t, sink, func(c *Config) { c.Temporality = TemporalityDelta })
	a, b := podN(1), podN(2)
	for range 3 {
		e.Path(serverPath(a, time.Millisecond))
	}
	e.Path(serverPath(b, time.Millisecond))
	first := collect(t, e, sink)
	conns := map[string]float64{}
	for _, p := range byMetric(first, MetricConnections) {
		conns[p.Attrs["k8s.pod.name"].(string)] = p.Value
	}
	if conns["web-1"] != 3 || conns["web-2"] != 1 || len(conns) != 2 {
		t.Fatalf("first interval connections %v, want web-1 3, web-2 1", conns)
	}
	// Only b has traffic in the second interval: a (deleted) must not
	// appear, and b counts only the new connections.
	e.Path(serverPath(b, time.Millisecond))
	e.Path(serverPath(b, time.Millisecond))
	second := collect(t, e, sink)
	for _, p := range second {
		if !p.Delta && (p.Metric == MetricConnections || p.Metric == MetricRequestDuration || p.Metric == MetricBytes ||
			p.Metric == MetricConnectionDuration || p.Metric == MetricRTT || p.Metric == MetricExported) {
			t.Errorf("%s is not delta", p.Metric)
		}
		if p.Attrs["k8s.pod.name"] == "web-1" {
			t.Errorf("%s still exports the idle pod web-1 under delta", p.Metric)
		}
	}
	cs := byMetric(second, MetricConnections)
	if len(cs) != 1 || cs[0].Value != 2 {
		t.Fatalf("second interval connections %+v, want web-2: 2", cs)
	}
	if v := selfValue(t, second, MetricExported, ""); v != 2 {
		t.Errorf("%s delta = %v, want 2", MetricExported, v)
	}
	if h := byMetric(second, MetricConnectionDuration); len(h) != 1 || h[0].Count != 2 || !h[0].Delta {
		t.Errorf("second interval duration histogram %+v, want one delta point of count 2", h)
	}
}

// TestSeriesCapOverflowCounted: with --max-series-per-metric=5, eight pods'
// connections leave five series per metric, the rest in the overflow
// series; totals are whole (nothing lost), and lbpath.agent.series_overflow
// counts exactly the measurements folded, metric by metric (forward
// records make only lbpath.connections; a connection without RTT no
// lbpath.rtt point). Requests have their own limit. Under delta the limit
// is per interval.
func TestSeriesCapOverflowCounted(t *testing.T) {
	for _, temp := range []string{TemporalityCumulative, TemporalityDelta} {
		t.Run(temp, func(t *testing.T) { testSeriesCap(t, temp) })
	}
}

func testSeriesCap(t *testing.T, temp string) {
	sink := startSink(t)
	const max = 5
	e := seriesExporter(t, sink, func(c *Config) { c.MaxSeries = max; c.Temporality = temp })
	pods := make([]*kube.Pod, 8)
	for i := range pods {
		pods[i] = podN(i)
	}
	// Pods 0–4 fill the limit; 5–7 overflow: 2 full connections each, one
	// of them without an RTT, plus a forward record each.
	for i, p := range pods {
		e.Path(serverPath(p, time.Millisecond))
		noRTT := serverPath(p, time.Millisecond)
		noRTT.Conn.SRTTMicros = 0
		e.Path(noRTT)
		if i >= max {
			fwd, _ := twoViews()
			fwd.Pod = p // role forward: a set of its own
			e.Path(&fwd)
		}
		for range 3 {
			e.Request(&path.Request{Req: flow.Request{Latency: time.Millisecond}, Pod: p, Service: svc})
		}
	}
	pts := collect(t, e, sink)
	wantOverflow := map[string]float64{
		MetricConnections:        3*2 + 3, // 3 pods × (2 server + 1 forward)
		MetricConnectionDuration: 3 * 2,
		MetricRTT:                3 * 1,
		MetricRetransmits:        3 * 2,
		MetricBytes:              3 * 2 * 2, // two directions
		MetricRequests:           3 * 3,
		MetricRequestDuration:    3 * 3,
	}
	for name, want := range wantOverflow {
		if got := selfValue(t, pts, MetricSeriesOverflow, name); got != want {
			t.Errorf("%s{%s} = %v, want %v", MetricSeriesOverflow, name, got, want)
		}
		var named int
		var total, overflow float64
		for _, p := range byMetric(pts, name) {
			v := p.Value
			if p.Count > 0 {
				v = float64(p.Count)
			}
			if name == MetricBytes {
				v = 1 // count points, the byte values differ per direction
			}
			total += v
			if isOverflow(p) {
				overflow += v
			} else {
				named++
			}
		}
		wantNamed := max
		if name == MetricBytes {
			wantNamed = 2 * max
		}
		if named != wantNamed {
			t.Errorf("%s: %d named series, want %d", name, named, wantNamed)
		}
		if name != MetricBytes && name != MetricRetransmits && overflow != want {
			t.Errorf("%s: overflow series holds %v, want %v", name, overflow, want)
		}
		if name == MetricConnections && total != 8*2+3 {
			t.Errorf("%s: total %v, want %d (nothing lost)", name, total, 8*2+3)
		}
	}
	if temp != TemporalityDelta {
		return
	}
	// A new interval admits new sets: pods 5–7 now fit.
	for _, p := range pods[5:] {
		e.Path(serverPath(p, time.Millisecond))
	}
	pts = collect(t, e, sink)
	if got := selfValue(t, pts, MetricSeriesOverflow, MetricConnections); got != 0 {
		t.Errorf("second interval: %s{connections} = %v, want 0 (delta counts per interval)", MetricSeriesOverflow, got)
	}
	cs := byMetric(pts, MetricConnections)
	if len(cs) != 3 || slices.ContainsFunc(cs, isOverflow) {
		t.Errorf("second interval: %+v, want the three pods named", cs)
	}
}

// TestCumulativeExpiry: under cumulative, sets with no measurement for
// --series-expiry are kept until they outnumber the live ones; then the
// collection exports the old generation's final values (nothing lost) and
// the next one only the live sets, restarted from zero with a later start
// time. A deleted pod's series is gone; lbpath.agent.series_resets counts
// the restart and lbpath.agent.series the series exported.
func TestCumulativeExpiry(t *testing.T) {
	sink := startSink(t)
	clk := &fakeClock{t: t0}
	e := seriesExporter(t, sink, func(c *Config) { c.SeriesExpiry = 2 * time.Hour; c.now = clk.now })
	const dead, live = 100, 10
	for i := range dead {
		e.Path(serverPath(podN(i), time.Millisecond))
	}
	interval := func() []otlpsink.Point { clk.add(time.Hour); return collect(t, e, sink) }
	liveRound := func() {
		for i := dead; i < dead+live; i++ {
			e.Path(serverPath(podN(i), time.Millisecond))
		}
	}
	// Pods 0–99 are deleted; 100–109 keep serving. Within the expiry,
	// nothing is reset.
	first := interval()
	if n := len(byMetric(first, MetricConnections)); n != dead {
		t.Fatalf("first collection: %d series, want %d", n, dead)
	}
	liveRound()
	second := interval()
	if n := len(byMetric(second, MetricConnections)); n != dead+live {
		t.Fatalf("second collection: %d series, want %d (within expiry)", n, dead+live)
	}
	// Third: the 100 have had no measurement for 2h+ and outnumber the
	// 10 live: this collection is the old generation's last, whole.
	liveRound()
	third := interval()
	cs := byMetric(third, MetricConnections)
	if len(cs) != dead+live {
		t.Fatalf("reset collection: %d series, want the old generation's %d", len(cs), dead+live)
	}
	oldStart := cs[0].StartNanos
	for _, p := range cs {
		want := 1.0
		if p.Attrs["k8s.pod.name"] != "" && slices.Contains(podNames(dead, dead+live), p.Attrs["k8s.pod.name"].(string)) {
			want = 2
		}
		if p.Value != want {
			t.Errorf("reset collection: %v = %v, want %v", p.Attrs["k8s.pod.name"], p.Value, want)
		}
	}
	if got := e.SeriesResets(); got != 1 {
		t.Fatalf("resets %d, want 1", got)
	}
	liveRound()
	fourth := interval()
	cs = byMetric(fourth, MetricConnections)
	if len(cs) != live {
		t.Fatalf("after reset: %d series, want the %d live", len(cs), live)
	}
	for _, p := range cs {
		if p.Value != 1 || p.StartNanos <= oldStart {
			t.Errorf("after reset: %v = %v start %d, want 1 from a start after %d", p.Attrs["k8s.pod.name"], p.Value, p.StartNanos, oldStart)
		}
	}
	if v := selfValue(t, fourth, MetricSeriesResets, ""); v != 1 {
		t.Errorf("%s = %v, want 1", MetricSeriesResets, v)
	}
	// lbpath.agent.series is read before the producer: the previous
	// collection's count (the reset one's, 110).
	if v := selfValue(t, fourth, MetricSeries, MetricConnections); v != dead+live {
		t.Errorf("%s{connections} = %v, want %d", MetricSeries, v, dead+live)
	}
	if got := e.Series()[mConnections].Series; got != live {
		t.Errorf("Series() = %d, want %d", got, live)
	}
}

func podNames(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, podN(i).Name)
	}
	return out
}

// TestCumulativeOverflowExpires: a full limit held by stale sets restarts
// the generation at the next collection, so a new pod gets its own series
// instead of staying in overflow for the agent's life.
func TestCumulativeOverflowExpires(t *testing.T) {
	sink := startSink(t)
	clk := &fakeClock{t: t0}
	e := seriesExporter(t, sink, func(c *Config) { c.MaxSeries = 3; c.SeriesExpiry = 2 * time.Hour; c.now = clk.now })
	for i := range 3 {
		e.Path(serverPath(podN(i), time.Millisecond))
	}
	for range 3 {
		clk.add(time.Hour)
		collect(t, e, sink)
	}
	newPod := podN(9)
	e.Path(serverPath(newPod, time.Millisecond)) // overflows: 0–2 hold the slots, stale
	clk.add(time.Hour)
	pts := collect(t, e, sink)
	if !slices.ContainsFunc(byMetric(pts, MetricConnections), isOverflow) || e.SeriesResets() != 1 {
		t.Fatalf("want the overflow exported and a reset; resets %d, points %+v", e.SeriesResets(), byMetric(pts, MetricConnections))
	}
	e.Path(serverPath(newPod, time.Millisecond))
	clk.add(time.Hour)
	cs := byMetric(collect(t, e, sink), MetricConnections)
	if len(cs) != 1 || cs[0].Attrs["k8s.pod.name"] != newPod.Name || cs[0].Value != 1 {
		t.Fatalf("after the reset: %+v, want %s alone with 1", cs, newPod.Name)
	}
	if got := e.Series()[mConnections].Overflow; got != 1 {
		t.Errorf("overflow count %d, want 1 (counted once, kept across the reset)", got)
	}
}

// TestLargeCollectionDelivered: one collection of 1,200 pods' series
// (≈16,800 points, ≈6.7 MB: over gRPC's 4 MiB message limit in one request) is
// split into requests the receiver accepts: every series arrives, no
// export fails.
func TestLargeCollectionDelivered(t *testing.T) {
	sink := startSink(t)
	e := seriesExporter(t, sink, nil)
	const pods = 1200
	for i := range pods {
		churnPod(e, i)
	}
	pts := collect(t, e, sink)
	if f := e.Stats.MetricsFailed.Load(); f != 0 {
		t.Fatalf("%d metric exports failed", f)
	}
	if n := len(byMetric(pts, MetricConnections)); n != 3*pods {
		t.Errorf("%d connection series received, want %d", n, 3*pods)
	}
	if n := len(byMetric(pts, MetricRequestDuration)); n != pods {
		t.Errorf("%d request duration series received, want %d", n, pods)
	}
}

// TestIngressSeriesCapped: the ingress edge's metrics are bounded by
// --max-series-per-metric like every per-pod metric: with a limit of 5,
// eight backend pods behind one proxy leave five named series per ingress
// metric and the rest in the overflow series, nothing lost, and
// lbpath.agent.series_overflow counts exactly what was folded. Every
// outbound connection still counts as an aggregate link.
func TestIngressSeriesCapped(t *testing.T) {
	sink := startSink(t)
	const max = 5
	e := seriesExporter(t, sink, func(c *Config) { c.MaxSeries = max; c.Temporality = TemporalityCumulative })
	hop := &kube.IngressHop{Kind: kube.KindGateway, Ingress: "default/shop-gw", Class: "nginx", HTTPRoute: "default/shop",
		ProxyService: "default/shop-gw", ProxyPod: "default/gw-1", Route: "/web"}
	for i := range 8 {
		p := podN(i)
		for range 2 {
			e.Request(&path.Request{Req: flow.Request{Latency: time.Millisecond}, Pod: p, Service: svc, Ingress: hop})
		}
		out := serverPath(p, time.Millisecond)
		out.Conn.Role = flow.RoleClient
		out.Ingress = hop
		e.Path(out)
	}
	pts := collect(t, e, sink)
	for name, per := range map[string]float64{MetricIngressRequests: 2, MetricIngressDuration: 2, MetricIngressConns: 1} {
		if got := selfValue(t, pts, MetricSeriesOverflow, name); got != 3*per {
			t.Errorf("%s{%s} = %v, want %v", MetricSeriesOverflow, name, got, 3*per)
		}
		named, total, overflow := 0, 0.0, 0.0
		for _, p := range byMetric(pts, name) {
			v := p.Value
			if p.Count > 0 {
				v = float64(p.Count)
			}
			total += v
			if isOverflow(p) {
				overflow += v
				continue
			}
			named++
			if p.Attrs["lbpath.ingress.kind"] != kube.KindGateway || p.Attrs["lbpath.ingress.httproute"] != "default/shop" {
				t.Errorf("%s point %v lacks the Gateway's kind or HTTPRoute", name, p.Attrs)
			}
		}
		if named != max || overflow != 3*per || total != 8*per {
			t.Errorf("%s: %d named series, overflow %v, total %v; want %d, %v, %v", name, named, overflow, total, max, 3*per, 8*per)
		}
	}
	links := 0.0
	for _, p := range byMetric(pts, MetricIngressLinks) {
		if p.Attrs["lbpath.link"] == "aggregate" {
			links += p.Value
		}
	}
	if links != 8 {
		t.Errorf("aggregate links %v, want all 8 outbound connections", links)
	}
}
