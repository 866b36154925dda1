package exporter

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/bits"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
)

type (
	podRef = kube.Pod
	svcRef = kube.Service
)

// Stats counts what the exporter dropped; every drop is also exported as
// the self-metric lbpath.agent.dropped.
type Stats struct {
	// Connections counts connections handed to the pipelines: every one
	// is in the metrics (the node's own excepted, see export), whatever
	// happens to its spans.
	Connections atomic.Uint64
	// QueueFull counts connections whose spans were dropped because the
	// span queue was full; their metrics were recorded.
	QueueFull atomic.Uint64
	// SampledOut counts connections whose spans the sampler left out
	// (lbpath.agent.spans_sampled_out); their metrics were recorded.
	SampledOut    atomic.Uint64
	SpansFailed   atomic.Uint64 // spans the OTLP exporter gave up on after retries
	MetricsFailed atomic.Uint64 // metric exports that failed after retries
	// NodeStatsFailed counts collections in which the node's conntrack
	// table could not be read (its gauges have a gap there).
	NodeStatsFailed atomic.Uint64
}

// Exporter sends spans and metrics for named connections.
type Exporter struct {
	cfg    Config
	log    *slog.Logger
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
	tracer trace.Tracer
	inst   instruments
	salt   [16]byte
	Stats  Stats

	nodeStats atomic.Pointer[nodeStatsFunc]
	nodeConns atomic.Pointer[nodeConnsFunc]
	podNaming atomic.Pointer[podNamingFunc]
	natHidden [len(path.NATNotVisibleReasons)]atomic.Uint64 // natvisible.go
	// healthProbes reads the load-balancer probes (lbprobes.go).
	healthProbes atomic.Pointer[healthProbesFunc]

	sampler *sampler
	queue   chan queued
	wg      sync.WaitGroup
	once    sync.Once
	// spans and metrics count what export delivered and what it did not,
	// up to the shutdown deadline (shutdown.go).
	spans   spanLedger
	metrics *countingMetrics
	// abandon tells run to stop exporting: the shutdown deadline passed
	// and Shutdown counts what is left.
	abandon atomic.Bool
	// pending counts connections queued and not yet made into spans.
	pending atomic.Int64
}

// queued is a connection whose spans were kept, waiting to be made into
// spans with its trace ID and threshold.
type queued struct {
	p   path.Path
	tid trace.TraceID
	th  *Threshold
}

// New builds the OTLP pipelines. selfStats, when non-nil, is read at every
// metric collection for the agent's own loss counters.
func New(ctx context.Context, cfg Config, log *slog.Logger, selfStats func() []Drop) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 8192
	}
	if cfg.MetricInterval == 0 {
		cfg.MetricInterval = 10 * time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	e := &Exporter{cfg: cfg, log: log, queue: make(chan queued, cfg.QueueSize), sampler: newSampler(cfg.Sampling)}
	e.spans.failed = &e.Stats.SpansFailed
	_, _ = rand.Read(e.salt[:]) // per-process salt: hashes cannot be joined across restarts

	attrs := []attribute.KeyValue{
		attribute.String("service.name", "lbpath-agent"),
		attribute.String("k8s.node.name", cfg.Node),
	}
	if cfg.Cluster != "" {
		attrs = append(attrs, attribute.String("k8s.cluster.name", cfg.Cluster))
	}
	res := resource.NewSchemaless(attrs...)

	if !cfg.NoTraces {
		se, err := e.spanExporter(ctx)
		if err != nil {
			return nil, err
		}
		e.tp = sdktrace.NewTracerProvider(
			sdktrace.WithResource(res),
			sdktrace.WithIDGenerator(idGenerator{}),
			// The keep/drop decision is taken per connection before its
			// spans start (Path); the SDK sampler only stamps it.
			sdktrace.WithSampler(stampSampler{}),
			// Blocking: the SDK never drops silently; the exporter's own
			// bounded queue in front of it is where drops happen, counted.
			sdktrace.WithBatcher(&countingSpans{SpanExporter: se, ledger: &e.spans},
				sdktrace.WithBlocking(), sdktrace.WithMaxQueueSize(4096), sdktrace.WithMaxExportBatchSize(512)),
		)
		e.tracer = e.tp.Tracer("github.com/lbpath/lbpath/exporter")
	}
	if !cfg.NoMetrics {
		me, err := e.metricExporter(ctx)
		if err != nil {
			return nil, err
		}
		e.metrics = &countingMetrics{Exporter: me, failed: &e.Stats.MetricsFailed}
		// Temporality, histogram views and the per-pod series: views.go, series.go.
		if e.mp, err = e.meterProvider(res); err != nil {
			return nil, err
		}
		meter := e.mp.Meter("github.com/lbpath/lbpath/exporter")
		if err := e.inst.init(meter, e, selfStats); err != nil {
			return nil, err
		}
		if err := initSamplingMetrics(meter, e); err != nil {
			return nil, err
		}
	}
	e.wg.Add(1)
	go e.run()
	return e, nil
}

