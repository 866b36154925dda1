package main

import (
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
	for _, want := range []string{"otlp_grpc", "otlp_http", "debug", "prometheus", "prometheus_remote_write"} {
		if _, ok := f.Exporters[component.MustNewType(want)]; !ok {
			t.Errorf("exporter %q missing", want)
		}
	}
	if _, ok := f.Receivers[component.MustNewType("otlp")]; !ok {
		t.Error("receiver otlp missing")
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
	if len(p) != 1 {
		t.Fatalf("%d pipelines, want 1", len(p))
	}
	for _, pl := range p {
		var got []string
		for _, id := range pl.Processors {
			got = append(got, id.String())
		}
		want := []string{"memory_limiter", "lbimbalance", "deployregression", "batch"}
		if len(got) != len(want) {
			t.Fatalf("processors = %v, want %v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("processors = %v, want %v", got, want)
			}
		}
	}
}
