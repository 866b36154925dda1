package prometheus

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/lbpath/lbpath/dashboards/querycheck"
	"github.com/lbpath/lbpath/internal/testenv"
)

func TestVersionMatchesGoMod(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(moduleRoot(), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/prometheus/prometheus (v\S+)`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("go.mod does not require github.com/prometheus/prometheus")
	}
	if string(m[1]) != Version {
		t.Fatalf("go.mod requires prometheus %s, Version is %s: update Version (the cache directory is keyed by it)", m[1], Version)
	}
}

func TestConfig(t *testing.T) {
	cfg := Options{RuleFiles: []string{"/r/a.yaml"}, ScrapeTargets: []string{"127.0.0.1:9464"}, OutOfOrderTimeWindow: 10 * time.Minute}.config()
	for _, want := range []string{
		`promote_resource_attributes: ["k8s.cluster.name", "service.name"]`,
		`rule_files: ["/r/a.yaml"]`,
		`targets: ["127.0.0.1:9464"]`,
		"evaluation_interval: 1s",
		"out_of_order_time_window: 10m",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(cfg, "k8s.node.name") {
		t.Errorf("k8s.node.name promoted by default (collides with the pod's node):\n%s", cfg)
	}
	if cfg := (Options{PromoteResourceAttributes: []string{}}).config(); strings.Contains(cfg, "otlp:") {
		t.Errorf("empty promotion list still renders an otlp block:\n%s", cfg)
	}
}

// startForTest builds (once) and starts a server that is stopped when t
// ends. Without a cached binary and without the Go module proxy the build
// fails: that skips (or fails under LBPATH_REQUIRE_E2E=1).
func startForTest(t *testing.T, opts Options) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs a Prometheus server; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	bin, err := EnsureBinary(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		testenv.Unavailable(t, "cannot build the Prometheus server: "+err.Error())
	}
	s, err := Start(ctx, bin, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// TestOTLPRoundTrip pushes lbpath-shaped metrics with the OTel SDK, as the
// agent and collector do, and reads them back under the names the
// dashboards' catalog derives from lbpath's sources.
func TestOTLPRoundTrip(t *testing.T) {
	cat, err := querycheck.LoadCatalog(moduleRoot())
	if err != nil {
		t.Fatal(err)
	}
	s := startForTest(t, Options{})
	ctx := context.Background()

	exp, err := otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(s.OTLPMetricsURL()))
	if err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	res := resource.NewSchemaless(
		attribute.String("service.name", "lbpath-agent"),
		attribute.String("k8s.node.name", "node-agent"), // the reporting node: must not become the label
		attribute.String("k8s.cluster.name", "kind-test"),
	)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)
	m := mp.Meter("github.com/lbpath/lbpath/exporter")
	conns, _ := m.Int64Counter("lbpath.connections", metric.WithUnit("{connection}"))
	lat, _ := m.Float64Histogram("lbpath.request.duration", metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.01, 0.1, 1))
	share, _ := m.Float64Gauge("lbpath.lb.share", metric.WithUnit("1"))
	pod := attribute.NewSet(
		attribute.String("k8s.namespace.name", "shop"), attribute.String("k8s.service.name", "web"),
		attribute.String("k8s.pod.name", "web-1"), attribute.String("k8s.node.name", "node-b"),
		attribute.String("lbpath.role", "server"), attribute.String("lbpath.outcome", "ok"),
		attribute.String("lbpath.entry", "loadbalancer"), attribute.Bool("lbpath.snat", true))
	conns.Add(ctx, 42, metric.WithAttributeSet(pod))
	for range 100 {
		lat.Record(ctx, 0.05, metric.WithAttributeSet(pod))
	}
	share.Record(ctx, 0.75, metric.WithAttributes(attribute.String("k8s.pod.name", "web-1"), attribute.String("lbpath.signal", "connections")))

	push := func() {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		if err := exp.Export(ctx, &rm); err != nil {
			t.Fatalf("OTLP push to Prometheus: %v\n%s", err, s.Log())
		}
	}
	push()

	at := time.Now()
	for _, c := range []struct {
		name, expr string
		want       float64
		labels     map[string]string
	}{
		{"lbpath_connections_total", `lbpath_connections_total{k8s_pod_name="web-1"}`, 42,
			map[string]string{"k8s_node_name": "node-b", "k8s_cluster_name": "kind-test", "job": "lbpath-agent", "lbpath_snat": "true"}},
		{"lbpath_request_duration_seconds_count", `lbpath_request_duration_seconds_count{k8s_service_name="web"}`, 100, nil},
		{"lbpath_request_duration_seconds_bucket", `lbpath_request_duration_seconds_bucket{le="0.1"}`, 100, nil},
		{"lbpath_lb_share_ratio", `lbpath_lb_share_ratio{lbpath_signal="connections"}`, 0.75, nil},
	} {
		if cat.Metrics[c.name] == nil {
			t.Errorf("%s is not a name lbpath declares (catalog)", c.name)
		}
		v, err := s.Query(ctx, c.expr, at)
		if err != nil {
			t.Fatal(err)
		}
		if len(v) != 1 {
			t.Fatalf("%s: %d series, want 1: %v\n%s", c.expr, len(v), v, s.Log())
		}
		if float64(v[0].Value) != c.want {
			t.Errorf("%s = %v, want %v", c.expr, v[0].Value, c.want)
		}
		for k, want := range c.labels {
			if got := string(v[0].Metric[model.LabelName(k)]); got != want {
				t.Errorf("%s: label %s = %q, want %q (all: %v)", c.expr, k, got, want, v[0].Metric)
			}
		}
	}

	// A second push moves the counter; rate() over the two samples is the
	// query shape every lbpath panel and the explain command use.
	time.Sleep(1100 * time.Millisecond)
	conns.Add(ctx, 10, metric.WithAttributeSet(pod))
	push()
	v, err := s.Query(ctx, `increase(lbpath_connections_total[1m])`, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 1 || v[0].Value <= 0 {
		t.Fatalf("increase over two pushes: %v", v)
	}
}

func TestRuleFilesLoad(t *testing.T) {
	rules := filepath.Join(moduleRoot(), "deploy", "rules", "lbpath-rules.yaml")
	if _, err := os.Stat(rules); err != nil {
		t.Skipf("no rules file to load: %v", err)
	}
	s := startForTest(t, Options{RuleFiles: []string{rules}})
	groups, err := s.API().Rules(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups.Groups) == 0 {
		t.Fatalf("no rule groups loaded from %s\n%s", rules, s.Log())
	}
}
