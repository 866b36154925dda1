package explain

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed/prometheus"
)

// The request-duration buckets of exporter/instruments.go, so that the
// histograms Prometheus stores look like the agents'.
var requestBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10}

// source is one OTLP producer: an agent on a node, or the collector.
type source struct {
	reader                   *sdkmetric.ManualReader
	mp                       *sdkmetric.MeterProvider
	conns, requests, bytes   metric.Int64Counter
	latency                  metric.Float64Histogram
	share, hot, pods, nshare metric.Float64Gauge
	dep                      map[string]metric.Float64Gauge
	ingReqs                  metric.Int64Counter
	ingLatency               metric.Float64Histogram
}

// fleet feeds Prometheus the way a cluster does: one resource per agent
// (service.name lbpath-agent, k8s.node.name the agent's node) and one for
// the lbpath-collector's processors, all with the OTel SDK over OTLP/HTTP.
//
// With exponential set, lbpath.request.duration is a base-2 exponential
// histogram as the agents make it by default (exporter/views.go: at most 160
// buckets, max scale 20), which Prometheus' OTLP receiver stores as a
// native histogram; otherwise explicit buckets as with
// --latency-histogram=explicit.
type fleet struct {
	t           *testing.T
	exp         sdkmetric.Exporter
	sources     map[string]*source
	exponential bool
}

func newFleet(t *testing.T, url string, exponential bool) *fleet {
	exp, err := otlpmetrichttp.New(context.Background(), otlpmetrichttp.WithEndpointURL(url))
	if err != nil {
		t.Fatal(err)
	}
	return &fleet{t: t, exp: exp, sources: map[string]*source{}, exponential: exponential}
}

func (f *fleet) source(service, node string) *source {
	key := service + "/" + node
	if s := f.sources[key]; s != nil {
		return s
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", service), attribute.String("k8s.cluster.name", "test")}
	if node != "" {
		attrs = append(attrs, attribute.String("k8s.node.name", node))
	}
	s := &source{reader: sdkmetric.NewManualReader(), dep: map[string]metric.Float64Gauge{}}
	opts := []sdkmetric.Option{sdkmetric.WithResource(resource.NewSchemaless(attrs...)), sdkmetric.WithReader(s.reader)}
	if f.exponential {
		opts = append(opts, sdkmetric.WithView(sdkmetric.NewView(sdkmetric.Instrument{Name: "lbpath.request.duration"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: 20}})))
	}
	s.mp = sdkmetric.NewMeterProvider(opts...)
	m := s.mp.Meter("lbpath-test")
	must := func(err error) {
		if err != nil {
			f.t.Fatal(err)
		}
	}
	var err error
	s.conns, err = m.Int64Counter("lbpath.connections", metric.WithUnit("{connection}"))
	must(err)
	s.requests, err = m.Int64Counter("lbpath.requests", metric.WithUnit("{request}"))
	must(err)
	s.bytes, err = m.Int64Counter("lbpath.bytes", metric.WithUnit("By"))
	must(err)
	s.latency, err = m.Float64Histogram("lbpath.request.duration", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(requestBuckets...))
	must(err)
	s.share, err = m.Float64Gauge("lbpath.lb.share", metric.WithUnit("1"))
	must(err)
	s.hot, err = m.Float64Gauge("lbpath.lb.hot")
	must(err)
	s.pods, err = m.Float64Gauge("lbpath.lb.pods", metric.WithUnit("{pod}"))
	must(err)
	s.nshare, err = m.Float64Gauge("lbpath.lb.node_share", metric.WithUnit("1"))
	must(err)
	s.ingReqs, err = m.Int64Counter("lbpath.ingress.requests", metric.WithUnit("{request}"))
	must(err)
	s.ingLatency, err = m.Float64Histogram("lbpath.ingress.request.duration", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(requestBuckets...))
	must(err)
	for _, d := range []struct{ name, unit string }{
		{"lbpath.deploy.latency.p50", "s"}, {"lbpath.deploy.latency.p90", "s"}, {"lbpath.deploy.latency.p99", "s"},
		{"lbpath.deploy.regression", ""}, {"lbpath.deploy.p_value", ""}, {"lbpath.deploy.time_since", "s"},
		{"lbpath.deploy.samples", "{request}"},
	} {
		s.dep[d.name], err = m.Float64Gauge(d.name, metric.WithUnit(d.unit))
		must(err)
	}
	f.sources[key] = s
	return s
}

