package exporter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbpath/lbpath/internal/otlpsink"
)

// TestEndpointValidate: every endpoint the SDK would accept and then fail
// to export to (or silently replace with localhost:4317) is refused by
// Validate, naming the flag or variable; the forms that work pass.
func TestEndpointValidate(t *testing.T) {
	for _, v := range envEndpoints {
		t.Setenv(v, "")
	}
	t.Setenv(envProtocol, "")
	bad := []struct {
		cfg  Config
		env  map[string]string
		name string // the flag or variable the message must name
	}{
		{Config{Endpoint: "http://[::1"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "http://[::1", Protocol: "http/protobuf"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "http://collector:4317"}, nil, "otlp-endpoint"}, // a URL for grpc
		{Config{Endpoint: "collector"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "collector:0"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "collector:otlp"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "collector:65536"}, nil, "otlp-endpoint"},
		{Config{Endpoint: ":4317"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "coll ector:4317"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "collector..svc:4317"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "ftp://collector:4318", Protocol: "http/protobuf"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "http://user:secret@collector:4318", Protocol: "http/protobuf"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "http://collector:4318?x=1", Protocol: "http/protobuf"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "http://collector:4318/v1/traces", Protocol: "http/protobuf"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "http://collector:99999", Protocol: "http/protobuf"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "http://:4318", Protocol: "http/protobuf"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "https://collector:4318", Protocol: "http/protobuf", Insecure: true}, nil, "otlp-insecure"},
		{Config{Endpoint: "http://collector:4318", Protocol: "http/protobuf", CAFile: "/ca.pem"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "collector"}, nil, "otlp-endpoint"},
		// Kubernetes' Service link form: only tcp://, only for grpc; a
		// variable the kubelet did not expand is named as such.
		{Config{Endpoint: "tcp://10.96.0.5"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "udp://10.96.0.5:4317"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "tcp://10.96.0.5:4318", Protocol: "http/protobuf"}, nil, "otlp-endpoint"},
		{Config{Endpoint: "$(LBPATH_COLLECTOR_PORT_4317_TCP)"}, nil, "otlp-endpoint"},
		// The variables the SDK reads when no endpoint is given.
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1"}, "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "10.0.0.1:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http//collector:4317"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://"}, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"},
		{Config{Endpoint: "collector:4317"}, map[string]string{envProtocol: "http/json"}, envProtocol},
		{Config{Endpoint: "collector:4317"}, map[string]string{envProtocol: "udp"}, envProtocol},
		// With the protocol from the variable, the endpoint is checked as that protocol's.
		{Config{Endpoint: "http://[::1"}, map[string]string{envProtocol: "http/protobuf"}, "otlp-endpoint"},
		// Other fields checked alongside.
		{Config{MetricInterval: time.Millisecond}, nil, "metric-interval"},
		{Config{QueueSize: 1 << 30}, nil, "export-queue"},
		{Config{QueueSize: -1}, nil, "export-queue"},
	}
	for _, tc := range bad {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		err := tc.cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.name+":") {
			t.Errorf("%+v env %v: err %v, want it to start with %s:", tc.cfg, tc.env, err, tc.name)
		}
		for k := range tc.env {
			t.Setenv(k, "")
		}
	}
	good := []struct {
		cfg Config
		env map[string]string
	}{
		{Config{Endpoint: "collector:4317"}, nil},
		{Config{Endpoint: "lbpath-collector.lbpath.svc:4317"}, nil},
		{Config{Endpoint: "10.0.0.1:4317"}, nil},
		{Config{Endpoint: "[::1]:4317"}, nil},
		{Config{Endpoint: "tcp://10.96.0.5:4317"}, nil},
		{Config{Endpoint: "tcp://[fd00:10:96::5]:4317"}, nil},
		{Config{Endpoint: "collector:4318", Protocol: "http/protobuf"}, nil},
		{Config{Endpoint: "http://collector:4318", Protocol: "http/protobuf"}, nil},
		{Config{Endpoint: "https://otlp.example.com/prefix", Protocol: "http/protobuf"}, nil},
		{Config{Endpoint: "http://[::1]:4318", Protocol: "http/protobuf"}, nil},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector:4318/v1/traces"}},
		{Config{Endpoint: "http://collector:4318"}, map[string]string{envProtocol: "http/protobuf"}},
	}
	for _, tc := range good {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		if err := tc.cfg.Validate(); err != nil {
			t.Errorf("%+v env %v: %v", tc.cfg, tc.env, err)
		}
		for k := range tc.env {
			t.Setenv(k, "")
		}
	}
}

