// Package agent wires the node agent's stages together: capture and
// conntrack feed flow, and every finished Connection goes to one sink.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/agent/podns"
	"github.com/lbpath/lbpath/exporter"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// Config is the agent's configuration. Validate reports the first invalid
// field.
type Config struct {
	// Node names this node in every record.
	Node string
	// Netns is the node's network namespace (where conntrack lives); empty
	// for the agent's own, as in a hostNetwork DaemonSet.
	Netns string
	// PodCIDRs, when set, limits socket records to this node: sockets whose
	// local address is in one of them, or that live in the node's own
	// namespace. Needed only where simulated nodes share a kernel.
	PodCIDRs []netip.Prefix
	// Scope, when set, replaces the PodCIDRs rule: it decides per socket
	// (local address, netns inode) whether it belongs to this node. The
	// testbed uses it to scope by namespace, which stays right even when
	// two simulated clusters reuse the same addresses.
	Scope func(local netip.Addr, netns uint32) bool
	// Capture sizes the kernel side.
	Capture capture.Config
	// UDP configures UDP flow capture (agent/udp.go).
	UDP UDPConfig
	// Flow bounds the join tables (Node and Scope are set by the agent).
	Flow flow.Config
	// StatsInterval is how often counters are logged; 0 disables.
	StatsInterval time.Duration
	// ShutdownTimeout bounds the stop once Run's context is done: the
	// records still pending are flushed and the OTLP export gets until
	// then; what it has not delivered is counted as failed export. Keep
	// it below the pod's terminationGracePeriodSeconds. 0 takes
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Kube, when set, names connections from the API server.
	Kube *kube.Config
	// KubeClient overrides the client built from Kube (tests).
	KubeClient kubernetes.Interface
	// Metadata bounds how long connections wait for names.
	Metadata path.PipelineConfig
	// Path tunes the diagnoses.
	Path path.Config
	// Export, when set, sends spans and metrics over OTLP.
	Export *exporter.Config
	// ProcRoot is the host's /proc, where the pods' namespaces and cgroups
	// are read to name server pods exactly (agent/podns); empty: /proc.
	ProcRoot string
	// NoPodNetns names server pods by IP only (the namespace resolver is
	// not started).
	NoPodNetns bool
	// NodeSpans exports spans for the node's own connections too
	// (path.Class node_local, apiserver, kubelet, external, lb_health_check); by default
	// only connections that involve a pod or a Service, or that could not
	// be classified, become spans. Node connections are never in the
	// per-pod metrics: they are counted by class.
	NodeSpans bool
}

// Outputs receive what the agent produces. Each is optional and must not
// keep the pointer it is given.
type Outputs struct {
	// Connection receives every per-node record before naming.
	Connection func(*flow.Connection)
	// Path receives every named record (names empty without Kube).
	Path func(*path.Path)
	// Request receives every named request/response turn.
	Request func(*path.Request)
}

// DefaultShutdownTimeout leaves half of the chart's 10 s grace period
// for the kubelet's signal delivery, the agent's last log lines and exit.
const DefaultShutdownTimeout = 5 * time.Second

// Bounds of ShutdownTimeout: below the minimum not even a reachable
// collector gets the last batch; beyond the maximum a typo (5m for 5s)
// would hold a node's agent in Terminating for long.
const (
	MinShutdownTimeout = 100 * time.Millisecond
	MaxShutdownTimeout = 5 * time.Minute
)