func (f *fleet) agent(node string) *source { return f.source("lbpath-agent", node) }
func (f *fleet) collector() *source        { return f.source("lbpath-collector", "") }

func (f *fleet) push() {
	ctx := context.Background()
	for k, s := range f.sources {
		var rm metricdata.ResourceMetrics
		if err := s.reader.Collect(ctx, &rm); err != nil {
			f.t.Fatalf("collect %s: %v", k, err)
		}
		if err := f.exp.Export(ctx, &rm); err != nil {
			f.t.Fatalf("push %s to Prometheus: %v", k, err)
		}
	}
}

// pod is a pod behind a Service.
type pod struct{ ns, svc, name, node, deploy, hash string }

func (p pod) attrs() []attribute.KeyValue {
	a := []attribute.KeyValue{attribute.String("k8s.namespace.name", p.ns), attribute.String("k8s.service.name", p.svc)}
	if p.name != "" {
		a = append(a, attribute.String("k8s.pod.name", p.name), attribute.String("k8s.node.name", p.node),
			attribute.String("k8s.deployment.name", p.deploy), attribute.String("k8s.replicaset.name", p.deploy+"-"+p.hash),
			attribute.String("lbpath.pod_template_hash", p.hash))
	}
	return a
}

// view is one node's record of connections, as exporter/instruments.go
// labels them.
type view struct {
	role, outcome, entry, entryNode string
	snat, cross                     bool
}

// conn adds n connections of pod seen by the agent on node.
func (f *fleet) conn(node string, p pod, v view, n int64) {
	a := append(p.attrs(), attribute.String("lbpath.role", v.role), attribute.String("lbpath.outcome", v.outcome),
		attribute.Bool("lbpath.snat", v.snat), attribute.Bool("lbpath.cross_node", v.cross))
	if v.entry != "" {
		a = append(a, attribute.String("lbpath.entry", v.entry))
	}
	if v.entryNode != "" {
		a = append(a, attribute.String("lbpath.entry_node", v.entryNode))
	}
	s := f.agent(node)
	s.conns.Add(context.Background(), n, metric.WithAttributes(a...))
	if v.role == "server" {
		s.bytes.Add(context.Background(), n*1000, metric.WithAttributes(append(a, attribute.String("lbpath.direction", "to_client"))...))
	}
}

// requests adds n requests of latency lat at pod (on its own node's agent).
func (f *fleet) requests(p pod, n int, lat float64) {
	s := f.agent(p.node)
	a := metric.WithAttributes(p.attrs()...)
	s.requests.Add(context.Background(), int64(n), a)
	for range n {
		s.latency.Record(context.Background(), lat, a)
	}
}

// ingress adds, behind proxy pod px, n requests of latency behind at
// backend pod p (counted at p's node) routed by route of Ingress shop/shop.
func (f *fleet) ingress(px, p pod, route string, n int, behind float64) {
	a := metric.WithAttributes(attribute.String("lbpath.ingress.name", "shop/shop"), attribute.String("lbpath.ingress.class", "nginx"),
		attribute.String("lbpath.ingress.route", route), attribute.String("lbpath.ingress.proxy_pod", px.ns+"/"+px.name),
		attribute.String("k8s.namespace.name", p.ns), attribute.String("k8s.service.name", p.svc), attribute.String("k8s.pod.name", p.name))
	s := f.agent(p.node)
	s.ingReqs.Add(context.Background(), int64(n), a)
	for range n {
		s.ingLatency.Record(context.Background(), behind, a)
	}
}

func svcAttrs(ns, svc string, kv ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributes(append([]attribute.KeyValue{attribute.String("k8s.namespace.name", ns), attribute.String("k8s.service.name", svc)}, kv...)...)
}

