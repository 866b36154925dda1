package exporter

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lbpath/lbpath/internal/otlpsink"
)

// silentCollector is a TCP listener that never accepts: the kernel
// completes the handshake from the backlog, the client sends its request
// (or HTTP/2 preface) and no answer ever comes, so every export waits
// until its deadline. It stands for a collector that is hung. The e2e test
// (TestAgentShutdownUnreachableCollector) uses a real black hole, a
// dropped SYN, with the agent binary.
func silentCollector(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// TestShutdownWithinDeadline: with a collector that never answers, both
// protocols' Shutdown return at the caller's deadline, not the SDK's
// (10 s per export attempt, then retries), and every span is counted as
// failed: exactly the spans of the connections given, since none was
// delivered. The final metrics export is counted too.
func TestShutdownWithinDeadline(t *testing.T) {
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(proto, func(t *testing.T) {
			e, err := New(context.Background(), Config{Endpoint: silentCollector(t), Protocol: proto, Insecure: true,
				Node: "node1", MetricInterval: time.Hour}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			entry, server := twoViews()
			for range 50 {
				e.Path(&entry)  // forward on the entry node: root + lb→node + node→node
				e.Path(&server) // server: root + node→pod
			}
			want := uint64(50 * (spanCount(&entry) + spanCount(&server)))
			if want != 50*(3+2) {
				t.Fatalf("spanCount: entry %d server %d, want 3 and 2", spanCount(&entry), spanCount(&server))
			}
			const budget = 700 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), budget)
			defer cancel()
			start := time.Now()
			err = e.Shutdown(ctx)
			took := time.Since(start)
			if err == nil {
				t.Error("Shutdown reported success with nothing delivered")
			}
			// The deadline plus scheduling: far below one SDK export timeout.
			if took > budget+500*time.Millisecond {
				t.Errorf("Shutdown took %v with a %v budget", took, budget)
			}
			if got := e.Stats.SpansFailed.Load(); got != want {
				t.Errorf("spans_failed = %d, want %d (every span of the 100 connections)", got, want)
			}
			if got := e.Stats.MetricsFailed.Load(); got != 1 {
				t.Errorf("metric_exports_failed = %d, want 1 (the final export)", got)
			}
		})
	}
}

// TestShutdownCountsQueuedConnections: with the SDK's blocking batcher full
// (4096 spans) and its export hanging, the worker is stuck and connections
// wait in the exporter's own queue. At the deadline Shutdown counts those
// too: every span of every accepted connection is failed, none is lost
// without a count.
func TestShutdownCountsQueuedConnections(t *testing.T) {
	var logs bytes.Buffer
	e, err := New(context.Background(), Config{Endpoint: silentCollector(t), Insecure: true, Node: "node1",
		MetricInterval: time.Hour, QueueSize: 1 << 14, NoMetrics: true}, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, server := twoViews()
	const n = 6000 // 12000 spans: far more than the batcher's 4096 + one 512 batch in flight
	for range n {
		e.Path(&server)
	}
	if q := e.Stats.QueueFull.Load(); q != 0 {
		t.Fatalf("%d connections dropped at the queue; the test needs them all queued", q)
	}
	time.Sleep(200 * time.Millisecond) // let the worker fill the batcher and block
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	e.Shutdown(ctx)
	if took := time.Since(start); took > time.Second {
		t.Errorf("Shutdown took %v with a 500ms budget", took)
	}
	if len(e.queue) != 0 {
		t.Errorf("%d connections left in the queue uncounted", len(e.queue))
	}
	if got, want := e.Stats.SpansFailed.Load(), uint64(2*n); got != want {
		t.Errorf("spans_failed = %d, want %d", got, want)
	}
	// The case under test: connections were still queued at the deadline.
	if !strings.Contains(logs.String(), "connections_still_queued=") || strings.Contains(logs.String(), "connections_still_queued=0 ") {
		t.Errorf("no connection was left queued, the queue path was not exercised: %s", logs.String())
	}
}

// TestShutdownDeliversWhenReachable: with a working collector nothing is
// counted as failed and every span arrives; the ledger does not invent
// losses.
func TestShutdownDeliversWhenReachable(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	e := newExporter(t, sink, "node1", "grpc")
	entry, server := twoViews()
	for range 300 {
		e.Path(&entry)
		e.Path(&server)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if f := e.Stats.SpansFailed.Load() + e.Stats.MetricsFailed.Load(); f != 0 {
		t.Errorf("%d failures counted with a working collector", f)
	}
	if spans, _ := sink.Counts(); spans != 300*5 {
		t.Errorf("collector got %d spans, want %d", spans, 300*5)
	}
}
