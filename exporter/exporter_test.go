package exporter

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/conntrack"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/internal/otlpsink"
)

var (
	t0     = time.Date(2026, 11, 25, 12, 0, 10, 0, time.UTC)
	client = netip.MustParseAddrPort("192.168.77.100:40000")
	lb     = netip.MustParseAddrPort("203.0.113.10:80")
	snat   = netip.MustParseAddrPort("192.168.77.12:51000")
	podIP  = netip.MustParseAddrPort("10.244.1.10:8080")
	pod    = &kube.Pod{Namespace: "default", Name: "web-abc-1", Node: "node1", Deployment: "web", ReplicaSet: "web-abc", TemplateHash: "abc"}
	svc    = &kube.Service{Namespace: "default", Name: "web"}
)

// The entry node (node2, forward) and the pod's node (node1, server) see
// the same connection; their paths as the namer builds them.
func twoViews() (entry, server path.Path) {
	entry = path.Path{Conn: flow.Connection{Node: "node2", Role: flow.RoleForward, Outcome: flow.OutcomeForwarded,
		Start: t0, End: t0, Client: client, Target: lb, PodSrc: snat, PodDst: podIP, SNAT: true,
		NAT: &flow.NAT{Original: conntrack.Tuple{Src: client, Dst: lb}, Reply: conntrack.Tuple{Src: podIP, Dst: snat}, DNAT: true, SNAT: true}},
		Client: path.Peer{Addr: client, Kind: path.PeerExternal}, Entry: kube.EntryLoadBalancer, EntryAddr: lb, EntryNode: "node2",
		Service: svc, Pod: pod, PodNode: "node1", CrossNode: true, SNAT: true,
		Diagnoses: []path.Diagnosis{{Code: path.DiagSNAT, Message: "lost"}, {Code: path.DiagCrossNode, Message: "hop"}}}
	server = path.Path{Conn: flow.Connection{Node: "node1", Role: flow.RoleServer, Outcome: flow.OutcomeOK,
		Start: t0.Add(300 * time.Microsecond), End: t0.Add(5 * time.Millisecond), Client: snat, Target: podIP,
		PodSrc: snat, PodDst: podIP, BytesToServer: 120, BytesToClient: 4000, SRTTMicros: 250},
		Client: path.Peer{Addr: snat, Kind: path.PeerNode, Lost: true}, Entry: kube.EntryDirect, EntryAddr: podIP, EntryNode: "node2",
		Service: svc, Pod: pod, PodNode: "node1", CrossNode: true, SNAT: true}
	return entry, server
}

func TestTraceIDStitchesNodes(t *testing.T) {
	e, s := twoViews()
	a := TraceID(e.Conn.WireKey(), synTime(&e.Conn))
	b := TraceID(s.Conn.WireKey(), synTime(&s.Conn))
	if a != b {
		t.Fatalf("entry and pod node derive different trace IDs: %s %s", a, b)
	}
	other := s.Conn
	other.PodSrc = netip.MustParseAddrPort("192.168.77.12:51001")
	if TraceID(other.WireKey(), synTime(&other)) == a {
		t.Error("different tuples share a trace ID")
	}
	if TraceID(s.Conn.WireKey(), t0.Add(2*EpochSeconds*time.Second)) == a {
		t.Error("a tuple reused two epochs later shares the trace ID")
	}
	if SpanID(a, "node1/server") == SpanID(a, "node2/forward") {
		t.Error("span IDs collide across nodes")
	}
}

