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

// BenchmarkExport measures the agent's export path per connection: one
// root span with a hop child and diagnosis events, six metric updates, and
// the OTLP/gRPC encoding and send to a receiver on loopback (the receiver
// decodes into pdata in the same process, so this over-counts the agent's
// share). Reported per connection and as spans/s and metric updates/s.
func BenchmarkExport(b *testing.B) {
	sink, err := otlpsink.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Stop()
	sink.Discard()
	ctx := context.Background()
	e, err := New(ctx, Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: "node1", MetricInterval: time.Hour, QueueSize: 1 << 16, NoTraces: benchNoTraces}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	_, server := twoViews()
	paths := make([]path.Path, 1024)
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
	spans := float64(b.N) * 2 // root + hop
	b.ReportMetric(spans/b.Elapsed().Seconds(), "spans/s")
	b.ReportMetric(float64(b.N)*8/b.Elapsed().Seconds(), "metric-updates/s")
	if q := e.Stats.QueueFull.Load(); q != 0 {
		b.Fatalf("%d connections dropped at the queue", q)
	}
	e.Shutdown(ctx)
	if got, _ := sink.Counts(); !benchNoTraces && got != 2*b.N {
		b.Fatalf("receiver got %d spans, want %d", got, 2*b.N)
	}
}

var benchNoTraces bool

// BenchmarkExportMetricsOnly is BenchmarkExport without spans.
func BenchmarkExportMetricsOnly(b *testing.B) {
	benchNoTraces = true
	defer func() { benchNoTraces = false }()
	BenchmarkExport(b)
}
