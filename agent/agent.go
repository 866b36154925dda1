// Package agent wires the node agent's stages together: capture and
// conntrack feed flow, and every finished Connection goes to one sink.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/netns"
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
	// Flow bounds the join tables (Node and Scope are set by the agent).
	Flow flow.Config
	// StatsInterval is how often counters are logged; 0 disables.
	StatsInterval time.Duration
}

// Validate checks the configuration and names the field at fault.
func (c *Config) Validate() error {
	if c.Node == "" {
		return errors.New("node: must not be empty (set --node or NODE_NAME)")
	}
	if c.Netns != "" {
		if _, err := netns.Inode(c.Netns); err != nil {
			return fmt.Errorf("netns: %w", err)
		}
	}
	for _, p := range c.PodCIDRs {
		if !p.IsValid() {
			return fmt.Errorf("pod-cidr: %v is not a valid prefix", p)
		}
	}
	if rb := c.Capture.RingBufferBytes; rb != 0 && (rb&(rb-1) != 0 || rb < 4096) {
		return fmt.Errorf("ring-buffer-bytes: %d must be a power of two of at least 4096", rb)
	}
	if c.Flow.JoinWait < 0 {
		return fmt.Errorf("join-wait: %v must not be negative", c.Flow.JoinWait)
	}
	return nil
}

// Stats is every counter the agent keeps, for logs and self-metrics.
type Stats struct {
	Kernel    capture.Counters
	Decode    uint64 // ring-buffer records that failed to decode
	Conntrack *conntrack.Stats
	Flow      *flow.Stats
}

// Agent is one running node agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	capture *capture.Capture
	ct      *conntrack.Listener
	table   *flow.Table
	decode  uint64
	mu      sync.Mutex
}

// New loads and attaches the eBPF programs; records go to sink, which is
// called from one goroutine at a time and must not keep the pointer.
func New(cfg Config, log *slog.Logger, sink func(*flow.Connection)) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{cfg: cfg, log: log}
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
	a.table = flow.NewTable(fc, capture.NewClock(), sink)
	a.ct = conntrack.New(conntrack.Config{Netns: cfg.Netns}, log)
	var err error
	a.capture, err = capture.Open(cfg.Capture, log)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Programs lists the attached eBPF programs.
func (a *Agent) Programs() []string { return a.capture.Programs() }

// Capture exposes the kernel side (program IDs for tests and benchmarks).
func (a *Agent) Capture() *capture.Capture { return a.capture }

// Run captures until ctx is done, then flushes pending records and
// releases every kernel object.
func (a *Agent) Run(ctx context.Context) error {
	defer a.capture.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(3)
	go func() {
		defer wg.Done()
		err := a.capture.Run(ctx, a.table.Socket, func(err error) {
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
		if err := a.ct.Run(ctx, a.table.NAT); err != nil {
			errc <- err
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var last time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				a.table.Tick(capture.MonoNow())
				if a.cfg.StatsInterval > 0 && now.Sub(last) >= a.cfg.StatsInterval {
					last = now
					a.logStats()
				}
			}
		}
	}()
	wg.Wait()
	a.table.Flush()
	a.logStats()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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
	return Stats{Kernel: k, Decode: d, Conntrack: &a.ct.Stats, Flow: &a.table.Stats}
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
		"open_table_full", s.Flow.OpenTableFull.Load(), "nat_expired", s.Flow.NATExpired.Load(),
		"nat_entries", nat, "open", open, "pending", pend)
}