func newExporter(t *testing.T, sink *otlpsink.Sink, node, proto string) *Exporter {
	t.Helper()
	cfg := Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: node, MetricInterval: time.Hour, Timeout: 2 * time.Second}
	if proto == "http" {
		cfg.Endpoint, cfg.Protocol = sink.HTTPAddr, "http/protobuf"
	}
	e, err := New(context.Background(), cfg, nil, func() []Drop { return []Drop{{"ringbuf", "on_state", 3}} })
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Two agents export over real OTLP (gRPC and HTTP) into a receiver: their
// spans of one connection share a trace ID, carry hop children and
// diagnosis events, and metrics carry pod and Service names but never the
// client address.
func TestExportOverOTLP(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	ctx := context.Background()
	eEntry := newExporter(t, sink, "node2", "grpc")
	eServer := newExporter(t, sink, "node1", "http")
	entry, server := twoViews()
	eEntry.Path(&entry)
	eServer.Path(&server)
	eServer.Request(&path.Request{Req: flow.Request{Latency: 30 * time.Millisecond}, Pod: pod, Service: svc})
	for _, e := range []*Exporter{eEntry, eServer} {
		if err := e.ForceFlush(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
		if err := e.Shutdown(ctx); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	}
	spans := sink.Spans()
	byName := map[string][]otlpsink.Span{}
	traces := map[string]bool{}
	for _, s := range spans {
		byName[s.Name] = append(byName[s.Name], s)
		traces[s.TraceID] = true
	}
	if len(traces) != 1 {
		t.Fatalf("spans of one connection in %d traces: %+v", len(traces), spans)
	}
	roots := byName["lbpath.connection default/web"]
	if len(roots) != 2 {
		t.Fatalf("want a root span from each node, got %d: %+v", len(roots), spans)
	}
	kinds := map[string]string{}
	for _, r := range roots {
		kinds[r.Resource["k8s.node.name"].(string)] = r.Kind
		if r.Attrs["k8s.pod.name"] != "web-abc-1" || r.Attrs["k8s.service.name"] != "web" || r.Attrs["k8s.deployment.name"] != "web" {
			t.Errorf("root attrs: %v", r.Attrs)
		}
	}
	if kinds["node2"] != "Client" || kinds["node1"] != "Server" {
		t.Errorf("span kinds by node: %v", kinds)
	}
	for _, r := range roots {
		if r.Resource["k8s.node.name"] == "node2" {
			if r.Attrs["client.address"] != "192.168.77.100" || len(r.Events) != 2 {
				t.Errorf("entry span: client %v events %v", r.Attrs["client.address"], r.Events)
			}
		} else if _, has := r.Attrs["client.address"]; has {
			t.Errorf("pod node span claims a client address it lost to SNAT: %v", r.Attrs)
		}
	}
	for _, hop := range []string{"hop lb→node", "hop node→node", "hop node→pod"} {
		if len(byName[hop]) != 1 {
			t.Errorf("hop span %q: %d", hop, len(byName[hop]))
		}
	}

	points := sink.Points()
	seen := map[string]bool{}
	for _, p := range points {
		seen[p.Metric] = true
		if _, bad := p.Attrs["client.address"]; bad {
			t.Errorf("%s carries client.address as a label", p.Metric)
		}
		if p.Metric == MetricConnections && p.Attrs["lbpath.role"] == "server" && p.Attrs["k8s.pod.name"] != "web-abc-1" {
			t.Errorf("connections point without pod: %v", p.Attrs)
		}
		if p.Metric == MetricRequestDuration && (p.Count != 1 || p.Sum < 0.029 || p.Sum > 0.031) {
			t.Errorf("request duration count %d sum %f", p.Count, p.Sum)
		}
		if p.Metric == MetricDropped && p.Attrs["lbpath.stage"] == "ringbuf" && p.Value != 3 {
			t.Errorf("self-metric ringbuf drops = %v, want 3", p.Value)
		}
	}
	for _, m := range []string{MetricConnections, MetricBytes, MetricRequests, MetricRequestDuration, MetricConnectionDuration, MetricRTT, MetricDropped} {
		if !seen[m] {
			t.Errorf("metric %s not received", m)
		}
	}
}

// With the collector refusing everything, the exporter counts what it
// lost; with its queue full it drops and counts instead of blocking.
func TestExportFailuresAreCounted(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	sink.SetFail(true)
	e := newExporter(t, sink, "node1", "grpc")
	_, server := twoViews()
	e.Path(&server)
	ctx := context.Background()
	_ = e.ForceFlush(ctx)
	if e.Stats.SpansFailed.Load() == 0 {
		t.Errorf("failed export not counted")
	}
	e.Shutdown(ctx)

	// A tiny queue and a dead endpoint: Path never blocks; overflow counted.
	cfg := Config{Endpoint: "127.0.0.1:1", Insecure: true, QueueSize: 1, Timeout: 100 * time.Millisecond, NoMetrics: true}
	e2, err := New(ctx, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 10000 {
		e2.Path(&server)
	}
	if time.Since(start) > time.Second {
		t.Errorf("Path blocked for %v", time.Since(start))
	}
	if e2.Stats.QueueFull.Load() == 0 {
		t.Errorf("queue overflow not counted")
	}
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	e2.Shutdown(sctx)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{Protocol: "udp"}, "otlp-protocol"},
		{Config{Compression: "zstd"}, "otlp-compression"},
		{Config{ClientAddresses: "mask"}, "client-addresses"},
		{Config{CertFile: "/x"}, "otlp-cert"},
		{Config{CAFile: "/nonexistent"}, "otlp-ca"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%+v: err %v, want it to name %s", tc.cfg, err, tc.field)
		}
	}
	if _, err := ParseHeaders("a=b,broken"); err == nil {
		t.Error("bad header accepted")
	}
}