// Validate checks the configuration and names the field at fault.
func (c *Config) Validate() error {
	if c.Node == "" {
		return errors.New("node: must not be empty (set --node or NODE_NAME)")
	}
	if c.Netns != "" {
		if err := netns.Check(c.Netns); err != nil {
			return fmt.Errorf("netns: %w", err)
		}
	}
	for _, p := range c.PodCIDRs {
		if !p.IsValid() {
			return fmt.Errorf("pod-cidr: %v is not a valid prefix", p)
		}
	}
	// The kernel wants a power of two that is a whole number of pages
	// (64 KiB pages on some arm64 kernels).
	if rb := c.Capture.RingBufferBytes; rb != 0 && (rb&(rb-1) != 0 || rb < 4096 || rb%uint32(os.Getpagesize()) != 0) {
		return fmt.Errorf("ring-buffer-bytes: %d must be a power of two and a multiple of the page size (%d)", rb, os.Getpagesize())
	}
	if c.Flow.JoinWait < 0 {
		return fmt.Errorf("join-wait: %v must not be negative", c.Flow.JoinWait)
	}
	if c.Metadata.MetadataWait < 0 {
		return fmt.Errorf("metadata-wait: %v must not be negative", c.Metadata.MetadataWait)
	}
	if c.Path.LBPendingAfter < 0 {
		return fmt.Errorf("lb-pending-after: %v must not be negative", c.Path.LBPendingAfter)
	}
	if c.StatsInterval < 0 {
		return fmt.Errorf("stats-interval: %v must not be negative (0 logs the counters only at exit)", c.StatsInterval)
	}
	if c.ShutdownTimeout != 0 && (c.ShutdownTimeout < MinShutdownTimeout || c.ShutdownTimeout > MaxShutdownTimeout) {
		return fmt.Errorf("shutdown-timeout: %v must be between %v and %v", c.ShutdownTimeout, MinShutdownTimeout, MaxShutdownTimeout)
	}
	if err := c.UDP.validate(); err != nil {
		return err
	}
	if c.Export != nil {
		if err := c.Export.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Stats is every counter the agent keeps, for logs and self-metrics.
type Stats struct {
	Kernel    capture.Counters
	Decode    uint64 // ring-buffer records that failed to decode
	Conntrack *conntrack.Stats
	Flow      *flow.Stats
	Pipeline  *path.PipelineStats // nil without Kube
	Kube      *kube.Watcher       // nil without Kube
	Export    *exporter.Stats     // nil without Export
	// NodeConnections counts the node's own connections by class.
	NodeConnections []path.ClassCount
}

// Agent is one running node agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	out     Outputs
	capture *capture.Capture
	ct      *conntrack.Listener
	table   *flow.Table
	watcher *kube.Watcher
	// gateways starts the Gateway API watch (nil with a given clientset:
	// it needs a dynamic client from the same configuration).
	gateways func(context.Context)
	pipeline *path.Pipeline
	exp      *exporter.Exporter
	api      *kube.APIStats
	decode   uint64
	mu       sync.Mutex
	// lastTick is when the main loop last ran (UnixNano; 0 before Run):
	// the liveness signal of the health endpoint.
	lastTick atomic.Int64
	// netnsIno identifies the node namespace attached to at start.
	netnsIno uint32
	// local is the node's own addresses, re-read every localInterval.
	local        path.Local
	localFailing bool
	// classes counts the node's own connections by class.
	classes path.ClassCounts
	// probes counts the load-balancer health probes per Service.
	probes path.ProbeCounts
	// podns names server pods from their sockets' namespaces (nil
	// without Kube); naming counts how each server pod was named.
	podns  *podns.Resolver
	naming path.NamingCounts
	// udp is the UDP capture and join (agent/udp.go).
	udp *udpSide
	// sinkMu serializes the outputs: TCP and UDP records come from two
	// tables, each emitting under its own lock.
	sinkMu sync.Mutex
}

// localInterval is how often the node's own addresses are re-read. A
// connection is classified at least Settle (1 s) after it started, so the
// read it sees is newer than the connection: an address added just before
// it is known (path.Local).
const localInterval = time.Second

// New loads and attaches the eBPF programs; records go to sink, which is
// called from one goroutine at a time and must not keep the pointer.
func New(cfg Config, log *slog.Logger, out Outputs) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{cfg: cfg, log: log, out: out}
	if cfg.Netns != "" {
		ino, err := netns.Inode(cfg.Netns)
		if err != nil {
			return nil, fmt.Errorf("netns: %w", err)
		}
		a.netnsIno = ino
	}
	if cfg.Kube != nil || cfg.KubeClient != nil {
		cs := cfg.KubeClient
		kc := kube.Config{}
		if cfg.Kube != nil {
			kc = *cfg.Kube
		}
		api := &kube.APIStats{}
		var dyn dynamic.Interface
		if cs == nil {
			var err error
			if cs, err = kc.Client(api); err != nil {
				return nil, err
			}
			if dyn, err = kc.Dynamic(api); err != nil {
				return nil, err
			}
		}
		w, err := kube.NewWatcher(cs, kc, log)
		if err != nil {
			return nil, err
		}
		if dyn != nil {
			disc := cs.Discovery()
			a.gateways = func(ctx context.Context) { w.WatchGateways(ctx, disc, dyn, kc.GatewayRecheck) }
		}
		api.Fresh = &w.Fresh
		a.api = api
		a.watcher = w
		pc := cfg.Path
		pc.Node = cfg.Node
		pc.Local = &a.local
		pc.Current = w.CurrentAt
		pc.Ingress = w.Ingress
		a.podns = openPodns(cfg, log)
		pc.Netns = a.podns
		a.pipeline = path.NewPipeline(path.NewNamer(pc, w.Index), cfg.Metadata, a.emitPath, a.emitRequest)
	}
	fc := cfg.Flow
	fc.Node = cfg.Node
	if cfg.Scope != nil {
		fc.Scope = cfg.Scope
	} else if len(cfg.PodCIDRs) > 0 {
		nodeNS, err := netns.Inode(cfg.Netns)
		if err != nil {
			return nil, err
		}
		cidrs := cfg.PodCIDRs
		fc.Scope = func(local netip.Addr, ns uint32) bool {
			if ns == nodeNS {
				return true
			}
			for _, p := range cidrs {
				if p.Contains(local) {
					return true
				}
			}
			return false
		}
	}
	fc.Requests = a.onRequest
	a.refreshLocal(time.Now())
	clock := capture.NewClock()
	a.table = flow.NewTable(fc, clock, a.onConnection)
	a.ct = conntrack.New(conntrack.Config{Netns: cfg.Netns}, log)
	var err error
	a.capture, err = capture.Open(cfg.Capture, log)
	if err != nil {
		return nil, err
	}
	a.openUDP(fc, clock)
	// The exporter comes last: its metric callbacks read every counter
	// above from their first collection on.
	if cfg.Export != nil {
		ec := *cfg.Export
		ec.Node = cfg.Node
		exp, err := exporter.New(context.Background(), ec, log, a.Drops)
		if err != nil {
			a.capture.Close()
			if a.udp.capture != nil {
				a.udp.capture.Close()
			}
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		exp.SetNodeStats(a.ct.Table)
		exp.SetNodeConnections(a.classes.Snapshot)
		if a.watcher != nil {
			exp.SetHealthProbes(a.HealthProbes)
			exp.SetPodNaming(a.PodNaming)
		}
		a.exp = exp
	}
	return a, nil
}

func (a *Agent) onConnection(c *flow.Connection) {
	a.sinkMu.Lock()
	defer a.sinkMu.Unlock()
	if a.out.Connection != nil {
		a.out.Connection(c)
	}
	if a.pipeline != nil {
		a.pipeline.Connection(c)
		return
	}
	if a.out.Path != nil || a.exp != nil {
		p := path.Unnamed(c, &a.local)
		a.emitPath(&p)
	}
}

func (a *Agent) onRequest(r *flow.Request) {
	a.sinkMu.Lock()
	defer a.sinkMu.Unlock()
	if a.pipeline != nil {
		a.pipeline.Request(r)
		return
	}
	if a.out.Request != nil || a.exp != nil {
		a.emitRequest(&path.Request{Req: *r})
	}
}

// emitPath sends every record to the outputs (JSONL keeps them all) and
// to the exporter those that are the cluster's or unclassified; the node's
// own connections are counted by class and become spans only with
// NodeSpans.
func (a *Agent) emitPath(p *path.Path) {
	node := p.Class.Node()
	if node {
		a.classes.Add(p.Class)
		a.probes.Add(p)
	}
	a.naming.Add(p)
	if a.exp != nil && (!node || a.cfg.NodeSpans) {
		a.exp.Path(p)
	}
	if a.out.Path != nil {
		a.out.Path(p)
	}
}

func (a *Agent) emitRequest(r *path.Request) {
	if a.exp != nil {
		a.exp.Request(r)
	}
	if a.out.Request != nil {
		a.out.Request(r)
	}
}

// HealthProbes is the load-balancer health probes that arrived at this
// node per Service and outcome, for every Service that has a
// healthCheckNodePort now (nil without the API server: no probe can be
// told then).
func (a *Agent) HealthProbes() []path.ProbeCount {
	if a.watcher == nil {
		return nil
	}
	return a.probes.Snapshot(a.watcher.Index.Services())
}

// Drops lists every loss counter of the agent's stages for the
// lbpath.agent.dropped self-metric and the health endpoint's /metrics
// (the exporter's own losses are in Exporter.Drops).
func (a *Agent) Drops() []exporter.Drop {
	s := a.Stats()
	var d []exporter.Drop
	for prog, n := range s.Kernel.RingBufferDrops {
		d = append(d, exporter.Drop{Stage: "ringbuf", Reason: prog, Count: n})
	}
	d = append(d,
		exporter.Drop{Stage: "kernel", Reason: "conn_table_full", Count: s.Kernel.ConnTableFull},
		exporter.Drop{Stage: "capture", Reason: "decode_error", Count: s.Decode},
		exporter.Drop{Stage: "conntrack", Reason: "overflow", Count: s.Conntrack.Overflows.Load()},
		exporter.Drop{Stage: "conntrack", Reason: "dump_error", Count: s.Conntrack.DumpErrors.Load()},
		exporter.Drop{Stage: "conntrack", Reason: "bad_event", Count: s.Conntrack.BadEvents.Load()},
		exporter.Drop{Stage: "flow", Reason: "nat_table_full", Count: s.Flow.NATTableFull.Load()},
		exporter.Drop{Stage: "flow", Reason: "nat_expired", Count: s.Flow.NATExpired.Load()},
		exporter.Drop{Stage: "flow", Reason: "open_table_full", Count: s.Flow.OpenTableFull.Load()},
		exporter.Drop{Stage: "flow", Reason: "pending_table_full", Count: s.Flow.PendingTableFull.Load()},
		// connect() translations lost: their records read as direct.
		exporter.Drop{Stage: "flow", Reason: "dialed_table_full", Count: s.Flow.DialedTableFull.Load()},
		exporter.Drop{Stage: "flow", Reason: "dialed_expired", Count: s.Flow.DialedExpired.Load()},
	)
	d = append(d, a.udpDrops()...)
	if s.Pipeline != nil {
		d = append(d,
			exporter.Drop{Stage: "metadata", Reason: "unattributed", Count: s.Pipeline.Unattributed.Load()},
			exporter.Drop{Stage: "metadata", Reason: "wait_full", Count: s.Pipeline.WaitFull.Load()},
			exporter.Drop{Stage: "metadata", Reason: "request_unattributed", Count: s.Pipeline.RequestsUnattributed.Load()},
			exporter.Drop{Stage: "metadata", Reason: "watch_error", Count: a.watcher.WatchErrors.Load()},
			exporter.Drop{Stage: "metadata", Reason: "api_request_failed", Count: a.api.Failures.Load()},
			// A Service annotation lbpath could not use: its setting is
			// lost (the agent's applies), counted once per value.
			exporter.Drop{Stage: "metadata", Reason: "bad_annotation", Count: a.watcher.BadAnnotations.Load()},
			// ExternalName Services: failed lookups (the last answer is
			// kept), names past the per-round bound, and lookups of an
			// address several Services resolved to (left unnamed).
			exporter.Drop{Stage: "metadata", Reason: "externalname_lookup_failed", Count: a.watcher.Index.ExternalNames.Errors.Load()},
			exporter.Drop{Stage: "metadata", Reason: "externalname_skipped", Count: a.watcher.Index.ExternalNames.Skipped.Load()},
			exporter.Drop{Stage: "metadata", Reason: "externalname_ambiguous", Count: a.watcher.Index.ExternalNames.Ambiguous.Load()},
			// Ingress routes unknown (RBAC or API): proxy hops unnamed.
			exporter.Drop{Stage: "metadata", Reason: "ingress_watch_error", Count: a.watcher.IngressErrors.Load()},
		)
	}
	return d
}

// LastTick is when the main loop last ran; zero before Run started. The
// loop runs every 100 ms, so a tick older than a few seconds means the
// agent is stuck.
func (a *Agent) LastTick() time.Time {
	n := a.lastTick.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Programs lists the attached eBPF programs.
func (a *Agent) Programs() []string { return a.capture.Programs() }

// Watcher exposes the Kubernetes watcher (nil without Kube).
func (a *Agent) Watcher() *kube.Watcher { return a.watcher }

// APIStats counts requests to the API server (nil without Kube).
func (a *Agent) APIStats() *kube.APIStats { return a.api }

// Exporter exposes the OTLP exporter (nil without Export).
func (a *Agent) Exporter() *exporter.Exporter { return a.exp }

// ConntrackTable reads the node's conntrack table size and loss counters:
// the only record of connections whose SYN the kernel dropped because the
// table was full.
func (a *Agent) ConntrackTable() (conntrack.TableStats, error) { return a.ct.Table() }

// TableSizes reports the join tables' sizes (NAT entries, open sockets,
// pending records), so tests can prove nothing stays behind in them.
func (a *Agent) TableSizes() (nat, open, pending int) { return a.table.Sizes() }

// Capture exposes the kernel side (program IDs for tests and benchmarks).
func (a *Agent) Capture() *capture.Capture { return a.capture }

// Run captures until ctx is done, then flushes pending records and
// releases every kernel object.
func (a *Agent) Run(ctx context.Context) error {
	defer a.capture.Close()
	if a.udp.capture != nil {
		defer a.udp.capture.Close()
	}
	// The shutdown budget counts from the moment the caller said stop.
	var stopAt atomic.Int64
	defer context.AfterFunc(ctx, func() { stopAt.Store(time.Now().UnixNano()) })()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.watcher != nil {
		a.watcher.Run(ctx)
		if a.gateways != nil {
			a.gateways(ctx)
		}
	}
	if a.podns != nil {
		go a.podns.Run(ctx)
	}
	a.lastTick.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Add(4)
	go func() {
		defer wg.Done()
		if err := a.runUDP(ctx); err != nil {
			errc <- err
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		err := a.capture.Run(ctx, a.socket, func(err error) {
			a.mu.Lock()
			a.decode++
			a.mu.Unlock()
		})
		if err != nil {
			errc <- err
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		if err := a.ct.Run(ctx, a.onNAT); err != nil {
			errc <- err
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var last, lastNetns, lastLocal, lastUDP time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				a.lastTick.Store(now.UnixNano())
				if now.Sub(lastLocal) >= localInterval {
					lastLocal = now
					a.refreshLocal(now)
				}
				if now.Sub(lastNetns) >= netnsCheckInterval {
					lastNetns = now
					if err := a.checkNetns(); err != nil {
						errc <- err
						cancel()
						return
					}
				}
				a.table.Tick(capture.MonoNow())
				if now.Sub(lastUDP) >= udpSweepEvery {
					lastUDP = now
					a.sweepUDP(false)
				}
				if a.pipeline != nil {
					a.pipeline.Tick(now)
				}
				if a.cfg.StatsInterval > 0 && now.Sub(last) >= a.cfg.StatsInterval {
					last = now
					a.logStats()
				}
			}
		}
	}()
	wg.Wait()
	deadline := time.Now().Add(a.shutdownTimeout())
	if t := stopAt.Load(); t != 0 {
		deadline = time.Unix(0, t).Add(a.shutdownTimeout())
	}
	a.table.Flush()
	a.sweepUDP(true)
	if a.pipeline != nil {
		a.pipeline.Flush()
	}
	if a.exp != nil {
		// Logs what it could not deliver, once, and counts it.
		sctx, scancel := context.WithDeadline(context.Background(), deadline)
		_ = a.exp.Shutdown(sctx)
		scancel()
	}
	a.logStats()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// refreshLocal re-reads the node's own addresses. When that fails the last
// read stays; it ages, and path then no longer concludes that an address
// is not the node's (the safe side). Failures are logged when they start
// and stop.
func (a *Agent) refreshLocal(now time.Time) {
	addrs, err := netns.Addrs(a.cfg.Netns)
	if err != nil {
		if !a.localFailing {
			a.log.Warn("read the node's addresses (node traffic is classified from the last read)", "node", a.cfg.Node, "err", err)
		}
		a.localFailing = true
		return
	}
	if a.localFailing {
		a.log.Info("reading the node's addresses again", "node", a.cfg.Node)
	}
	a.localFailing = false
	a.local.Set(addrs, now)
}

func (a *Agent) shutdownTimeout() time.Duration {
	if a.cfg.ShutdownTimeout > 0 {
		return a.cfg.ShutdownTimeout
	}
	return DefaultShutdownTimeout
}

// ErrNodeNetnsGone is returned by Run when the node's network namespace
// (Config.Netns) was deleted or replaced under the running agent.
var ErrNodeNetnsGone = errors.New("node network namespace gone")

// netnsCheckInterval is how often Run checks that Config.Netns still names
// the namespace the agent attached to.
const netnsCheckInterval = time.Second

// checkNetns fails once the node namespace is no longer the one the agent
// attached to. The agent's own netlink sockets keep a deleted namespace
// alive, so nothing else would ever fail: the agent would pin a dead
// namespace (its interfaces, routes and conntrack table) and report an
// empty node forever. Exiting lets the DaemonSet restart it on the current
// namespace and releases the old one.
func (a *Agent) checkNetns() error {
	if a.cfg.Netns == "" {
		return nil
	}
	ino, err := netns.Inode(a.cfg.Netns)
	if err != nil {
		return fmt.Errorf("%w: %s was deleted under the agent: %w", ErrNodeNetnsGone, a.cfg.Netns, err)
	}
	if ino != a.netnsIno {
		return fmt.Errorf("%w: %s now names another namespace (inode %d, attached to %d)", ErrNodeNetnsGone, a.cfg.Netns, ino, a.netnsIno)
	}
	return nil
}

// Stats returns a snapshot of every counter.
func (a *Agent) Stats() Stats {
	k, err := a.capture.Counters()
	if err != nil {
		a.log.Warn("read kernel counters", "err", err)
	}
	a.mu.Lock()
	d := a.decode
	a.mu.Unlock()
	st := Stats{Kernel: k, Decode: d, Conntrack: &a.ct.Stats, Flow: &a.table.Stats, Kube: a.watcher,
		NodeConnections: a.classes.Snapshot()}
	if a.pipeline != nil {
		st.Pipeline = &a.pipeline.Stats
	}
	if a.exp != nil {
		st.Export = &a.exp.Stats
	}
	return st
}

func (a *Agent) logStats() {
	s := a.Stats()
	nat, open, pend := a.table.Sizes()
	a.log.Info("agent stats", "node", a.cfg.Node,
		"ringbuf_drops", s.Kernel.RingBufferDrops, "conn_table_full", s.Kernel.ConnTableFull,
		"close_untracked", s.Kernel.CloseUntracked, "decode_errors", s.Decode,
		"ct_events", s.Conntrack.Events.Load(), "ct_overflows", s.Conntrack.Overflows.Load(),
		"emitted", s.Flow.Emitted.Load(), "joined", s.Flow.Joined.Load(), "no_nat", s.Flow.NoNAT.Load(),
		"forwarded", s.Flow.Forwarded.Load(), "rejected", s.Flow.Rejected.Load(),
		"nat_table_full", s.Flow.NATTableFull.Load(), "pending_full", s.Flow.PendingTableFull.Load(),
		"open_table_full", s.Flow.OpenTableFull.Load(), "open_expired", s.Flow.OpenExpired.Load(),
		"nat_resynced", s.Flow.NATResynced.Load(), "nat_replaced", s.Flow.NATReplaced.Load(),
		"nat_expired", s.Flow.NATExpired.Load(), "closed_out_of_scope", s.Flow.ClosedOutOfScope.Load(),
		"nat_entries", nat, "open", open, "pending", pend)
	nc := make([]any, 0, 2*len(s.NodeConnections)+2)
	nc = append(nc, "node", a.cfg.Node)
	for _, c := range s.NodeConnections {
		nc = append(nc, string(c.Class), c.Count)
	}
	a.log.Info("node connections", nc...)
	a.logUDPStats()
	if ct, err := a.ct.Table(); err != nil {
		a.log.Warn("read conntrack table stats", "node", a.cfg.Node, "err", err)
	} else {
		a.log.Info("conntrack table", "node", a.cfg.Node, "entries", ct.Entries, "max", ct.Max,
			"drop", ct.Drop, "early_drop", ct.EarlyDrop, "insert_failed", ct.InsertFailed)
	}
	if s.Pipeline != nil {
		if inv := a.pipeline.Namer().Inventory(time.Now()); inv.Hint != "" || len(inv.Pending) > 0 {
			a.log.Warn("load balancers", "loadbalancer_services", inv.LoadBalancers, "pending_external_ip", inv.Pending, "hint", inv.Hint)
		}
		a.log.Info("metadata stats", "node", a.cfg.Node, "synced", a.watcher.Synced(),
			"current", a.watcher.CurrentAt(time.Now()),
			"unattributed", s.Pipeline.Unattributed.Load(), "waiting", a.pipeline.Waiting(),
			"requests_node", s.Pipeline.RequestsNode.Load(),
			"watch_errors", a.watcher.WatchErrors.Load(), "api_failures", a.api.Failures.Load(),
			"kube_events", a.watcher.Events.Load())
	}
	if s.Export != nil {
		a.log.Info("export stats", "node", a.cfg.Node, "connections", s.Export.Connections.Load(),
			"spans_sampled_out", s.Export.SampledOut.Load(),
			"queue_full", s.Export.QueueFull.Load(), "spans_failed", s.Export.SpansFailed.Load(),
			"metric_exports_failed", s.Export.MetricsFailed.Load())
	}
}
