package exporter

import (
	"context"
	"fmt"
	"slices"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
)

// Drop is one loss counter of the agent, exported as lbpath.agent.dropped
// with attributes lbpath.stage and lbpath.reason.
type Drop struct {
	Stage, Reason string
	Count         uint64
}

// Explicit bucket boundaries: scraped Prometheus exporters render
// exponential histograms without buckets (see docs/TELEMETRY.md), and these
// resolve the latencies SREs alert on.
var (
	requestBuckets    = []float64{0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10}
	connectionBuckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800}
	rttBuckets        = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}
)

// setKey identifies a metric attribute set by the names it is made of: a
// pod updated in the API server (a new kube.Pod) keeps its series, and the
// table holds no pointer to a deleted pod's object.
type setKey struct {
	pod       podKey
	svc       svcKey
	podNode   string
	role      flow.Role
	outcome   flow.Outcome
	entry     kube.Entry
	entryNode string
	snat      bool
	cross     bool
	request   bool
	transport string // flow.Connection.Transport: "" (TCP) or "udp"
}

type podKey struct {
	known                                     bool
	ns, name, node, deploy, replicaSet, tHash string
}

type svcKey struct {
	known    bool
	ns, name string
}

func keyOf(pod *kube.Pod, svc *kube.Service) (podKey, svcKey) {
	var pk podKey
	var sk svcKey
	if pod != nil {
		pk = podKey{true, pod.Namespace, pod.Name, pod.Node, pod.Deployment, pod.ReplicaSet, pod.TemplateHash}
	}
	if svc != nil {
		sk = svcKey{true, svc.Namespace, svc.Name}
	}
	return pk, sk
}

// instruments are the exporter's metrics: the per-pod ones in series'
// current generation (series.go), the self-metrics registered once.
type instruments struct {
	series *series
}

// Instrument names, declared once: docs/TELEMETRY.md and the dashboards'
// query check read this list.
const (
	MetricConnections        = "lbpath.connections"
	MetricRequests           = "lbpath.requests"
	MetricBytes              = "lbpath.bytes"
	MetricRequestDuration    = "lbpath.request.duration"
	MetricConnectionDuration = "lbpath.connection.duration"
	MetricRTT                = "lbpath.rtt"
	MetricRetransmits        = "lbpath.retransmits"
	MetricDropped            = "lbpath.agent.dropped"
	MetricExported           = "lbpath.agent.exported"
	MetricNodeConnections    = "lbpath.agent.node_connections"
	MetricConntrackEntries   = "lbpath.node.conntrack.entries"
	MetricConntrackMax       = "lbpath.node.conntrack.max"
	MetricConntrackDrops     = "lbpath.node.conntrack.drops"
	MetricSeries             = "lbpath.agent.series"
	MetricSeriesOverflow     = "lbpath.agent.series_overflow"
	MetricSeriesResets       = "lbpath.agent.series_resets"
	MetricNATNotVisible      = "lbpath.agent.nat_not_visible"
	MetricIngressRequests    = "lbpath.ingress.requests"
	MetricIngressDuration    = "lbpath.ingress.request.duration"
	MetricIngressConns       = "lbpath.ingress.connections"
	MetricIngressLinks       = "lbpath.ingress.links"
)

// init creates the per-pod instruments of a generation.
func (g *generation) init(m metric.Meter) error {
	var err error
	must := func(e2 error) {
		if err == nil && e2 != nil {
			err = e2
		}
	}
	var e2 error
	g.connections, e2 = m.Int64Counter(MetricConnections, metric.WithUnit("{connection}"),
		metric.WithDescription("TCP connections seen, by pod, Service, entry, role and outcome"))
	must(e2)
	g.requests, e2 = m.Int64Counter(MetricRequests, metric.WithUnit("{request}"),
		metric.WithDescription("Request/response turns answered by a pod (HTTP/1.x requests)"))
	must(e2)
	g.bytes, e2 = m.Int64Counter(MetricBytes, metric.WithUnit("By"),
		metric.WithDescription("TCP payload bytes by direction"))
	must(e2)
	// The bucket boundaries apply with --latency-histogram=explicit; the
	// default's views (views.go) make these exponential histograms.
	g.requestDuration, e2 = m.Float64Histogram(MetricRequestDuration, metric.WithUnit("s"),
		metric.WithDescription("Request latency at the pod: first request byte read to first response byte written"),
		metric.WithExplicitBucketBoundaries(requestBuckets...))
	must(e2)
	g.connDuration, e2 = m.Float64Histogram(MetricConnectionDuration, metric.WithUnit("s"),
		metric.WithDescription("Connection lifetime"), metric.WithExplicitBucketBoundaries(connectionBuckets...))
	must(e2)
	g.rtt, e2 = m.Float64Histogram(MetricRTT, metric.WithUnit("s"),
		metric.WithDescription("Smoothed TCP round-trip time at connection close"), metric.WithExplicitBucketBoundaries(rttBuckets...))
	must(e2)
	g.retransmits, e2 = m.Int64Counter(MetricRetransmits, metric.WithUnit("{segment}"),
		metric.WithDescription("TCP segments retransmitted"))
	must(e2)
	must(g.initIngress(m))
	if err != nil {
		return fmt.Errorf("create instruments: %w", err)
	}
	return nil
}

