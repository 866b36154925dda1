package flow

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
)

// UDPTable joins UDP flows (capture.UDP) with conntrack's UDP translations
// into Connections with Transport "udp", one per flow per node.
//
// A UDP flow has no close. Its record is emitted when the agent takes it
// out of the kernel table: idle for the UDP idle time (the agent's
// --udp-idle), at shutdown, or never if the kernel table was full when
// its first datagram came (counted there). The flow is then joined with
// the NAT entry of its tuple, which conntrack keeps for
// nf_conntrack_udp_timeout (30 s) after the last datagram: the idle time
// must stay below that (the agent checks), so the entry is still there.
// Unlike TCP, a UDP NAT entry is not consumed by a record: a client that
// reuses its port within conntrack's timeout is the same conntrack entry,
// and each of its flow records joins it.
//
// Forward records: a DNAT entry that no local flow claimed within JoinWait
// is this node's hop of a cross-node flow, as for TCP.
type UDPTable struct {
	cfg   Config
	clock capture.Clock
	emit  func(*Connection)
	Stats UDPStats

	mu        sync.Mutex
	natByPod  map[conntrack.Tuple]*natRec // key: pod side (reply reversed)
	natByOrig map[conntrack.Tuple]*natRec
	open      map[udpOpenKey]uint64     // flows whose first datagram was seen → when (ns)
	fwd       []udpFwd                  // forward candidates, by deadline
	dialed    map[udpDialKey]*udpDialed // connected sockets a socket-LB translated (udpsocketlb.go)
	lastSweep uint64
	scratch   Connection
	reqScr    Request
}

// udpOpenKey is a flow's side and the tuple it claims NAT by.
type udpOpenKey struct {
	client bool
	key    openKey
}

type udpFwd struct {
	deadline uint64
	nat      *natRec
}

// UDPStats counts what the UDP table did; every loss has its own counter.
type UDPStats struct {
	Emitted       atomic.Uint64 // flow and forward records emitted
	Joined        atomic.Uint64 // flow records joined with a NAT entry
	NoNAT         atomic.Uint64 // flow records without NAT (direct)
	Forwarded     atomic.Uint64
	Exchanges     atomic.Uint64 // request/response exchanges passed on as Requests
	OutOfScope    atomic.Uint64 // flows and events of other nodes' sockets
	NATTableFull  atomic.Uint64 // UDP NAT entries not stored: their joins are lost
	OpenTableFull atomic.Uint64 // flows not tracked as open (table full): their NAT entry may be reported as forwarded too
	NATExpired    atomic.Uint64 // NAT entries dropped by NATTTL without a destroy event
	// SocketLB counts client flows whose Service a socket load balancer
	// translated at connect(); DialedTableFull the translations not kept
	// (table at MaxOpen), whose flows then read as direct.
	SocketLB        atomic.Uint64
	DialedTableFull atomic.Uint64
}

// NewUDPTable returns a UDP join table; cfg's JoinWait, NATTTL, MaxNAT and
// MaxOpen apply as for Table (defaults the same).
func NewUDPTable(cfg Config, clock capture.Clock, emit func(*Connection)) *UDPTable {
	if cfg.JoinWait == 0 {
		cfg.JoinWait = time.Second
	}
	if cfg.NATTTL == 0 {
		cfg.NATTTL = 10 * time.Minute
	}
	if cfg.MaxNAT == 0 {
		cfg.MaxNAT = 1 << 18
	}
	if cfg.MaxOpen == 0 {
		cfg.MaxOpen = 1 << 18
	}
	return &UDPTable{cfg: cfg, clock: clock, emit: emit,
		natByPod: map[conntrack.Tuple]*natRec{}, natByOrig: map[conntrack.Tuple]*natRec{},
		open: map[udpOpenKey]uint64{}}
}

// udpKey is the tuple a flow joins NAT by: a client flow by the original
// tuple (itself → what it sent to), a server flow by the pod side (peer →
// itself).
func udpKey(side capture.Side, local, remote netip.AddrPort) (conntrack.Tuple, bool) {
	if side == capture.SideClient {
		return conntrack.Tuple{Src: local, Dst: remote}, true
	}
	return conntrack.Tuple{Src: remote, Dst: local}, false
}

