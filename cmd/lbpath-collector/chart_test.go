package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"go.opentelemetry.io/collector/otelcol/otelcoltest"
	"go.opentelemetry.io/collector/pipeline"

	"github.com/lbpath/lbpath/deploy/manifests"
)

// TestChartConfigLoads renders the Helm chart's collector ConfigMap, with and
// without a trace backend, and loads it with exactly this distribution's
// factories. A fresh install must have a traces pipeline: without one the
// OTLP receiver registers no trace service and every agent's span export
// fails (issue 11).
func TestChartConfigLoads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	helm, err := manifests.Helm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name             string
		args             []string
		traceExports     string
		metricsReceivers string
	}{
		{"default", nil, "nop", "[otlp lbsignals]"},
		{"trace backend", []string{"--set", "collector.tracesEndpoint=tempo.tracing.svc:4317"}, "otlp_grpc", "[otlp lbsignals]"},
		{"no lbsignals", []string{"--set", "collector.lbsignals.enabled=false"}, "nop", "[otlp]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := manifests.Render(ctx, helm, manifests.Rendering{File: tc.name, Args: tc.args})
			if err != nil {
				t.Fatal(err)
			}
			cfgFile := collectorConfig(t, out)
			// The chart binds the receivers and the Prometheus exporter to
			// the pod's IP from the downward API.
			t.Setenv("POD_IP", "127.0.0.1")
			f, err := components()
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := otelcoltest.LoadConfigAndValidate(cfgFile, f)
			if err != nil {
				t.Fatalf("chart's collector config: %v", err)
			}
			got := map[string][]string{}
			for id, pl := range cfg.Service.Pipelines {
				for _, e := range pl.Exporters {
					got[id.String()] = append(got[id.String()], e.String())
				}
			}
			if len(got["traces"]) != 1 || got["traces"][0] != tc.traceExports {
				t.Errorf("traces pipeline exporters = %v, want [%s]", got["traces"], tc.traceExports)
			}
			var recv []string
			for _, r := range cfg.Service.Pipelines[pipeline.NewID(pipeline.SignalMetrics)].Receivers {
				recv = append(recv, r.String())
			}
			if fmt.Sprint(recv) != tc.metricsReceivers {
				t.Errorf("metrics pipeline receivers = %v, want %s", recv, tc.metricsReceivers)
			}
			if len(got["metrics"]) != 1 || got["metrics"][0] != "prometheus" {
				t.Errorf("metrics pipeline exporters = %v, want [prometheus]", got["metrics"])
			}
		})
	}
}

// collectorConfig writes the config.yaml of the chart's collector ConfigMap
// found in the rendered manifests to a file and returns its path.
func collectorConfig(t *testing.T, rendered []byte) string {
	t.Helper()
	for _, d := range bytes.Split(rendered, []byte("\n---")) {
		var cm corev1.ConfigMap
		if err := yaml.Unmarshal(d, &cm); err != nil || cm.Kind != "ConfigMap" {
			continue
		}
		cfg, ok := cm.Data["config.yaml"]
		if !ok {
			continue
		}
		p := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Fatal("no ConfigMap with config.yaml in the rendered chart")
	return ""
}