// init registers the self-metrics on the exporting provider's meter m.
func (in *instruments) init(m metric.Meter, e *Exporter, self func() []Drop) error {
	dropped, err := m.Int64ObservableCounter(MetricDropped, metric.WithUnit("{item}"),
		metric.WithDescription("Everything the agent lost, by stage and reason"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricDropped, err)
	}
	exported, err := m.Int64ObservableCounter(MetricExported, metric.WithUnit("{connection}"),
		metric.WithDescription("Connections handed to the OTLP pipelines"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricExported, err)
	}
	if err := in.initNode(m, e); err != nil {
		return err
	}
	if err := initNodeConnections(m, e); err != nil {
		return err
	}
	if err := initHealthProbes(m, e); err != nil {
		return err
	}
	if err := initPodNaming(m, e); err != nil {
		return err
	}
	if err := initSeries(m, e); err != nil {
		return err
	}
	if err := initNATNotVisible(m, e); err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		drops := e.Drops()
		if self != nil {
			drops = append(drops, self()...)
		}
		for _, d := range drops {
			o.ObserveInt64(dropped, int64(d.Count), metric.WithAttributes(
				attribute.String("lbpath.stage", d.Stage), attribute.String("lbpath.reason", d.Reason)))
		}
		o.ObserveInt64(exported, int64(e.Stats.Connections.Load()))
		return nil
	}, dropped, exported)
	if err != nil {
		return fmt.Errorf("register self-metrics: %w", err)
	}
	return nil
}

// initNode registers the node's conntrack table gauges. A full table drops
// SYNs before any socket or entry exists, so these kernel counters are the
// only trace of those connections (docs/RELIABILITY.md, conntrack full).
func (in *instruments) initNode(m metric.Meter, e *Exporter) error {
	entries, err := m.Int64ObservableGauge(MetricConntrackEntries, metric.WithUnit("{entry}"),
		metric.WithDescription("Entries in the node's conntrack table"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricConntrackEntries, err)
	}
	limit, err := m.Int64ObservableGauge(MetricConntrackMax, metric.WithUnit("{entry}"),
		metric.WithDescription("Size limit of the conntrack table (nf_conntrack_max)"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricConntrackMax, err)
	}
	drops, err := m.Int64ObservableCounter(MetricConntrackDrops, metric.WithUnit("{packet}"),
		metric.WithDescription("Packets and entries the node's conntrack table lost, by reason (drop, early_drop, insert_failed)"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricConntrackDrops, err)
	}
	reasons := [3]metric.ObserveOption{
		metric.WithAttributes(attribute.String("lbpath.reason", "drop")),
		metric.WithAttributes(attribute.String("lbpath.reason", "early_drop")),
		metric.WithAttributes(attribute.String("lbpath.reason", "insert_failed")),
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		fn := e.nodeStats.Load()
		if fn == nil {
			return nil
		}
		st, err := (*fn)()
		if err != nil {
			// A missing point is visible as a gap; failing the callback
			// would also drop the other self-metrics of this collection.
			e.Stats.NodeStatsFailed.Add(1)
			return nil
		}
		o.ObserveInt64(entries, int64(st.Entries))
		if st.Max > 0 {
			o.ObserveInt64(limit, int64(st.Max))
		}
		o.ObserveInt64(drops, int64(st.Drop), reasons[0])
		o.ObserveInt64(drops, int64(st.EarlyDrop), reasons[1])
		o.ObserveInt64(drops, int64(st.InsertFailed), reasons[2])
		return nil
	}, entries, limit, drops)
	if err != nil {
		return fmt.Errorf("register node conntrack metrics: %w", err)
	}
	return nil
}

// initNodeConnections registers lbpath.agent.node_connections: the node's
// own connections (no pod, no Service) by class. They are no loss, so not
// in lbpath.agent.dropped, and not in the per-pod metrics.
func initNodeConnections(m metric.Meter, e *Exporter) error {
	conns, err := m.Int64ObservableCounter(MetricNodeConnections, metric.WithUnit("{connection}"),
		metric.WithDescription("The node's own connections, which involve no pod and no Service, by class (node_local, apiserver, kubelet, external, lb_health_check)"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricNodeConnections, err)
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		fn := e.nodeConns.Load()
		if fn == nil {
			return nil
		}
		for _, c := range (*fn)() {
			o.ObserveInt64(conns, int64(c.Count), metric.WithAttributes(attribute.String("lbpath.connection.class", string(c.Class))))
		}
		return nil
	}, conns)
	if err != nil {
		return fmt.Errorf("register %s: %w", MetricNodeConnections, err)
	}
	return nil
}

