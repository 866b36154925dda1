package exporter

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/internal/otlpsink"
)

// benchExport measures the agent's export path per connection: metric
// updates for the connection and one request, and, for the connections
// the sampling keeps, one root span with a hop child and the OTLP/gRPC
// encoding and send to a receiver on loopback (the receiver decodes into
// pdata in the same process, so this over-counts the agent's share).
// Reported per connection and as spans/s and metric updates/s.
func benchExport(b *testing.B, noTraces bool, sampling Sampling) {
	sink, err := otlpsink.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Stop()
	sink.Discard()
	ctx := context.Background()
	e, err := New(ctx, Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: "node1", MetricInterval: time.Hour,
		QueueSize: 1 << 16, NoTraces: noTraces, Sampling: sampling}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	_, server := twoViews()
	// Distinct source ports: distinct trace IDs, so the sampler keeps its
	// share of them (healthy connections: no rule keeps them all).
	paths := make([]path.Path, 4096)
	for i := range paths {
		paths[i] = server
		paths[i].Conn.PodSrc = netip.AddrPortFrom(server.Conn.PodSrc.Addr(), uint16(10000+i))
	}
	req := path.Request{Req: flow.Request{Latency: 3 * time.Millisecond}, Pod: pod, Service: svc}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		e.Path(&paths[i%len(paths)])
		e.Request(&req)
		if i%4096 == 4095 {
			for len(e.queue) > 1<<15 {
				time.Sleep(time.Millisecond)
			}
		}
	}
	if err := e.ForceFlush(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	kept := uint64(b.N) - e.Stats.SampledOut.Load()
	if noTraces {
		kept = 0
	}
	spans := float64(kept) * 2 // root + hop
	b.ReportMetric(spans/b.Elapsed().Seconds(), "spans/s")
	b.ReportMetric(float64(kept)/float64(b.N), "kept/conn")
	b.ReportMetric(float64(b.N)*8/b.Elapsed().Seconds(), "metric-updates/s")
	if q := e.Stats.QueueFull.Load(); q != 0 {
		b.Fatalf("%d connections' spans dropped at the queue", q)
	}
	e.Shutdown(ctx)
	if got, _ := sink.Counts(); got != int(spans) {
		b.Fatalf("receiver got %d spans, want %v", got, spans)
	}
}

// BenchmarkExport exports every connection's spans (sampling off).
func BenchmarkExport(b *testing.B) { benchExport(b, false, Sampling{}) }

// BenchmarkExportSampled exports spans at the agent's default sampling
// (1/16 of healthy connections).
func BenchmarkExportSampled(b *testing.B) {
	benchExport(b, false, Sampling{Enabled: true, Probability: DefaultSpanSampling, SlowThreshold: DefaultSlowThreshold})
}

// BenchmarkExportMetricsOnly is BenchmarkExport without spans.
func BenchmarkExportMetricsOnly(b *testing.B) { benchExport(b, true, Sampling{}) }
