package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/lbpath/lbpath/dashboards/querycheck"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/prometheus"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// expAgent is the metric side of one node's agent for this test: the
// OpenTelemetry SDK with the agents' default latency aggregation (base-2
// exponential, 160 buckets, max scale 20: exporter/views.go) exporting over
// OTLP/gRPC to the collector, in the temporality under test.
type expAgent struct {
	reader *sdkmetric.ManualReader
	exp    sdkmetric.Exporter
	hist   metric.Float64Histogram
}

func newExpAgent(t *testing.T, endpoint, node string, temporality metricdata.Temporality) *expAgent {
	t.Helper()
	ctx := context.Background()
	exp, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(endpoint), otlpmetricgrpc.WithInsecure(),
		otlpmetricgrpc.WithTemporalitySelector(func(sdkmetric.InstrumentKind) metricdata.Temporality { return temporality }))
	if err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader(sdkmetric.WithTemporalitySelector(func(sdkmetric.InstrumentKind) metricdata.Temporality { return temporality }))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader),
		sdkmetric.WithResource(resource.NewSchemaless(attribute.String("service.name", "lbpath-agent"), attribute.String("k8s.node.name", node))),
		sdkmetric.WithView(sdkmetric.NewView(sdkmetric.Instrument{Name: "lbpath.request.duration"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: 20}})))
	t.Cleanup(func() { _ = mp.Shutdown(ctx); _ = exp.Shutdown(ctx) })
	h, err := mp.Meter("github.com/lbpath/lbpath/exporter").Float64Histogram("lbpath.request.duration", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	return &expAgent{reader: reader, exp: exp, hist: h}
}

func (a *expAgent) record(pod, hash string, v float64) {
	a.hist.Record(context.Background(), v, metric.WithAttributes(
		attribute.String("k8s.namespace.name", "shop"),
		attribute.String("k8s.service.name", "checkout"),
		attribute.String("k8s.deployment.name", "checkout"),
		attribute.String("lbpath.pod_template_hash", hash),
		attribute.String("k8s.pod.name", pod),
		attribute.String("lbpath.role", "server")))
}

func (a *expAgent) push(t *testing.T) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := a.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	if err := a.exp.Export(context.Background(), &rm); err != nil {
		t.Fatalf("export to the collector: %v", err)
	}
}

func exactQuantile(vals []float64, q float64) float64 {
	s := slices.Clone(vals)
	slices.Sort(s)
	return s[max(int(math.Ceil(q*float64(len(s))))-1, 0)]
}

