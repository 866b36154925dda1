package exporter

import (
	"context"
	"fmt"
	"testing"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/internal/otlpsink"
)

// lbpath.loadbalancer.health_probes crosses real OTLP as a cumulative
// counter per Service and outcome, with the reporting node in the
// resource and on the point; nothing is reported before SetHealthProbes.
func TestHealthProbesOverOTLP(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	ctx := context.Background()
	e := newExporter(t, sink, "node1", "grpc")
	if err := e.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range sink.Points() {
		if p.Metric == MetricHealthProbes {
			t.Fatalf("reported before SetHealthProbes: %+v", p)
		}
	}
	e.SetHealthProbes(func() []path.ProbeCount {
		return []path.ProbeCount{
			{Namespace: "shop", Service: "edge", Outcome: flow.OutcomeOK, Count: 7},
			{Namespace: "shop", Service: "edge", Outcome: flow.OutcomeRefused, Count: 2},
			{Namespace: "shop", Service: "api", Outcome: flow.OutcomeOK},
		}
	})
	if err := e.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, p := range sink.Points() {
		if p.Metric != MetricHealthProbes {
			continue
		}
		if p.Delta || p.Resource["k8s.node.name"] != "node1" || p.Attrs["k8s.node.name"] != "node1" {
			t.Errorf("point %+v: want cumulative, node1 in resource and point", p)
		}
		got[fmt.Sprint(p.Attrs["k8s.namespace.name"], "/", p.Attrs["k8s.service.name"], " ", p.Attrs["lbpath.outcome"])] = p.Value
	}
	want := map[string]float64{"shop/edge ok": 7, "shop/edge refused": 2, "shop/api ok": 0}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("points %v, want %v", got, want)
	}
}
