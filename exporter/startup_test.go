package exporter

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/lbpath/lbpath/internal/otlpsink"
)

// TestCollectorStartingLateLosesNothing: spans exported while the
// collector's address still refuses connections (agents start before the
// collector at install) are delivered once it listens, and none is counted
// as failed. The collector is the real OTLP sink behind a port that first
// refuses, then forwards.
func TestCollectorStartingLateLosesNothing(t *testing.T) {
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(proto, func(t *testing.T) {
			sink, err := otlpsink.Start()
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Stop()
			target := sink.GRPCAddr
			if proto != "grpc" {
				target = sink.HTTPAddr
			}
			addr := lateListener(t, target, 1500*time.Millisecond)
			e, err := New(context.Background(), Config{Endpoint: addr, Protocol: proto, Insecure: true,
				Node: "node1", MetricInterval: time.Hour, NoMetrics: true}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			entry, server := twoViews()
			for range 10 {
				e.Path(&entry)
				e.Path(&server)
			}
			want := 10 * (spanCount(&entry) + spanCount(&server))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := e.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if got := e.Stats.SpansFailed.Load(); got != 0 {
				t.Errorf("spans_failed = %d, want 0 (the collector came up within the export's deadline)", got)
			}
			if spans, _ := sink.Counts(); spans != want {
				t.Errorf("collector got %d spans, want %d", spans, want)
			}
		})
	}
}

// lateListener returns an address that refuses connections for delay,
// then forwards each connection to target.
func lateListener(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on, until the listener below
	go func() {
		time.Sleep(delay)
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			t.Errorf("late listener: %v", err)
			return
		}
		t.Cleanup(func() { ln.Close() })
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp4", target)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				io.Copy(c, u)
			}()
		}
	}()
	return addr
}
