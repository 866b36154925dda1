package deployregression

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processortest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// defaultTestBounds are the agent's request-latency buckets (seconds).
var defaultTestBounds = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10}

func ts(t time.Time) pcommon.Timestamp { return pcommon.NewTimestampFromTime(t) }

// latency draws a log-normal request latency: median 50 ms × factor, with a
// spread (sigma 0.5) typical of a service with a moderate tail.
func latency(rng *rand.Rand, median, factor float64) float64 {
	return median * factor * math.Exp(0.5*rng.NormFloat64())
}

func bucketOf(bounds []float64, v float64) int {
	for i, b := range bounds {
		if v <= b {
			return i
		}
	}
	return len(bounds)
}

func sampleHist(rng *rand.Rand, bounds []float64, n int, median, factor float64) []uint64 {
	h := make([]uint64, len(bounds)+1)
	for range n {
		h[bucketOf(bounds, latency(rng, median, factor))]++
	}
	return h
}

// podSpec is one pod's traffic during a step.
type podSpec struct {
	name, hash, node string
	rate             float64 // mean requests per second
	factor           float64 // latency multiplier over the 50 ms median
}

type podState struct {
	start  time.Time
	counts []uint64
	count  uint64
	sum    float64
}

// cluster simulates lbpath agents reporting cumulative request-duration
// histograms for one Deployment.
type cluster struct {
	rng       *rand.Rand
	ns, dep   string
	pods      map[string]*podState
	stepEvery time.Duration
}

func newCluster(seed uint64) *cluster {
	return &cluster{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), ns: "shop", dep: "checkout", pods: map[string]*podState{}, stepEvery: 10 * time.Second}
}

// step advances every listed pod by one export interval ending at `at`:
// a Poisson-ish number of requests (normal approximation) with log-normal
// latencies, and returns the agents' batch.
func (c *cluster) step(at time.Time, pods []podSpec) pmetric.Metrics {
	md := pmetric.NewMetrics()
	byNode := map[string]pmetric.HistogramDataPointSlice{}
	for _, ps := range pods {
		st, ok := c.pods[ps.name]
		if !ok {
			st = &podState{start: at.Add(-c.stepEvery), counts: make([]uint64, len(defaultTestBounds)+1)}
			c.pods[ps.name] = st
		}
		mean := ps.rate * c.stepEvery.Seconds()
		n := max(0, int(math.Round(mean+math.Sqrt(mean)*c.rng.NormFloat64())))
		for range n {
			v := latency(c.rng, 0.05, ps.factor)
			st.counts[bucketOf(defaultTestBounds, v)]++
			st.count++
			st.sum += v
		}
		dps, ok := byNode[ps.node]
		if !ok {
			rm := md.ResourceMetrics().AppendEmpty()
			rm.Resource().Attributes().PutStr("service.name", "lbpath-agent")
			rm.Resource().Attributes().PutStr("k8s.node.name", ps.node)
			m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
			m.SetName("lbpath.request.duration")
			m.SetUnit("s")
			h := m.SetEmptyHistogram()
			h.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
			dps = h.DataPoints()
			byNode[ps.node] = dps
		}
		dp := dps.AppendEmpty()
		dp.SetStartTimestamp(ts(st.start))
		dp.SetTimestamp(ts(at))
		dp.SetCount(st.count)
		dp.SetSum(st.sum)
		dp.ExplicitBounds().FromRaw(defaultTestBounds)
		dp.BucketCounts().FromRaw(st.counts)
		a := dp.Attributes()
		a.PutStr("k8s.namespace.name", c.ns)
		a.PutStr("k8s.deployment.name", c.dep)
		a.PutStr("k8s.replicaset.name", c.dep+"-"+ps.hash)
		a.PutStr("lbpath.pod_template_hash", ps.hash)
		a.PutStr("k8s.pod.name", ps.name)
		a.PutStr("lbpath.role", "server")
	}
	return md
}

// revisionPods returns n pods of a revision spread over three nodes.
func revisionPods(hash string, n int, rate, factor float64) []podSpec {
	out := make([]podSpec, n)
	for i := range out {
		out[i] = podSpec{name: "checkout-" + hash + "-" + string(rune('a'+i)), hash: hash, node: "node-" + string(rune('0'+i%3)), rate: rate, factor: factor}
	}
	return out
}

type harness struct {
	t    *testing.T
	proc processor.Metrics
	sink *consumertest.MetricsSink
	logs *observer.ObservedLogs
}

func newHarness(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	cfg := createDefaultConfig()
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	set := processortest.NewNopSettings(Type)
	set.Logger = zap.New(core)
	sink := new(consumertest.MetricsSink)
	proc, err := NewFactory().CreateMetrics(context.Background(), set, cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Shutdown(context.Background()) })
	return &harness{t: t, proc: proc, sink: sink, logs: logs}
}

func (h *harness) consume(md pmetric.Metrics) {
	h.t.Helper()
	if err := h.proc.ConsumeMetrics(context.Background(), md); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) computed() pmetric.MetricSlice {
	h.t.Helper()
	all := h.sink.AllMetrics()
	if len(all) == 0 {
		h.t.Fatal("nothing reached the next consumer")
	}
	rms := all[len(all)-1].ResourceMetrics()
	for i := 0; i < rms.Len(); i++ {
		if v, ok := rms.At(i).Resource().Attributes().Get("service.name"); ok && v.Str() == selfService {
			return rms.At(i).ScopeMetrics().At(0).Metrics()
		}
	}
	h.t.Fatal("no lbpath-collector ResourceMetrics in the last batch")
	return pmetric.MetricSlice{}
}

// find returns the value of the single data point of name whose attributes
// include want, and how many matched.
func (h *harness) find(name string, want map[string]string) (float64, int) {
	h.t.Helper()
	ms := h.computed()
	var v float64
	n := 0
	for i := 0; i < ms.Len(); i++ {
		m := ms.At(i)
		if m.Name() != name {
			continue
		}
		var dps pmetric.NumberDataPointSlice
		if m.Type() == pmetric.MetricTypeGauge {
			dps = m.Gauge().DataPoints()
		} else {
			dps = m.Sum().DataPoints()
		}
	next:
		for j := 0; j < dps.Len(); j++ {
			dp := dps.At(j)
			for k, w := range want {
				if got, ok := dp.Attributes().Get(k); !ok || got.AsString() != w {
					continue next
				}
			}
			n++
			if dp.ValueType() == pmetric.NumberDataPointValueTypeInt {
				v = float64(dp.IntValue())
			} else {
				v = dp.DoubleValue()
			}
		}
	}
	return v, n
}

func (h *harness) value(name string, want map[string]string) float64 {
	h.t.Helper()
	v, n := h.find(name, want)
	if n != 1 {
		h.t.Fatalf("%s%v: %d matching points, want 1", name, want, n)
	}
	return v
}

func dep(kv ...string) map[string]string {
	m := map[string]string{"k8s.namespace.name": "shop", "k8s.deployment.name": "checkout"}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func stringField(k, v string) zap.Field { return zap.String(k, v) }