// The collector refuses everything for a while, then comes back: what was
// lost is counted, the queue stays bounded, and export resumes.
func TestExportResumesAfterOutage(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	ctx := context.Background()
	e, err := New(ctx, Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: "node1", MetricInterval: time.Hour,
		QueueSize: 64, Timeout: 200 * time.Millisecond}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(ctx)
	_, server := twoViews()
	sink.SetFail(true)
	for range 500 {
		e.Path(&server)
	}
	_ = e.ForceFlush(ctx)
	lost := e.Stats.SpansFailed.Load() + 2*e.Stats.QueueFull.Load()
	if lost == 0 {
		t.Fatal("outage lost nothing according to the counters")
	}
	if got, _ := sink.Counts(); got != 0 {
		t.Fatalf("sink accepted %d spans while failing", got)
	}
	if len(e.queue) > cap(e.queue) {
		t.Fatalf("queue grew past its bound")
	}
	sink.SetFail(false)
	failedBefore := e.Stats.SpansFailed.Load()
	for range 10 {
		e.Path(&server)
	}
	if err := e.ForceFlush(ctx); err != nil {
		t.Fatalf("flush after recovery: %v", err)
	}
	if got, _ := sink.Counts(); got != 20 {
		t.Errorf("after recovery the sink got %d spans, want 20 (10 connections × root+hop)", got)
	}
	if e.Stats.SpansFailed.Load() != failedBefore {
		t.Errorf("spans failed after recovery")
	}
	// Every connection is either delivered or counted as lost.
	if total := uint64(500)*2 - lost; total != 0 {
		t.Errorf("%d of 1000 outage spans neither delivered nor counted", total)
	}
}

// The node's conntrack table is exported as gauges and a drop counter by
// reason once the agent hands over its reader; a failing reader is counted
// (node_stats_failed) instead of failing the whole collection.
func TestNodeConntrackMetrics(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	e := newExporter(t, sink, "node1", "grpc")
	defer e.Shutdown(context.Background())
	var fail atomic.Bool
	e.SetNodeStats(func() (conntrack.TableStats, error) {
		if fail.Load() {
			return conntrack.TableStats{}, errors.New("netns gone")
		}
		return conntrack.TableStats{Entries: 100, Max: 128, Drop: 7, EarlyDrop: 2, InsertFailed: 1}, nil
	})
	ctx := context.Background()
	if err := e.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, p := range sink.Points() {
		name := p.Metric
		if r, ok := p.Attrs["lbpath.reason"]; ok {
			name += "/" + r.(string)
		}
		got[name] = p.Value
	}
	for name, want := range map[string]float64{
		MetricConntrackEntries: 100, MetricConntrackMax: 128,
		MetricConntrackDrops + "/drop": 7, MetricConntrackDrops + "/early_drop": 2, MetricConntrackDrops + "/insert_failed": 1,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (exported: %v), want %v", name, v, ok, want)
		}
	}
	fail.Store(true)
	if err := e.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.Stats.NodeStatsFailed.Load(); n != 1 {
		t.Errorf("node_stats_failed = %d after one failed read, want 1", n)
	}
}

// The chart gives the agents the collector Service's address in Kubernetes'
// Service link form, tcp://host:port (no DNS lookup): gRPC export to it
// delivers.
func TestExportToServiceLinkEndpoint(t *testing.T) {
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Stop()
	ctx := context.Background()
	e, err := New(ctx, Config{Endpoint: "tcp://" + sink.GRPCAddr, Insecure: true, Node: "node1", MetricInterval: time.Hour,
		Timeout: 2 * time.Second}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, server := twoViews()
	e.Path(&server)
	if err := e.ForceFlush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if err := e.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if spans, points := sink.Counts(); spans == 0 || points == 0 {
		t.Errorf("received %d spans, %d points; want both", spans, points)
	}
}
