package lbimbalance

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/processor/processortest"
)

// BenchmarkProcess500x20 feeds 500 Services × 20 pods spread over 50 nodes,
// one batch per 10 s interval holding every node's points (4 per pod:
// connections, requests, bytes×2), and reports data points per second on
// one core.
func BenchmarkProcess500x20(b *testing.B) {
	const services, podsPer, nodes = 500, 20, 50
	md := pmetric.NewMetrics()
	var all []pmetric.NumberDataPoint
	for n := range nodes {
		rm := md.ResourceMetrics().AppendEmpty()
		rm.Resource().Attributes().PutStr("service.name", "lbpath-agent")
		rm.Resource().Attributes().PutStr("k8s.node.name", fmt.Sprintf("node-%d", n))
		ms := rm.ScopeMetrics().AppendEmpty().Metrics()
		for _, name := range []string{"lbpath.connections", "lbpath.requests", "lbpath.bytes"} {
			m := ms.AppendEmpty()
			m.SetName(name)
			s := m.SetEmptySum()
			s.SetIsMonotonic(true)
			s.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
		}
	}
	for s := range services {
		for p := range podsPer {
			node := (s*podsPer + p) % nodes
			ms := md.ResourceMetrics().At(node).ScopeMetrics().At(0).Metrics()
			for mi, dirs := range [][]string{{""}, {""}, {"to_server", "to_client"}} {
				for _, dir := range dirs {
					dp := ms.At(mi).Sum().DataPoints().AppendEmpty()
					a := dp.Attributes()
					a.PutStr("k8s.namespace.name", fmt.Sprintf("ns-%d", s%20))
					a.PutStr("k8s.service.name", fmt.Sprintf("svc-%d", s))
					a.PutStr("k8s.pod.name", fmt.Sprintf("svc-%d-pod-%d", s, p))
					a.PutStr("lbpath.entry", "clusterip")
					a.PutStr("lbpath.outcome", "ok")
					a.PutStr("lbpath.role", "server")
					if dir != "" {
						a.PutStr("lbpath.direction", dir)
					}
					dp.SetStartTimestamp(pcommon.NewTimestampFromTime(t0))
					all = append(all, dp)
				}
			}
		}
	}
	proc, err := NewFactory().CreateMetrics(context.Background(), processortest.NewNopSettings(Type), createDefaultConfig(), consumertest.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	inputRMs := md.ResourceMetrics().Len()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		now := pcommon.NewTimestampFromTime(t0.Add(time.Duration(i+1) * 10 * time.Second))
		for j, dp := range all {
			dp.SetTimestamp(now)
			dp.SetIntValue(int64(i+1) * int64(10+j%7))
		}
		b.StartTimer()
		if err := proc.ConsumeMetrics(context.Background(), md); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		rms := md.ResourceMetrics()
		for rms.Len() > inputRMs {
			n := 0
			rms.RemoveIf(func(pmetric.ResourceMetrics) bool { n++; return n > inputRMs })
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(len(all))*float64(b.N)/b.Elapsed().Seconds(), "points/s")
}