func (e *Exporter) spanExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	tc, err := e.cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	if e.cfg.isHTTP() {
		var opts []otlptracehttp.Option
		if e.cfg.Endpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(httpURL(e.cfg.Endpoint, e.cfg.Insecure, "/v1/traces")))
		}
		if e.cfg.Insecure {
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		if tc != nil {
			opts = append(opts, otlptracehttp.WithTLSClientConfig(tc))
		}
		if len(e.cfg.Headers) > 0 {
			opts = append(opts, otlptracehttp.WithHeaders(e.cfg.Headers))
		}
		if e.cfg.Compression == "gzip" {
			opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
		}
		opts = append(opts, otlptracehttp.WithTimeout(e.cfg.Timeout))
		return otlptracehttp.New(ctx, opts...)
	}
	// No service config from DNS: its TXT lookup (_grpc_config.<host>) is
	// the agent's own traffic to the cluster DNS it measures.
	opts := []otlptracegrpc.Option{otlptracegrpc.WithDialOption(grpc.WithDisableServiceConfig())}
	if e.cfg.Endpoint != "" {
		opts = append(opts, otlptracegrpc.WithEndpoint(e.cfg.grpcEndpoint()))
	}
	if e.cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	if tc != nil {
		opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(tc)))
	}
	if len(e.cfg.Headers) > 0 {
		opts = append(opts, otlptracegrpc.WithHeaders(e.cfg.Headers))
	}
	if e.cfg.Compression == "gzip" {
		opts = append(opts, otlptracegrpc.WithCompressor("gzip"))
	}
	opts = append(opts, otlptracegrpc.WithTimeout(e.cfg.Timeout))
	return otlptracegrpc.New(ctx, opts...)
}

func (e *Exporter) metricExporter(ctx context.Context) (sdkmetric.Exporter, error) {
	tc, err := e.cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	if e.cfg.isHTTP() {
		var opts []otlpmetrichttp.Option
		if e.cfg.Endpoint != "" {
			opts = append(opts, otlpmetrichttp.WithEndpointURL(httpURL(e.cfg.Endpoint, e.cfg.Insecure, "/v1/metrics")))
		}
		if e.cfg.Insecure {
			opts = append(opts, otlpmetrichttp.WithInsecure())
		}
		if tc != nil {
			opts = append(opts, otlpmetrichttp.WithTLSClientConfig(tc))
		}
		if len(e.cfg.Headers) > 0 {
			opts = append(opts, otlpmetrichttp.WithHeaders(e.cfg.Headers))
		}
		if e.cfg.Compression == "gzip" {
			opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
		}
		opts = append(opts, otlpmetrichttp.WithTimeout(e.cfg.Timeout))
		return otlpmetrichttp.New(ctx, opts...)
	}
	opts := []otlpmetricgrpc.Option{otlpmetricgrpc.WithDialOption(grpc.WithDisableServiceConfig())}
	if e.cfg.Endpoint != "" {
		opts = append(opts, otlpmetricgrpc.WithEndpoint(e.cfg.grpcEndpoint()))
	}
	if e.cfg.Insecure {
		opts = append(opts, otlpmetricgrpc.WithInsecure())
	}
	if tc != nil {
		opts = append(opts, otlpmetricgrpc.WithTLSCredentials(credentials.NewTLS(tc)))
	}
	if len(e.cfg.Headers) > 0 {
		opts = append(opts, otlpmetricgrpc.WithHeaders(e.cfg.Headers))
	}
	if e.cfg.Compression == "gzip" {
		opts = append(opts, otlpmetricgrpc.WithCompressor("gzip"))
	}
	opts = append(opts, otlpmetricgrpc.WithTimeout(e.cfg.Timeout))
	return otlpmetricgrpc.New(ctx, opts...)
}