// record adds one connection to the metrics. Labels are bounded by design:
// no client address or port, only Kubernetes names, node names and a few
// enumerations (docs/TELEMETRY.md lists them); their combinations are
// bounded by --max-series-per-metric (series.go).
func (in *instruments) record(p *path.Path) {
	c := &p.Conn
	k := setKey{role: c.Role, outcome: c.Outcome, entry: p.Entry, entryNode: p.EntryNode, snat: p.SNAT, cross: p.CrossNode, transport: c.Transport}
	k.pod, k.svc = keyOf(p.Pod, p.Service)
	if p.Pod == nil {
		k.podNode = p.PodNode
	}
	s := in.series
	s.gate.RLock()
	defer s.gate.RUnlock()
	sets := s.admit(famConn, k, func() [3]attribute.Set { return connSets(p) })
	full := c.Role != flow.RoleForward && c.Role != flow.RoleReject
	tcp := c.Proto() == flow.TransportTCP
	if sets == nil {
		sets = &overflowSets
		s.countConnOverflow(full, c.SRTTMicros > 0, tcp)
	}
	g := s.gen
	ctx := context.Background()
	all := metric.WithAttributeSet(sets[0])
	g.connections.Add(ctx, 1, all)
	if p.Ingress != nil && c.Role == flow.RoleClient {
		g.recordIngressConnection(ctx, p)
	}
	if full {
		g.connDuration.Record(ctx, c.Duration().Seconds(), all)
		if c.SRTTMicros > 0 {
			g.rtt.Record(ctx, float64(c.SRTTMicros)/1e6, all)
		}
		// Recorded even when zero: "no retransmits" is an answer, an
		// absent series is not. UDP has no retransmissions to count.
		if tcp {
			g.retransmits.Add(ctx, int64(c.Retransmits), all)
		}
		g.bytes.Add(ctx, int64(c.BytesToServer), metric.WithAttributeSet(sets[1]))
		g.bytes.Add(ctx, int64(c.BytesToClient), metric.WithAttributeSet(sets[2]))
	}
}

// countConnOverflow counts one connection's measurements that went to the
// overflow series, metric by metric, exactly as record makes them.
func (s *series) countConnOverflow(full, rtt, tcp bool) {
	s.overflow[mConnections].Add(1)
	if !full {
		return
	}
	s.overflow[mConnDuration].Add(1)
	if rtt {
		s.overflow[mRTT].Add(1)
	}
	if tcp {
		s.overflow[mRetransmits].Add(1)
	}
	s.overflow[mBytes].Add(2)
}

// connSets builds the attribute sets of a connection's metrics: all, and
// the two byte directions.
func connSets(p *path.Path) [3]attribute.Set {
	c := &p.Conn
	attrs := podAttrs(p.Pod, p.Service)
	if p.Pod == nil && p.PodNode != "" {
		attrs = append(attrs, attribute.String("k8s.node.name", p.PodNode))
	}
	attrs = append(attrs,
		attribute.String("network.transport", c.Proto()),
		attribute.String("lbpath.role", string(c.Role)),
		attribute.String("lbpath.outcome", string(c.Outcome)),
		attribute.Bool("lbpath.snat", p.SNAT),
		attribute.Bool("lbpath.cross_node", p.CrossNode),
	)
	if p.Entry != "" {
		attrs = append(attrs, attribute.String("lbpath.entry", string(p.Entry)))
	}
	if p.EntryNode != "" {
		attrs = append(attrs, attribute.String("lbpath.entry_node", p.EntryNode))
	}
	return [3]attribute.Set{
		attribute.NewSet(attrs...),
		attribute.NewSet(append(slices.Clip(attrs), attribute.String("lbpath.direction", "to_server"))...),
		attribute.NewSet(append(slices.Clip(attrs), attribute.String("lbpath.direction", "to_client"))...),
	}
}

// recordRequest adds one request to the metrics.
func (in *instruments) recordRequest(r *path.Request) {
	s := in.series
	s.gate.RLock()
	defer s.gate.RUnlock()
	k := setKey{request: true, transport: r.Req.Transport}
	k.pod, k.svc = keyOf(r.Pod, r.Service)
	sets := s.admit(famReq, k, func() [3]attribute.Set {
		proto := flow.TransportTCP
		if r.Req.Transport != "" {
			proto = r.Req.Transport
		}
		return [3]attribute.Set{attribute.NewSet(append(podAttrs(r.Pod, r.Service), attribute.String("network.transport", proto))...)}
	})
	if sets == nil {
		sets = &overflowSets
		s.overflow[mRequests].Add(1)
		s.overflow[mRequestDuration].Add(1)
	}
	ctx := context.Background()
	set := metric.WithAttributeSet(sets[0])
	s.gen.requests.Add(ctx, 1, set)
	s.gen.requestDuration.Record(ctx, r.Req.Latency.Seconds(), set)
	if r.Ingress != nil {
		s.gen.recordIngressRequest(ctx, r)
	}
}