// TestExponentialLatencyThroughCollector is issue 13's precise-latency
// acceptance on the real pipeline: two agents (one cumulative, one delta)
// send exponential request-duration histograms over OTLP to the real
// lbpath-collector; a rollout makes every request 25 ms slower. The
// deployregression verdict, scraped by a real Prometheus from the
// collector's Prometheus exporter (native histograms on), reads the
// slowdown within 5 %, and the dashboards' latency quantile over the
// scraped native histograms matches the exact quantile of the requests.
func TestExponentialLatencyThroughCollector(t *testing.T) {
	ctx := context.Background()
	promBin, err := prometheus.EnsureBinary(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	col, err := collectorproc.Start(ctx, testbedtest.CollectorBinary(t), collectorproc.Options{
		Regression: "    before: 1m\n    after: 1m\n    resolution: 2s\n    current_window: 10s\n    min_samples: 40\n    retention: 10m\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(col.Stop)
	prom, err := prometheus.Start(ctx, promBin, prometheus.Options{ScrapeTargets: []string{col.Prometheus}, ScrapeInterval: time.Second, ScrapeNativeHistograms: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prom.Stop)

	agents := []*expAgent{
		newExpAgent(t, col.OTLPGRPC, "node-a", metricdata.CumulativeTemporality),
		newExpAgent(t, col.OTLPGRPC, "node-b", metricdata.DeltaTemporality),
	}
	rng := rand.New(rand.NewPCG(13, 25))
	var before, after []float64
	perPod := map[string][]float64{}
	// Each second every pod answers 12 requests, log-normal around 8 ms;
	// revision bbb answers each 25 ms later. Old pods first, for longer
	// than the processor's first resolution (so bbb is a rollout).
	phase := func(hash string, extra float64, seconds int, into *[]float64) {
		for range seconds {
			for i := range 4 {
				a := agents[i%2]
				for range 12 {
					v := 0.008*math.Exp(0.35*rng.NormFloat64()) + extra
					pod := fmt.Sprintf("checkout-%s-%d", hash, i)
					a.record(pod, hash, v)
					*into = append(*into, v)
					perPod[pod] = append(perPod[pod], v)
				}
			}
			for _, a := range agents {
				a.push(t)
			}
			time.Sleep(time.Second)
		}
	}
	phase("aaa", 0, 12, &before)
	phase("bbb", 0.025, 12, &after)

	p50 := func(revision string) (float64, bool) {
		v, err := prom.Query(ctx, fmt.Sprintf(`lbpath_deploy_latency_p50_seconds{k8s_deployment_name="checkout",lbpath_revision=%q}`, revision), time.Now())
		if err != nil || len(v) != 1 {
			return 0, false
		}
		return float64(v[0].Value), true
	}
	samples := func(revision string) float64 {
		v, err := prom.Query(ctx, fmt.Sprintf(`lbpath_deploy_samples{k8s_deployment_name="checkout",lbpath_revision=%q}`, revision), time.Now())
		if err != nil || len(v) != 1 {
			return 0
		}
		return float64(v[0].Value)
	}
	deadline := time.Now().Add(20 * time.Second)
	for samples("after") < float64(len(after)) && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
	if got := samples("after"); got != float64(len(after)) {
		t.Fatalf("after-side samples %v, want all %d requests of bbb (cumulative and delta agents alike)\n%s", got, len(after), prom.Log())
	}
	// The before window is whole 2 s slots ending before the deploy's slot:
	// the old pods' last export can fall into the deploy's slot.
	if got := samples("before"); got < float64(len(before)-4*12) || got > float64(len(before)) {
		t.Fatalf("before-side samples %v, want %d less at most one export (48)", got, len(before))
	}
	b, okB := p50("before")
	a, okA := p50("after")
	if !okA || !okB {
		t.Fatalf("no deploy p50 in Prometheus (before %v, after %v)", okB, okA)
	}
	want := exactQuantile(after, 0.5) - exactQuantile(before, 0.5)
	t.Logf("deploy verdict p50 before %.2f ms, after %.2f ms: slowdown %.2f ms; exact %.2f ms (requests took 25 ms longer)", b*1e3, a*1e3, (a-b)*1e3, want*1e3)
	if math.Abs((a-b)/0.025-1) > 0.05 {
		t.Errorf("slowdown reads %.2f ms in the deploy verdict, want 25 ms ± 5 %%", (a-b)*1e3)
	}
	if v, err := prom.Query(ctx, `lbpath_deploy_regression{k8s_deployment_name="checkout"}`, time.Now()); err != nil || len(v) != 1 || v[0].Value != 1 {
		t.Errorf("regression flag %v (%v), want 1", v, err)
	}

	// The Pod latency board's per-pod p90, on the scraped native histograms:
	// each pod's within one bucket of the exact p90 of its requests.
	qs, err := querycheck.All()
	if err != nil {
		t.Fatal(err)
	}
	var expr string
	for _, q := range qs {
		if q.Name == "p90 request latency per pod" && q.RefID == "A" {
			expr, err = querycheck.Expand(q.Expr, nil)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if expr == "" {
		t.Fatal("no p90 request latency per pod query")
	}
	v, err := prom.Query(ctx, expr, time.Now())
	if err != nil || len(v) != 8 {
		t.Fatalf("dashboard per-pod p90 over scraped native histograms: %d series, want 8 (%v)\n  %s", len(v), err, expr)
	}
	for _, s := range v {
		pod := string(s.Metric["k8s_pod_name"])
		// rate() counts what a series gained after its first scrape: the
		// exact quantile is over the pod's requests after the ones that
		// first scrape already held (requests are pushed in order).
		first := firstScrapedCount(t, prom, pod)
		exact := exactQuantile(perPod[pod][first:], 0.9)
		t.Logf("%s: dashboard p90 %.2f ms, exact %.2f ms (requests %d…%d)", pod, float64(s.Value)*1e3, exact*1e3, first, len(perPod[pod]))
		if math.Abs(float64(s.Value)/exact-1) > 0.05 {
			t.Errorf("%s: dashboard p90 %.2f ms, exact %.2f ms: more than one bucket off", pod, float64(s.Value)*1e3, exact*1e3)
		}
	}
}

// firstScrapedCount is the observation count of the pod's latency
// histogram in its first scrape.
func firstScrapedCount(t *testing.T, prom *prometheus.Server, pod string) int {
	t.Helper()
	v, _, _, err := prom.API().Query(context.Background(), fmt.Sprintf(`lbpath_request_duration_seconds{k8s_pod_name=%q}[10m]`, pod), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	m, ok := v.(model.Matrix)
	if !ok || len(m) != 1 || len(m[0].Histograms) == 0 {
		t.Fatalf("%s: no native histogram samples: %v", pod, v)
	}
	return int(m[0].Histograms[0].Histogram.Count)
}