// Path exports a named connection; it never blocks. Its metrics are
// recorded here, before and whatever the span path does: the instruments
// aggregate in memory without I/O. Its spans are sampled (sampling.go),
// then queued; when the queue is full they are dropped and counted.
func (e *Exporter) Path(p *path.Path) {
	e.Stats.Connections.Add(1)
	e.countNATNotVisible(p)
	// The node's own connections (exported only when the agent asks for
	// their spans) stay out of the per-pod metrics: their peers are
	// unbounded addresses, and they are counted by class instead.
	if e.mp != nil && !p.Class.Node() {
		e.inst.record(p)
	}
	if e.tracer == nil {
		return
	}
	tid := ConnectionTraceID(&p.Conn)
	th := e.sampler.decide(p, tid)
	if th == nil {
		e.Stats.SampledOut.Add(1)
		return
	}
	e.pending.Add(1)
	select {
	case e.queue <- queued{p: *p, tid: tid, th: th}:
	default:
		e.pending.Add(-1)
		e.Stats.QueueFull.Add(1)
	}
}

// Request records a request's latency and count (metrics only).
func (e *Exporter) Request(r *path.Request) {
	if e.mp == nil {
		return
	}
	e.inst.recordRequest(r)
}

func (e *Exporter) run() {
	defer e.wg.Done()
	for q := range e.queue {
		if e.abandon.Load() {
			e.Stats.SpansFailed.Add(uint64(spanCount(&q.p)))
		} else {
			e.span(&q.p, q.tid, q.th)
		}
		e.pending.Add(-1)
	}
}

// ForceFlush pushes what is buffered now (tests, shutdown).
func (e *Exporter) ForceFlush(ctx context.Context) error {
	// Let the worker turn what is queued into spans before flushing the
	// SDK (the queue's length alone misses the one being converted).
	for e.pending.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	var errs []error
	if e.tp != nil {
		errs = append(errs, e.tp.ForceFlush(ctx))
	}
	if e.mp != nil {
		errs = append(errs, e.mp.ForceFlush(ctx))
	}
	return errors.Join(errs...)
}

func (e *Exporter) clientAddr(a netip.AddrPort) (string, bool) {
	switch e.cfg.ClientAddresses {
	case "drop":
		return "", false
	case "hash":
		h := sha256.New()
		h.Write(e.salt[:])
		b := a.Addr().As16()
		h.Write(b[:])
		return "sha256:" + hex.EncodeToString(h.Sum(nil)[:12]), true
	}
	return a.Addr().String(), true
}

// synTime estimates when the connection's SYN passed: the entry node sees
// it at NAT confirmation, the pod's node one RTT before the handshake
// completed.
func synTime(c *flow.Connection) time.Time {
	if c.Role == flow.RoleServer && c.SRTTMicros > 0 {
		return c.Start.Add(-time.Duration(c.SRTTMicros) * time.Microsecond)
	}
	return c.Start
}

// Hop children of a connection's span: what this node can vouch for.
const (
	hopLBNode   = 1 << iota // the load balancer or NodePort entered this node
	hopNodeNode             // this entry node passed it to the pod's node
	hopNodePod              // this node handed it to the pod
)

// spanHops says which hop children p's span has.
func spanHops(p *path.Path) int {
	c := &p.Conn
	h := 0
	if p.EntryNode != "" && p.EntryNode == c.Node && (p.Entry == "loadbalancer" || p.Entry == "nodeport" || p.Entry == "externalip") {
		h |= hopLBNode
	}
	if p.CrossNode && p.EntryNode == c.Node {
		h |= hopNodeNode
	}
	if c.Role == flow.RoleServer {
		h |= hopNodePod
	}
	return h
}

// spanCount is how many spans p becomes: the connection's and its hops'.
func spanCount(p *path.Path) int { return 1 + bits.OnesCount(uint(spanHops(p))) }

