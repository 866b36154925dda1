package deployregression

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processortest"
)

// BenchmarkProcess500x20 feeds 500 Deployments × 20 pods over 50 nodes, one
// cumulative request-duration histogram (15 buckets) per pod per 10 s batch.
// From the fourth batch on, half of every Deployment's pods report a new
// pod-template hash, so every batch re-evaluates 500 rollouts (the
// comparison freezes after the after window, ~33 batches in). Reports data
// points per second on one core.
func BenchmarkProcess500x20(b *testing.B) {
	const deployments, podsPer, nodes = 500, 20, 50
	md := pmetric.NewMetrics()
	for n := range nodes {
		rm := md.ResourceMetrics().AppendEmpty()
		rm.Resource().Attributes().PutStr("service.name", "lbpath-agent")
		rm.Resource().Attributes().PutStr("k8s.node.name", fmt.Sprintf("node-%d", n))
		m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
		m.SetName("lbpath.request.duration")
		m.SetEmptyHistogram().SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	}
	type point struct {
		dp      pmetric.HistogramDataPoint
		rolling bool
		counts  []uint64
	}
	var all []point
	for d := range deployments {
		for p := range podsPer {
			node := (d*podsPer + p) % nodes
			dp := md.ResourceMetrics().At(node).ScopeMetrics().At(0).Metrics().At(0).Histogram().DataPoints().AppendEmpty()
			putPod(dp.Attributes(), d, p)
			dp.ExplicitBounds().FromRaw(defaultTestBounds)
			dp.SetStartTimestamp(pcommon.NewTimestampFromTime(t0))
			all = append(all, point{dp: dp, rolling: p >= podsPer/2, counts: make([]uint64, len(defaultTestBounds)+1)})
		}
	}
	// Count the rollouts reported in the last batch, to prove the benchmark
	// exercises the evaluation path and not just ingestion.
	rolloutsSeen := 0
	proc := rolloutCounter(b, &rolloutsSeen)
	inputRMs := md.ResourceMetrics().Len()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		now := t0.Add(time.Duration(i+1) * 10 * time.Second)
		for j := range all {
			pt := &all[j]
			if i == 3 && pt.rolling {
				pt.dp.Attributes().PutStr("lbpath.pod_template_hash", "h2")
				pt.dp.SetStartTimestamp(pcommon.NewTimestampFromTime(now.Add(-10 * time.Second)))
				clear(pt.counts)
			}
			var n uint64
			for k := range pt.counts {
				pt.counts[k] += uint64((i + j + k) % 4)
				n += pt.counts[k]
			}
			pt.dp.BucketCounts().FromRaw(pt.counts)
			pt.dp.SetCount(n)
			pt.dp.SetTimestamp(pcommon.NewTimestampFromTime(now))
		}
		b.StartTimer()
		if err := proc.ConsumeMetrics(context.Background(), md); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		rms := md.ResourceMetrics()
		n := 0
		rms.RemoveIf(func(pmetric.ResourceMetrics) bool { n++; return n > inputRMs })
		b.StartTimer()
	}
	if b.N > 4 && rolloutsSeen != deployments {
		b.Fatalf("last batch reported %d rollouts, want %d", rolloutsSeen, deployments)
	}
	b.ReportMetric(float64(len(all))*float64(b.N)/b.Elapsed().Seconds(), "points/s")
}

