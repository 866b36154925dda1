package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/health"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
)

// TestSeriesFamilies: a real exporter limited to one request set gets
// requests from three pods; /metrics shows the two folded requests (and
// their durations) under lbpath_agent_series_overflow_total, the series
// exported by the last collection, and no reset.
func TestSeriesFamilies(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Stop)
	exp, err := exporter.New(context.Background(), exporter.Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: "n1",
		MetricInterval: time.Hour, NoTraces: true, MaxSeries: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exp.Shutdown(context.Background()) })
	svc := &kube.Service{Namespace: "default", Name: "web"}
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		exp.Request(&path.Request{Req: flow.Request{Latency: time.Millisecond},
			Pod: &kube.Pod{Namespace: "default", Name: name, Node: "n1"}, Service: svc})
	}
	if err := exp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := health.WriteText(&b, seriesFamilies(exp)); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		`lbpath_agent_series_overflow_total{lbpath_metric="lbpath.requests"} 2` + "\n",
		`lbpath_agent_series_overflow_total{lbpath_metric="lbpath.request.duration"} 2` + "\n",
		`lbpath_agent_series_overflow_total{lbpath_metric="lbpath.connections"} 0` + "\n",
		// one named series and the overflow series
		`lbpath_agent_series{lbpath_metric="lbpath.requests"} 2` + "\n",
		"lbpath_agent_series_resets_total 0\n",
		"# TYPE lbpath_agent_series gauge\n",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("no %q in\n%s", line, b.String())
		}
	}
}