// span makes p's spans: the connection's root and its hops, all carrying
// th in their tracestate.
func (e *Exporter) span(p *path.Path, tid trace.TraceID, th *Threshold) {
	c := &p.Conn
	hops := spanHops(p)
	// Counted before the first span starts (every span that starts is
	// recorded and exported: the sampling decision was taken in Path), so
	// that a shutdown deadline that passes half-way through counts all of
	// them (shutdown.go).
	e.spans.start(1 + bits.OnesCount(uint(hops)))
	base := c.Node + "/" + string(c.Role)
	kind := trace.SpanKindServer
	switch c.Role {
	case flow.RoleForward, flow.RoleClient:
		kind = trace.SpanKindClient
	case flow.RoleReject:
		kind = trace.SpanKindInternal
	}
	name := "lbpath.connection"
	if p.Service != nil {
		name = "lbpath.connection " + p.Service.Key()
	}
	ctx := withIDs(randomFlagContext(context.Background()), tid, SpanID(tid, base), th)
	attrs := e.spanAttrs(p)
	_, root := e.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithTimestamp(c.Start), trace.WithAttributes(attrs...))
	for _, d := range p.Diagnoses {
		root.AddEvent(d.Code, trace.WithTimestamp(c.Start), trace.WithAttributes(attribute.String("lbpath.diagnosis.message", d.Message)))
	}
	if c.Outcome != flow.OutcomeOK && c.Outcome != flow.OutcomeForwarded {
		root.SetStatus(2, string(c.Outcome)) // codes.Error
	}
	rootCtx := trace.ContextWithSpan(context.Background(), root)
	hop := func(hopName, from, to string) {
		hctx := withIDs(rootCtx, tid, SpanID(tid, base+"/"+hopName), th)
		_, s := e.tracer.Start(hctx, hopName, trace.WithSpanKind(trace.SpanKindInternal), trace.WithTimestamp(c.Start),
			trace.WithAttributes(attribute.String("lbpath.hop.from", from), attribute.String("lbpath.hop.to", to)))
		s.End(trace.WithTimestamp(c.End))
	}
	if hops&hopLBNode != 0 {
		hop("hop lb→node", p.EntryAddr.String(), c.Node)
	}
	if hops&hopNodeNode != 0 {
		hop("hop node→node", p.EntryNode, p.PodNode)
	}
	if hops&hopNodePod != 0 {
		podName := c.PodDst.String()
		if p.Pod != nil {
			podName = p.Pod.Namespace + "/" + p.Pod.Name
		}
		hop("hop node→pod", c.Node, podName)
	}
	root.End(trace.WithTimestamp(c.End))
}