// BenchmarkProcessExponential500x20 is BenchmarkProcess500x20 with the
// agents' default input: cumulative base-2 exponential histograms, 40
// populated buckets of 160 at scale 4 (latencies around 1–6 ms), and every
// pod's stream lowering its scale once (to 3) mid-run, as an SDK does when a
// slow request widens the range, so the downscaling path is exercised.
func BenchmarkProcessExponential500x20(b *testing.B) {
	const deployments, podsPer, nodes, width = 500, 20, 50, 40
	md := pmetric.NewMetrics()
	for n := range nodes {
		rm := md.ResourceMetrics().AppendEmpty()
		rm.Resource().Attributes().PutStr("service.name", "lbpath-agent")
		rm.Resource().Attributes().PutStr("k8s.node.name", fmt.Sprintf("node-%d", n))
		m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
		m.SetName("lbpath.request.duration")
		m.SetEmptyExponentialHistogram().SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	}
	type point struct {
		dp      pmetric.ExponentialHistogramDataPoint
		rolling bool
		counts  []uint64
		scale   int32
	}
	var all []point
	for d := range deployments {
		for p := range podsPer {
			node := (d*podsPer + p) % nodes
			dp := md.ResourceMetrics().At(node).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints().AppendEmpty()
			putPod(dp.Attributes(), d, p)
			dp.SetStartTimestamp(pcommon.NewTimestampFromTime(t0))
			all = append(all, point{dp: dp, rolling: p >= podsPer/2, counts: make([]uint64, width), scale: 4})
		}
	}
	rolloutsSeen := 0
	proc := rolloutCounter(b, &rolloutsSeen)
	inputRMs := md.ResourceMetrics().Len()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		now := t0.Add(time.Duration(i+1) * 10 * time.Second)
		for j := range all {
			pt := &all[j]
			if i == 3 && pt.rolling {
				pt.dp.Attributes().PutStr("lbpath.pod_template_hash", "h2")
				pt.dp.SetStartTimestamp(pcommon.NewTimestampFromTime(now.Add(-10 * time.Second)))
				clear(pt.counts)
				pt.scale = 4
			}
			if i == 10 && pt.scale == 4 {
				// halve the resolution: bucket pairs merge, offset halves
				for k := 0; k < width/2; k++ {
					pt.counts[k] = pt.counts[2*k] + pt.counts[2*k+1]
				}
				clear(pt.counts[width/2:])
				pt.scale = 3
			}
			var n uint64
			used := width
			if pt.scale == 3 {
				used = width / 2
			}
			for k := range used {
				pt.counts[k] += uint64((i + j + k) % 4)
				n += pt.counts[k]
			}
			offset := int32(-160) // 2^(-160/16) ≈ 1 ms at scale 4
			if pt.scale == 3 {
				offset = -80
			}
			pt.dp.SetScale(pt.scale)
			pt.dp.Positive().SetOffset(offset)
			pt.dp.Positive().BucketCounts().FromRaw(pt.counts[:used])
			pt.dp.SetCount(n)
			pt.dp.SetTimestamp(pcommon.NewTimestampFromTime(now))
		}
		b.StartTimer()
		if err := proc.ConsumeMetrics(context.Background(), md); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		rms := md.ResourceMetrics()
		n := 0
		rms.RemoveIf(func(pmetric.ResourceMetrics) bool { n++; return n > inputRMs })
		b.StartTimer()
	}
	// the rollout (batch 4) is reported until it is retention (1 h, 360
	// batches) old
	if b.N > 4 && b.N <= 4+360 && rolloutsSeen != deployments {
		b.Fatalf("last batch reported %d rollouts, want %d", rolloutsSeen, deployments)
	}
	b.ReportMetric(float64(len(all))*float64(b.N)/b.Elapsed().Seconds(), "points/s")
}

// rolloutCounter is the processor under benchmark; *seen is set to the
// rollouts reported in each output batch.
func rolloutCounter(b *testing.B, seen *int) processor.Metrics {
	next, _ := consumer.NewMetrics(func(_ context.Context, md pmetric.Metrics) error {
		*seen = 0
		rms := md.ResourceMetrics()
		for i := 0; i < rms.Len(); i++ {
			ms := rms.At(i).ScopeMetrics().At(0).Metrics()
			for k := 0; k < ms.Len(); k++ {
				if ms.At(k).Name() == "lbpath.deploy.time_since" {
					*seen += ms.At(k).Gauge().DataPoints().Len()
				}
			}
		}
		return nil
	})
	proc, err := NewFactory().CreateMetrics(context.Background(), processortest.NewNopSettings(Type), createDefaultConfig(), next)
	if err != nil {
		b.Fatal(err)
	}
	return proc
}

// putPod names pod p of deployment d, on its first revision.
func putPod(a pcommon.Map, d, p int) {
	a.PutStr("k8s.namespace.name", fmt.Sprintf("ns-%d", d%20))
	a.PutStr("k8s.deployment.name", fmt.Sprintf("dep-%d", d))
	a.PutStr("k8s.pod.name", fmt.Sprintf("dep-%d-pod-%d", d, p))
	a.PutStr("lbpath.pod_template_hash", "h1")
	a.PutStr("lbpath.role", "server")
}