func TestParseHeadersRefusesWhatGRPCRefuses(t *testing.T) {
	for _, s := range []string{"a=b,broken", "bad key=v", "grpc-timeout=1", "k=v\x01"} {
		if _, err := ParseHeaders(s); err == nil || !strings.HasPrefix(err.Error(), "otlp-headers:") {
			t.Errorf("%q: err %v, want an otlp-headers error", s, err)
		}
	}
	h, err := ParseHeaders("Authorization=Bearer abc, x-tenant = t1")
	if err != nil || h["Authorization"] != "Bearer abc" || h["x-tenant"] != "t1" {
		t.Errorf("valid headers: %v %v", h, err)
	}
}

// TestHTTPBaseURL: a URL given for http/protobuf is a base, like the SDK's
// OTEL_EXPORTER_OTLP_ENDPOINT, and both signals reach a real OTLP/HTTP
// receiver under it (before, the URL was used as is for both signals, so a
// URL without the signal path exported to "/" and failed).
func TestHTTPBaseURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"collector:4318", "http://collector:4318/v1/traces"},
		{"http://collector:4318", "http://collector:4318/v1/traces"},
		{"https://otlp.example.com/prefix/", "https://otlp.example.com/prefix/v1/traces"},
	} {
		if got := httpURL(tc.in, true, "/v1/traces"); got != tc.want {
			t.Errorf("httpURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	e, err := New(context.Background(), Config{Endpoint: "http://" + sink.HTTPAddr, Protocol: "http/protobuf",
		Node: "node1", MetricInterval: time.Hour, Timeout: 2 * time.Second}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, server := twoViews()
	e.Path(&server)
	if err := e.ForceFlush(context.Background()); err != nil {
		t.Fatalf("flush to a base URL: %v", err)
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if spans, points := sink.Counts(); spans != 2 || points == 0 {
		t.Errorf("receiver got %d spans and %d points, want 2 spans and some points", spans, points)
	}
	if f := e.Stats.SpansFailed.Load() + e.Stats.MetricsFailed.Load(); f != 0 {
		t.Errorf("%d failed exports", f)
	}
}

// TestEnvValidate: the OTEL_EXPORTER_OTLP_* variables the SDK would read
// and ignore when malformed are refused, naming the variable; good values
// pass.
func TestEnvValidate(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	vars := []string{}
	for _, sig := range envSignals {
		for _, v := range []string{"INSECURE", "COMPRESSION", "HEADERS", "CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY", "PROTOCOL"} {
			vars = append(vars, "OTEL_EXPORTER_OTLP_"+sig+v)
		}
	}
	clear := func() {
		for _, v := range vars {
			t.Setenv(v, "")
		}
	}
	clear()
	for _, tc := range []struct{ name, value string }{
		{"OTEL_EXPORTER_OTLP_INSECURE", "yes"},
		{"OTEL_EXPORTER_OTLP_TRACES_INSECURE", "1"},
		{"OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"},
		{"OTEL_EXPORTER_OTLP_HEADERS", "api-key"},
		{"OTEL_EXPORTER_OTLP_METRICS_HEADERS", "bad key=1"},
		{"OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"},
		{"OTEL_EXPORTER_OTLP_CERTIFICATE", filepath.Join(dir, "absent.pem")},
		{"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", notPEM},
		{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", notPEM},
		{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"},
	} {
		clear()
		t.Setenv(tc.name, tc.value)
		err := (&Config{}).Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.name) {
			t.Errorf("%s=%q: err %v, want it to name the variable", tc.name, tc.value, err)
		}
	}
	clear()
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "True")
	t.Setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc,x-tenant=t1")
	if err := (&Config{}).Validate(); err != nil {
		t.Errorf("good variables: %v", err)
	}
}
