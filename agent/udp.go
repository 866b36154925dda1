package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/exporter"
)

// UDPConfig configures UDP flow capture (docs/ARCHITECTURE.md, UDP).
type UDPConfig struct {
	// Disabled leaves the UDP programs out (no per-packet hook at all).
	Disabled bool
	// Idle is how long a UDP flow must have seen no datagram before its
	// record is emitted. It must stay below conntrack's UDP timeout (30 s
	// by default) so the flow's NAT entry is still there to join. Default
	// DefaultUDPIdle.
	Idle time.Duration
	// Capture sizes the kernel side.
	Capture capture.UDPConfig
}

// DefaultUDPIdle ends a UDP flow after 5 s without a datagram: a DNS
// exchange is over in milliseconds, a client's retry comes within the
// resolver's 5 s timeout on the same flow, and the record is out well
// before conntrack forgets the translation (30 s).
const DefaultUDPIdle = 5 * time.Second

// MaxUDPIdle keeps the idle time below nf_conntrack_udp_timeout (30 s):
// a longer one would emit records after their NAT entry is gone.
const MaxUDPIdle = 25 * time.Second

// udpSweepEvery is how often idle flows are taken out of the kernel table.
const udpSweepEvery = 250 * time.Millisecond

func (c *UDPConfig) validate() error {
	if c.Idle < 0 || c.Idle > MaxUDPIdle {
		return fmt.Errorf("udp-idle: %v must be between 0 (default %v) and %v (below conntrack's UDP timeout)", c.Idle, DefaultUDPIdle, MaxUDPIdle)
	}
	return nil
}

func (c *UDPConfig) idle() time.Duration {
	if c.Idle == 0 {
		return DefaultUDPIdle
	}
	return c.Idle
}

// udpSide is the agent's UDP part: the kernel programs (nil when they
// could not load, or are disabled) and the join table.
type udpSide struct {
	capture *capture.UDP
	table   *flow.UDPTable
	decode  uint64
	mu      sync.Mutex
	// Unavailable is why UDP capture is off ("" when it runs).
	unavailable string
}

// openUDP loads the UDP programs; a failure is logged and leaves UDP out,
// TCP capture runs as before.
func (a *Agent) openUDP(fc flow.Config, clock capture.Clock) {
	a.udp = &udpSide{}
	if a.cfg.UDP.Disabled {
		a.udp.unavailable = "disabled by configuration"
		return
	}
	u, err := capture.OpenUDP(a.cfg.UDP.Capture, a.log)
	if err != nil {
		a.udp.unavailable = err.Error()
		a.log.Warn("UDP capture unavailable; continuing with TCP only", "reason", err)
		return
	}
	a.udp.capture = u
	a.udp.table = flow.NewUDPTable(fc, clock, a.onConnection)
}

// onNAT feeds a conntrack entry to the table of its transport.
func (a *Agent) onNAT(e *conntrack.Entry) {
	a.table.NAT(e)
	if a.udp.table != nil {
		a.udp.table.NAT(e)
	}
}

// runUDP reads UDP events until ctx is done.
func (a *Agent) runUDP(ctx context.Context) error {
	if a.udp.capture == nil {
		return nil
	}
	return a.udp.capture.Run(ctx, a.udp.table.Event, func(error) {
		a.udp.mu.Lock()
		a.udp.decode++
		a.udp.mu.Unlock()
	})
}

// sweepUDP emits the records of flows idle for the idle time (all of them
// when final) and the forward records that waited long enough.
func (a *Agent) sweepUDP(final bool) {
	if a.udp.capture == nil {
		return
	}
	idle := a.cfg.UDP.idle()
	if final {
		idle = 0
	}
	if _, err := a.udp.capture.Expire(capture.MonoNow(), idle, a.udp.table.Flow); err != nil {
		a.log.Warn("read UDP flows", "err", err)
	}
	a.udp.table.Tick(capture.MonoNow())
}

// UDPStats is the UDP side's counters (zero when UDP capture is off).
type UDPStats struct {
	Available   bool
	Unavailable string
	Kernel      capture.UDPCounters
	Decode      uint64
	Flow        *flow.UDPStats
}

// UDPStats reads the UDP side's counters.
func (a *Agent) UDPStats() UDPStats {
	s := UDPStats{Unavailable: a.udp.unavailable, Flow: &flow.UDPStats{}}
	if a.udp.capture == nil {
		return s
	}
	s.Available = true
	s.Flow = &a.udp.table.Stats
	if k, err := a.udp.capture.Counters(); err == nil {
		s.Kernel = k
	}
	a.udp.mu.Lock()
	s.Decode = a.udp.decode
	a.udp.mu.Unlock()
	return s
}

// UDP exposes the UDP kernel side (nil when off), for benchmarks.
func (a *Agent) UDP() *capture.UDP { return a.udp.capture }

// udpDrops lists the UDP side's losses for lbpath.agent.dropped.
func (a *Agent) udpDrops() []exporter.Drop {
	s := a.UDPStats()
	return []exporter.Drop{
		{Stage: "kernel", Reason: "udp_flow_table_full", Count: s.Kernel.FlowTableFull},
		{Stage: "ringbuf", Reason: "udp_flow", Count: s.Kernel.RingDropFlow},
		{Stage: "ringbuf", Reason: "udp_exchange", Count: s.Kernel.RingDropExchange},
		{Stage: "capture", Reason: "udp_decode_error", Count: s.Decode},
		{Stage: "flow", Reason: "udp_nat_table_full", Count: s.Flow.NATTableFull.Load()},
		{Stage: "flow", Reason: "udp_nat_expired", Count: s.Flow.NATExpired.Load()},
		{Stage: "flow", Reason: "udp_open_table_full", Count: s.Flow.OpenTableFull.Load()},
		{Stage: "flow", Reason: "udp_dialed_table_full", Count: s.Flow.DialedTableFull.Load()},
	}
}

// logUDPStats adds the UDP side to the periodic stats log.
func (a *Agent) logUDPStats() {
	s := a.UDPStats()
	if !s.Available {
		a.log.Info("udp stats", "node", a.cfg.Node, "unavailable", s.Unavailable)
		return
	}
	a.log.Info("udp stats", "node", a.cfg.Node,
		"emitted", s.Flow.Emitted.Load(), "joined", s.Flow.Joined.Load(), "no_nat", s.Flow.NoNAT.Load(),
		"forwarded", s.Flow.Forwarded.Load(), "exchanges", s.Flow.Exchanges.Load(), "out_of_scope", s.Flow.OutOfScope.Load(),
		"flow_table_full", s.Kernel.FlowTableFull, "ringbuf_drop_flow", s.Kernel.RingDropFlow,
		"ringbuf_drop_exchange", s.Kernel.RingDropExchange, "decode_errors", s.Decode,
		"nat_table_full", s.Flow.NATTableFull.Load(), "open_table_full", s.Flow.OpenTableFull.Load())
}