// processors records what lbimbalance would emit for a Service's pods.
func (f *fleet) processors(pods []pod, connShare []float64, hot []bool) {
	c := f.collector()
	ctx := context.Background()
	nodes := map[string]float64{}
	for i, p := range pods {
		for _, sig := range []string{"connections", "requests", "bytes"} {
			c.share.Record(ctx, connShare[i], svcAttrs(p.ns, p.svc, attribute.String("k8s.pod.name", p.name),
				attribute.String("k8s.node.name", p.node), attribute.String("lbpath.signal", sig)))
		}
		h := 0.0
		if hot[i] {
			h = 1
		}
		c.hot.Record(ctx, h, svcAttrs(p.ns, p.svc, attribute.String("k8s.pod.name", p.name), attribute.String("k8s.node.name", p.node)))
		nodes[p.node] += connShare[i]
	}
	c.pods.Record(ctx, float64(len(pods)), svcAttrs(pods[0].ns, pods[0].svc))
	for n, s := range nodes {
		c.nshare.Record(ctx, s, svcAttrs(pods[0].ns, pods[0].svc, attribute.String("k8s.node.name", n), attribute.String("lbpath.signal", "connections")))
	}
}

// deploy records what deployregression would emit for a rollout.
func (f *fleet) deploy(ns, dep, from, to string, before, after [3]float64, regression bool, p, since float64) {
	c := f.collector()
	ctx := context.Background()
	at := func(kv ...attribute.KeyValue) metric.MeasurementOption {
		return metric.WithAttributes(append([]attribute.KeyValue{attribute.String("k8s.namespace.name", ns), attribute.String("k8s.deployment.name", dep)}, kv...)...)
	}
	for i, q := range []string{"p50", "p90", "p99"} {
		c.dep["lbpath.deploy.latency."+q].Record(ctx, before[i], at(attribute.String("lbpath.revision", "before"), attribute.String("lbpath.pod_template_hash", from)))
		c.dep["lbpath.deploy.latency."+q].Record(ctx, after[i], at(attribute.String("lbpath.revision", "after"), attribute.String("lbpath.pod_template_hash", to)))
	}
	c.dep["lbpath.deploy.samples"].Record(ctx, 1234, at(attribute.String("lbpath.revision", "before")))
	c.dep["lbpath.deploy.samples"].Record(ctx, 567, at(attribute.String("lbpath.revision", "after")))
	r := 0.0
	if regression {
		r = 1
	}
	c.dep["lbpath.deploy.regression"].Record(ctx, r, at())
	c.dep["lbpath.deploy.p_value"].Record(ctx, p, at())
	c.dep["lbpath.deploy.time_since"].Record(ctx, since, at())
}