func (e *Exporter) spanAttrs(p *path.Path) []attribute.KeyValue {
	c := &p.Conn
	a := []attribute.KeyValue{
		attribute.String("network.transport", c.Proto()),
		attribute.String("network.type", networkType(c.Target.Addr())),
		attribute.String("network.peer.address", c.PodSrc.Addr().String()),
		attribute.Int("network.peer.port", int(c.PodSrc.Port())),
		attribute.String("server.address", c.Target.Addr().String()),
		attribute.Int("server.port", int(c.Target.Port())),
		attribute.String("lbpath.role", string(c.Role)),
		attribute.String("lbpath.outcome", string(c.Outcome)),
		attribute.String("lbpath.node", c.Node),
		attribute.String("lbpath.pod.address", c.PodDst.String()),
		attribute.Bool("lbpath.snat", p.SNAT),
		attribute.Bool("lbpath.cross_node", p.CrossNode),
		attribute.Int64("lbpath.bytes_to_server", int64(c.BytesToServer)),
		attribute.Int64("lbpath.bytes_to_client", int64(c.BytesToClient)),
		attribute.Int64("lbpath.rtt_us", int64(c.SRTTMicros)),
		attribute.Int64("lbpath.retransmits", int64(c.Retransmits)),
	}
	if c.Transport == flow.TransportUDP {
		a = append(a, attribute.Int64("lbpath.datagrams_to_server", int64(c.DatagramsToServer)),
			attribute.Int64("lbpath.datagrams_to_client", int64(c.DatagramsToClient)),
			attribute.Int64("lbpath.exchanges", int64(c.Exchanges)),
			attribute.Int64("lbpath.latency_max_us", c.LatencyMaxNs/1000))
	}
	if p.Class != "" {
		a = append(a, attribute.String("lbpath.connection.class", string(p.Class)))
	}
	if !p.Client.Lost {
		if s, ok := e.clientAddr(p.Client.Addr); ok {
			a = append(a, attribute.String("client.address", s))
			if e.cfg.ClientAddresses == "" || e.cfg.ClientAddresses == "keep" {
				a = append(a, attribute.Int("client.port", int(p.Client.Addr.Port())))
			}
		}
	}
	if p.Entry != "" {
		a = append(a, attribute.String("lbpath.entry", string(p.Entry)))
	}
	if p.EntryNode != "" {
		a = append(a, attribute.String("lbpath.entry_node", p.EntryNode))
	}
	if p.ServiceSource != "" {
		// Named from the agent's DNS lookup, not a translation.
		a = append(a, attribute.String("lbpath.service_source", p.ServiceSource))
	}
	if p.Client.Node != nil && p.Client.NodeAddr != "" {
		// Which node the client address is, and how lbpath knows (a
		// tunnel address on an overlay is no InternalIP).
		a = append(a, attribute.String("lbpath.client.node", p.Client.Node.Name),
			attribute.String("lbpath.client.node_address_source", string(p.Client.NodeAddr)))
	}
	if c.Error != "" {
		a = append(a, attribute.String("error.type", c.Error))
	}
	if c.NAT != nil {
		a = append(a, attribute.String("lbpath.nat.original", c.NAT.Original.String()),
			attribute.String("lbpath.nat.reply", c.NAT.Reply.String()))
	}
	if c.SocketLB {
		// Translated inside connect(): no conntrack tuples, the dialled
		// address is server.address; this marks how it was translated.
		a = append(a, attribute.Bool("lbpath.nat.socket_lb", true))
	}
	if p.NATNotVisible != "" {
		a = append(a, attribute.String("lbpath.nat_not_visible.reason", p.NATNotVisible))
	}
	if h := p.Ingress; h != nil {
		// The hop behind an ingress proxy: which Ingress route and proxy
		// pod sent it. No span link to the inbound connection: which
		// one caused it is not known per request (docs/ARCHITECTURE.md).
		a = append(a, attribute.String("lbpath.ingress.kind", h.Kind), attribute.String("lbpath.ingress.name", h.Ingress),
			attribute.String("lbpath.ingress.route", h.Route),
			attribute.String("lbpath.ingress.proxy_pod", h.ProxyPod), attribute.String("lbpath.ingress.proxy_service", h.ProxyService))
		if h.HTTPRoute != "" {
			a = append(a, attribute.String("lbpath.ingress.httproute", h.HTTPRoute))
		}
	}
	a = append(a, podAttrs(p.Pod, p.Service)...)
	if p.Pod == nil && p.PodNode != "" {
		a = append(a, attribute.String("k8s.node.name", p.PodNode))
	}
	if p.PodZone != "" {
		a = append(a, attribute.String("lbpath.pod.zone", p.PodZone))
	}
	return a
}

// podAttrs are the pod and Service attributes shared by spans and metrics.
func podAttrs(pod *podRef, svc *svcRef) []attribute.KeyValue {
	var a []attribute.KeyValue
	if svc != nil {
		a = append(a, attribute.String("k8s.namespace.name", svc.Namespace), attribute.String("k8s.service.name", svc.Name))
	}
	if pod != nil {
		if svc == nil {
			a = append(a, attribute.String("k8s.namespace.name", pod.Namespace))
		}
		a = append(a, attribute.String("k8s.pod.name", pod.Name), attribute.String("k8s.node.name", pod.Node))
		if pod.Deployment != "" {
			a = append(a, attribute.String("k8s.deployment.name", pod.Deployment))
		}
		if pod.ReplicaSet != "" {
			a = append(a, attribute.String("k8s.replicaset.name", pod.ReplicaSet))
		}
		if pod.TemplateHash != "" {
			a = append(a, attribute.String("lbpath.pod_template_hash", pod.TemplateHash))
		}
	}
	return a
}
