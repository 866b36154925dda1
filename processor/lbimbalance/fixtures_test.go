package lbimbalance

import (
	"context"
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

// t0 is an arbitrary wall-clock origin for fixtures, aligned to a bucket.
var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func ts(t time.Time) pcommon.Timestamp { return pcommon.NewTimestampFromTime(t) }

// podCounters are one pod's cumulative counter values as an agent would
// report them.
type podCounters struct {
	pod, node   string
	conns, reqs float64
	bytes       float64 // split evenly between the two directions
	start       time.Time
}

// agentBatch builds one OTLP batch per node, as lbpath agents send it:
// resource = the agent, data points = the pods on that node, server role.
func agentBatch(at time.Time, ns, svc string, pods []podCounters) pmetric.Metrics {
	md := pmetric.NewMetrics()
	byNode := map[string]pmetric.MetricSlice{}
	for _, pc := range pods {
		ms, ok := byNode[pc.node]
		if !ok {
			rm := md.ResourceMetrics().AppendEmpty()
			rm.Resource().Attributes().PutStr("service.name", "lbpath-agent")
			rm.Resource().Attributes().PutStr("k8s.node.name", pc.node)
			ms = rm.ScopeMetrics().AppendEmpty().Metrics()
			for _, name := range []string{"lbpath.connections", "lbpath.requests", "lbpath.bytes"} {
				m := ms.AppendEmpty()
				m.SetName(name)
				s := m.SetEmptySum()
				s.SetIsMonotonic(true)
				s.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
			}
			byNode[pc.node] = ms
		}
		start := pc.start
		if start.IsZero() {
			start = t0.Add(-5 * time.Second)
		}
		put := func(m pmetric.Metric, v float64, dir string) {
			dp := m.Sum().DataPoints().AppendEmpty()
			dp.SetStartTimestamp(ts(start))
			dp.SetTimestamp(ts(at))
			dp.SetIntValue(int64(v))
			a := dp.Attributes()
			a.PutStr("k8s.namespace.name", ns)
			a.PutStr("k8s.service.name", svc)
			a.PutStr("k8s.pod.name", pc.pod)
			a.PutStr("lbpath.entry", "loadbalancer")
			a.PutStr("lbpath.outcome", "ok")
			a.PutStr("lbpath.role", "server")
			if dir != "" {
				a.PutStr("lbpath.direction", dir)
			}
		}
		put(ms.At(0), pc.conns, "")
		put(ms.At(1), pc.reqs, "")
		put(ms.At(2), pc.bytes/2, "to_server")
		put(ms.At(2), pc.bytes/2, "to_client")
	}
	return md
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

// computed returns the processor's appended ResourceMetrics from the last
// batch, failing the test if there is none.
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

// value finds the data point of metric name whose attributes include all of
// want, and fails the test unless exactly one matches.
func (h *harness) value(name string, want map[string]string) float64 {
	h.t.Helper()
	v, n := lookup(h.computed(), name, want)
	if n != 1 {
		h.t.Fatalf("%s%v: %d matching points, want 1", name, want, n)
	}
	return v
}

func lookup(ms pmetric.MetricSlice, name string, want map[string]string) (float64, int) {
	var v float64
	n := 0
	for i := 0; i < ms.Len(); i++ {
		m := ms.At(i)
		if m.Name() != name {
			continue
		}
		var dps pmetric.NumberDataPointSlice
		switch m.Type() {
		case pmetric.MetricTypeGauge:
			dps = m.Gauge().DataPoints()
		case pmetric.MetricTypeSum:
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

func svcAttrs(kv ...string) map[string]string {
	m := map[string]string{"k8s.namespace.name": "shop", "k8s.service.name": "cart"}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}