// scenarios feeds three Services:
//   - shop/web: LoadBalancer, externalTrafficPolicy Cluster (every
//     connection SNATed), web-1 takes 70% of connections, and its last
//     rollout doubled p90;
//   - shop/api: LoadBalancer, Local policy, one pod per node, balanced,
//     rollout without regression;
//   - shop/legacy: ClusterIP from a pod on node-c, no collector processors
//     (shares from the agents' counters), legacy-1 takes 80%, and 10
//     connections refused by node-c's REJECT rule.
//
// Counters are pushed twice, a second apart: rate() needs two samples.
func scenarios(f *fleet) {
	web := []pod{
		{"shop", "web", "web-1", "node-a", "web", "7c9f8d6b5"},
		{"shop", "web", "web-2", "node-b", "web", "7c9f8d6b5"},
		{"shop", "web", "web-3", "node-b", "web", "7c9f8d6b5"},
	}
	api := []pod{
		{"shop", "api", "api-1", "node-a", "api", "66f7b9c5d"},
		{"shop", "api", "api-2", "node-b", "api", "66f7b9c5d"},
		{"shop", "api", "api-3", "node-c", "api", "66f7b9c5d"},
	}
	legacy := []pod{
		{"shop", "legacy", "legacy-1", "node-a", "legacy", "5b6c7d8e9"},
		{"shop", "legacy", "legacy-2", "node-b", "legacy", "5b6c7d8e9"},
	}
	legacySvc := pod{ns: "shop", svc: "legacy"}
	proxy := pod{"ingress", "ingress-nginx", "ingress-nginx-controller", "node-c", "ingress-nginx-controller", "5f6a7b8c9"}
	round := func(scale int64) {
		// web: LB enters on node-a; web-1 is local, the others one hop away.
		f.conn("node-a", web[0], view{"server", "ok", "loadbalancer", "node-a", true, false}, 700*scale)
		for _, p := range web[1:] {
			f.conn("node-a", p, view{"forward", "forwarded", "loadbalancer", "node-a", true, true}, 150*scale)
			f.conn(p.node, p, view{"server", "ok", "direct", "node-a", true, true}, 150*scale)
		}
		for _, p := range api {
			f.conn(p.node, p, view{"server", "ok", "loadbalancer", p.node, false, false}, 100*scale)
		}
		for i, p := range legacy {
			n := []int64{80, 20}[i] * scale
			f.conn("node-c", p, view{"client", "ok", "clusterip", "node-c", false, true}, n)
			f.conn(p.node, p, view{"server", "ok", "direct", "", false, false}, n)
		}
		f.conn("node-c", legacySvc, view{"reject", "refused", "clusterip", "node-c", false, false}, 10*scale)
		lat := 0.09
		if scale == 0 {
			lat = 0.01
		}
		for _, p := range append(append([]pod{}, web...), api...) {
			f.requests(p, 20+int(scale)*80, lat)
		}
		// An nginx proxy pod behind a LoadBalancer entering on node-c routes
		// */api to api-1 (3 of 4 requests) and api-2: 50ms at the proxy,
		// 20ms of it behind.
		f.conn("node-c", proxy, view{"server", "ok", "loadbalancer", "node-c", false, false}, 32*scale)
		// (Histograms get points in round 0 too: rate needs two samples.)
		f.requests(proxy, 4+40*int(scale), 0.05)
		f.ingress(proxy, api[0], "*/api", 3+30*int(scale), 0.02)
		f.ingress(proxy, api[1], "*/api", 1+10*int(scale), 0.02)
	}
	round(0)
	f.processors(web, []float64{0.7, 0.15, 0.15}, []bool{true, false, false})
	f.processors(api, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, []bool{false, false, false})
	f.deploy("shop", "web", "5d4b6c7d8", "7c9f8d6b5", [3]float64{0.040, 0.098, 0.150}, [3]float64{0.045, 0.208, 0.400}, true, 1e-12, 240)
	f.deploy("shop", "api", "5f5f5f5f5", "66f7b9c5d", [3]float64{0.020, 0.050, 0.080}, [3]float64{0.021, 0.052, 0.081}, false, 0.43, 600)
	f.push()
	time.Sleep(1100 * time.Millisecond)
	round(1)
	f.push()
}

