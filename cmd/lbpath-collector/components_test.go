package main

import (
	"fmt"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/otelcol/otelcoltest"
)

func TestComponentsHaveExpectedTypes(t *testing.T) {
	f, err := components()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"batch", "memory_limiter", "lbimbalance", "deployregression"} {
		if _, ok := f.Processors[component.MustNewType(want)]; !ok {
			t.Errorf("processor %q missing", want)
		}
	}
	for _, want := range []string{"otlp_grpc", "otlp_http", "debug", "nop", "prometheus", "prometheus_remote_write"} {
		if _, ok := f.Exporters[component.MustNewType(want)]; !ok {
			t.Errorf("exporter %q missing", want)
		}
	}
	for _, want := range []string{"otlp", "lbsignals"} {
		if _, ok := f.Receivers[component.MustNewType(want)]; !ok {
			t.Errorf("receiver %q missing", want)
		}
	}
}

// TestSampleConfigLoads keeps deploy/collector/config.yaml from rotting:
// it must load and validate against exactly this distribution's factories.
func TestSampleConfigLoads(t *testing.T) {
	f, err := components()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := otelcoltest.LoadConfigAndValidate(filepath.Join("..", "..", "deploy", "collector", "config.yaml"), f)
	if err != nil {
		t.Fatalf("sample config: %v", err)
	}
	p := cfg.Service.Pipelines
	if len(p) != 2 {
		t.Fatalf("%d pipelines, want traces and metrics", len(p))
	}
	want := map[string][]string{
		"traces":  {"memory_limiter", "batch"},
		"metrics": {"memory_limiter", "lbimbalance", "deployregression", "batch"},
	}
	for id, pl := range p {
		var got []string
		for _, pid := range pl.Processors {
			got = append(got, pid.String())
		}
		if fmt.Sprint(got) != fmt.Sprint(want[id.String()]) {
			t.Errorf("pipeline %s processors = %v, want %v", id, got, want[id.String()])
		}
	}
}