func (t *UDPTable) inScope(local netip.Addr, netns uint32) bool {
	return t.cfg.Scope == nil || t.cfg.Scope(local, netns)
}

// Event feeds one UDP ring-buffer event: a flow's first datagram claims
// its NAT entry; an exchange of a server flow is passed on as a Request.
func (t *UDPTable) Event(e *capture.UDPEvent) {
	if !t.inScope(e.Local.Addr(), e.Netns) {
		t.Stats.OutOfScope.Add(1)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch e.Type {
	case capture.UDPEventFlow:
		key, client := udpKey(e.Side, e.Local, e.Remote)
		if len(t.open) >= t.cfg.MaxOpen {
			t.Stats.OpenTableFull.Add(1)
		} else {
			t.open[udpOpenKey{client, keyOf(key)}] = e.TimeNs
		}
		if n := t.natFor(key, client); n != nil {
			n.claimed = true
		}
	case capture.UDPEventExchange:
		if e.Side != capture.SideServer || t.cfg.Requests == nil {
			break
		}
		t.Stats.Exchanges.Add(1)
		t.reqScr = Request{Node: t.cfg.Node, Start: t.clock.Time(e.StartNs),
			Latency: time.Duration(e.TimeNs - e.StartNs), PodSrc: e.Remote, PodDst: e.Local,
			Netns: e.Netns, Cookie: e.Cookie, Transport: TransportUDP}
		t.cfg.Requests(&t.reqScr)
	}
	t.expire(e.TimeNs)
}

func (t *UDPTable) natFor(key conntrack.Tuple, client bool) *natRec {
	if client {
		return t.natByOrig[key]
	}
	return t.natByPod[key]
}

// Flow emits the record of one flow the kernel table gave up (idle, or
// shutdown).
func (t *UDPTable) Flow(f *capture.UDPFlow) {
	if !t.inScope(f.Local.Addr(), f.Netns) {
		t.Stats.OutOfScope.Add(1)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	key, client := udpKey(f.Side, f.Local, f.Remote)
	delete(t.open, udpOpenKey{client, keyOf(key)})
	c := &t.scratch
	t.fromFlow(f, c)
	if n := t.natFor(key, client); n != nil {
		n.claimed = true
		c.NAT = &n.nat
		c.SNAT = n.entry.SNAT
		c.Client, c.Target = n.entry.Original.Src, n.entry.Original.Dst
		ps := n.entry.PodSide()
		c.PodSrc, c.PodDst = ps.Src, ps.Dst
		t.Stats.Joined.Add(1)
	} else {
		t.Stats.NoNAT.Add(1)
	}
	t.applyDialed(f, c)
	t.out(c)
}

func (t *UDPTable) fromFlow(f *capture.UDPFlow, c *Connection) {
	*c = Connection{
		Node: t.cfg.Node, Start: t.clock.Time(f.FirstNs), End: t.clock.Time(f.LastNs),
		Outcome: OutcomeOK, Netns: f.Netns, Cookie: f.Cookie, Transport: TransportUDP,
		Exchanges: f.Exchanges, LatencySumNs: int64(f.LatencySum), LatencyMaxNs: int64(f.LatencyMax),
	}
	if f.Unanswered {
		c.Outcome = OutcomeUnanswered
	}
	if f.Side == capture.SideClient {
		c.Role = RoleClient
		c.Client, c.Target = f.Local, f.Remote
		c.PodSrc, c.PodDst = f.Local, f.Remote
		c.BytesToServer, c.BytesToClient = f.BytesOut, f.BytesIn
		c.DatagramsToServer, c.DatagramsToClient = f.DatagramsOut, f.DatagramsIn
	} else {
		c.Role = RoleServer
		c.Client, c.Target = f.Remote, f.Local
		c.PodSrc, c.PodDst = f.Remote, f.Local
		c.BytesToServer, c.BytesToClient = f.BytesIn, f.BytesOut
		c.DatagramsToServer, c.DatagramsToClient = f.DatagramsIn, f.DatagramsOut
	}
}

// NAT feeds one conntrack entry; entries that are not UDP are ignored
// (Table joins them), except the end of a dump, which both use.
func (t *UDPTable) NAT(e *conntrack.Entry) {
	if !e.IsUDP() && e.Type != conntrack.EntryDumpDone {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch e.Type {
	case conntrack.EntryDestroy:
		if n := t.natByOrig[e.Original]; n != nil && n.entry.ID == e.ID {
			t.dropNAT(n)
		}
	case conntrack.EntryDumpDone:
		for _, n := range t.natByOrig {
			if n.seen < e.TimeNs {
				t.dropNAT(n)
			}
		}
	case conntrack.EntryNew:
		t.newNAT(e)
	}
	t.expire(e.TimeNs)
}

func (t *UDPTable) newNAT(e *conntrack.Entry) {
	if old := t.natByOrig[e.Original]; old != nil {
		if old.entry.ID == e.ID {
			old.seen = max(old.seen, e.TimeNs)
			return
		}
		t.dropNAT(old)
	}
	if len(t.natByOrig) >= t.cfg.MaxNAT {
		t.Stats.NATTableFull.Add(1)
		return
	}
	n := newNATRec(e)
	ps := e.PodSide()
	t.natByOrig[e.Original] = n
	t.natByPod[ps] = n
	_, srv := t.open[udpOpenKey{false, keyOf(ps)}]
	_, cli := t.open[udpOpenKey{true, keyOf(e.Original)}]
	n.claimed = srv || cli
	if e.DNAT && !n.claimed && !e.Dumped {
		t.fwd = append(t.fwd, udpFwd{deadline: e.TimeNs + uint64(t.cfg.JoinWait), nat: n})
	}
}

func (t *UDPTable) dropNAT(n *natRec) {
	delete(t.natByOrig, n.entry.Original)
	if ps := n.entry.PodSide(); t.natByPod[ps] == n {
		delete(t.natByPod, ps)
	}
}

// Tick emits forward records that waited long enough.
func (t *UDPTable) Tick(nowNs uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire(nowNs)
}

func (t *UDPTable) expire(now uint64) {
	i := 0
	for ; i < len(t.fwd) && t.fwd[i].deadline <= now; i++ {
		if n := t.fwd[i].nat; !n.claimed {
			n.claimed = true // one forward record per translation
			t.forward(n)
		}
	}
	if i > 0 {
		t.fwd = append(t.fwd[:0], t.fwd[i:]...)
	}
	if now > t.lastSweep && now-t.lastSweep > uint64(t.cfg.NATTTL)/4 {
		t.lastSweep = now
		for _, n := range t.natByOrig {
			if now > n.seen && now-n.seen > uint64(t.cfg.NATTTL) {
				t.dropNAT(n)
				t.Stats.NATExpired.Add(1)
			}
		}
		for k, at := range t.open {
			if now > at && now-at > uint64(t.cfg.NATTTL) {
				delete(t.open, k) // its record was lost (kernel table full at the time)
			}
		}
		t.sweepDialed(now)
	}
}

func (t *UDPTable) forward(n *natRec) {
	en := &n.entry
	ps := en.PodSide()
	c := &t.scratch
	*c = Connection{
		Node: t.cfg.Node, Role: RoleForward, Outcome: OutcomeForwarded, Transport: TransportUDP,
		Start: t.clock.Time(en.TimeNs), End: t.clock.Time(en.TimeNs),
		Client: en.Original.Src, Target: en.Original.Dst, PodSrc: ps.Src, PodDst: ps.Dst,
		NAT: &n.nat, SNAT: en.SNAT,
	}
	t.Stats.Forwarded.Add(1)
	t.out(c)
}

func (t *UDPTable) out(c *Connection) {
	t.Stats.Emitted.Add(1)
	t.emit(c)
}