func startPrometheus(t *testing.T) *prometheus.Server {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs a Prometheus server; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	bin, err := prometheus.EnsureBinary(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		testenv.Unavailable(t, "cannot build the Prometheus server: "+err.Error())
	}
	s, err := prometheus.Start(ctx, bin, prometheus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// TestAgainstPrometheus runs the scenarios with the agents' default
// exponential latency histograms (native histograms in Prometheus) and with
// explicit buckets (classic _bucket series).
func TestAgainstPrometheus(t *testing.T) {
	t.Run("exponential", func(t *testing.T) { againstPrometheus(t, true) })
	t.Run("explicit", func(t *testing.T) { againstPrometheus(t, false) })
}

func againstPrometheus(t *testing.T, exponential bool) {
	s := startPrometheus(t)
	f := newFleet(t, s.OTLPMetricsURL(), exponential)
	scenarios(f)
	ctx := context.Background()
	now := time.Now()

	t.Run("hot pod, SNAT and regression", func(t *testing.T) {
		var out bytes.Buffer
		if err := Explain(ctx, s.URL(), "service/shop/web", now, &out); err != nil {
			t.Fatalf("%v\n%s", err, s.Log())
		}
		t.Logf("\n%s", out.String())
		r, err := Inspect(ctx, s.URL(), "shop/web", now, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []struct {
			k       Kind
			subject string
		}{{KindHotPod, "web-1"}, {KindClientIPLost, ""}, {KindDeployRegression, "web"}} {
			if !r.Has(want.k, want.subject) {
				t.Errorf("no %s finding for %q: %+v", want.k, want.subject, r.Findings)
			}
		}
		if r.Has(KindHotPod, "web-2") || r.Has(KindHotPod, "web-3") || r.Has(KindFailures, "") || r.Has(KindNodeSkew, "") {
			t.Errorf("spurious findings: %+v", r.Findings)
		}
		if r.ShareSource != "lbimbalance" || len(r.Pods) != 3 || r.Pods[0].Pod != "web-1" || math.Abs(r.Pods[0].Connections-0.7) > 1e-9 {
			t.Errorf("pods: %s %+v", r.ShareSource, r.Pods)
		}
		if r.SNAT != 1 || len(r.Entries) != 1 || r.Entries[0].Entry != "loadbalancer" {
			t.Errorf("path: SNAT %v entries %+v", r.SNAT, r.Entries)
		}
		if math.Abs(r.CrossNode-0.3) > 0.01 {
			t.Errorf("cross-node share %v, want 0.3 (forward records of web-2, web-3 over all entries)", r.CrossNode)
		}
		for _, want := range []string{
			"HOT POD web-1 takes 70% of connections (fair share 33%): check keep-alive clients / session affinity",
			"CLIENT IP LOST: 100% of LB connections SNATed (externalTrafficPolicy Cluster); set Local if the app needs the client IP",
			"DEPLOY REGRESSION web 7c9f8d6b5: p90 98ms → 208ms (×2.1, p=1e-12) 4m after rollout",
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q", want)
			}
		}
		if !(r.P90 > 0.075 && r.P90 <= 0.1) {
			t.Errorf("p90 %v, want within the 75–100 ms bucket the requests fell in", r.P90)
		}
		// The late requests all took 90 ms: a native histogram's bucket
		// around it is about 2 % wide at the scale the SDK picks for two
		// values (10 and 90 ms) in 160 buckets.
		if exponential && math.Abs(r.P90/0.09-1) > 0.03 {
			t.Errorf("p90 %v from the native histogram, want 90 ms within 3 %%", r.P90)
		}
	})

	t.Run("balanced Local service", func(t *testing.T) {
		var out bytes.Buffer
		r, err := Inspect(ctx, s.URL(), "shop/api", now, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Render(&out); err != nil {
			t.Fatal(err)
		}
		t.Logf("\n%s", out.String())
		if len(r.Findings) != 0 {
			t.Errorf("balanced Service with a clean rollout has findings: %+v", r.Findings)
		}
		if len(r.Deploys) != 1 || !r.Deploys[0].Tested || r.Deploys[0].Regression || r.Deploys[0].PValue != 0.43 {
			t.Errorf("deploys: %+v", r.Deploys)
		}
		if r.SNAT != 0 {
			t.Errorf("SNAT %v under Local policy", r.SNAT)
		}
		if !strings.Contains(out.String(), "verdict   no regression (p=0.43)") {
			t.Errorf("verdict line missing")
		}
	})

	t.Run("fallback shares and failures", func(t *testing.T) {
		var out bytes.Buffer
		r, err := Inspect(ctx, s.URL(), "shop/legacy", now, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Render(&out); err != nil {
			t.Fatal(err)
		}
		t.Logf("\n%s", out.String())
		if r.ShareSource != "agent counters" || !r.Has(KindHotPod, "legacy-1") || r.Has(KindHotPod, "legacy-2") {
			t.Errorf("fallback hot pod: %s %+v %+v", r.ShareSource, r.Pods, r.Findings)
		}
		if !r.Has(KindFailures, "") || !strings.Contains(out.String(), "FAILURES 9% of connections failed (refused 1") {
			t.Errorf("failures: rate %v %+v", r.FailureRate, r.Findings)
		}
		if r.Has(KindClientIPLost, "") || len(r.Entries) != 1 || r.Entries[0].Entry != "clusterip" || r.CrossNode != 1 {
			t.Errorf("path: %+v cross %v findings %+v", r.Entries, r.CrossNode, r.Findings)
		}
	})

	t.Run("unknown service", func(t *testing.T) {
		var out bytes.Buffer
		err := Explain(ctx, s.URL(), "shop/nope", now, &out)
		if !errors.Is(err, ErrNoData) || !strings.Contains(out.String(), "NO DATA") {
			t.Errorf("err %v, output %q", err, out.String())
		}
	})

	t.Run("through an ingress", func(t *testing.T) {
		var out bytes.Buffer
		if err := Explain(ctx, s.URL(), "shop/api", now, &out); err != nil {
			t.Fatal(err)
		}
		t.Logf("\n%s", out.String())
		r, err := Inspect(ctx, s.URL(), "shop/api", now, nil)
		if err != nil {
			t.Fatal(err)
		}
		in := r.Ingress
		if in == nil || len(in.Backends) != 2 || len(in.Proxies) != 1 {
			t.Fatalf("ingress view %+v", in)
		}
		b0, b1, px := in.Backends[0], in.Backends[1], in.Proxies[0]
		// Shares come from increase(), which Prometheus extrapolates per
		// series (each one's first sample time): 3:1 within half a percent.
		if b0.Pod != "api-1" || b1.Pod != "api-2" || math.Abs(b0.Share-0.75) > 0.005 || b0.Route != "*/api" || b0.ProxyPod != "ingress/ingress-nginx-controller" {
			t.Errorf("backends %+v", in.Backends)
		}
		// Means are exact (sum/count); 0.02 s is inside one bucket, so the
		// quantiles are only bounded by it.
		if px.Pod != "ingress/ingress-nginx-controller" || math.Abs(px.AtProxy-0.05) > 1e-9 || math.Abs(px.Behind-0.02) > 1e-9 || math.Abs(px.Before()-0.03) > 1e-9 {
			t.Errorf("proxy %+v", px)
		}
		if len(px.Entries) != 1 || px.Entries[0].Entry != "loadbalancer" || len(px.EntryNodes) != 1 || px.EntryNodes[0].Node != "node-c" {
			t.Errorf("proxy entry %+v %+v", px.Entries, px.EntryNodes)
		}
		if !(b0.BehindP90 > 0.01 && b0.BehindP90 <= 0.025) {
			t.Errorf("behind p90 %v, want within the bucket (10ms, 25ms] holding the 20ms requests", b0.BehindP90)
		}
		for _, want := range []string{"INGRESS  client → LB → entry node → proxy pod → backend pod", "at proxy 50ms = before the backends 30ms + behind 20ms"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q", want)
			}
		}
	})

	t.Run("top", func(t *testing.T) {
		var out bytes.Buffer
		if err := Top(ctx, s.URL(), now, &out); err != nil {
			t.Fatal(err)
		}
		t.Logf("\n%s", out.String())
		rows, err := TopRows(ctx, s.URL(), now, nil)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, r.Service())
		}
		if strings.Join(got, " ") != "shop/web shop/api shop/legacy ingress/ingress-nginx" {
			t.Fatalf("ranking %v, want web, api, legacy, ingress-nginx (by connection rate)", got)
		}
		web, api, legacy := rows[0], rows[1], rows[2]
		if strings.Join(web.HotPods, ",") != "web-1" || strings.Join(web.Regressed, ",") != "web" || web.SNAT != 1 {
			t.Errorf("web row: %+v", web)
		}
		if len(api.HotPods) != 0 || len(api.Regressed) != 0 || api.SNAT != 0 || math.IsNaN(api.ReqRate) {
			t.Errorf("api row: %+v", api)
		}
		if strings.Join(legacy.HotPods, ",") != "legacy-1" || !(legacy.Failing > 0.08 && legacy.Failing < 0.1) {
			t.Errorf("legacy row: %+v", legacy)
		}
	})
}
