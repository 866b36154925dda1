package flow

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
)

// Config bounds the join tables. Zero values take the defaults.
type Config struct {
	// Node names this node in every record.
	Node string
	// Scope decides which sockets belong to this node. On a real node every
	// socket does (nil Scope). Where several simulated nodes share one
	// kernel (the testbed) it keeps another node's sockets out.
	Scope func(local netip.Addr, netns uint32) bool
	// JoinWait is how long a closed socket waits for its NAT entry, and
	// how long a translated connection waits for a local socket before it
	// is reported as forwarded to another node. Default 1 s.
	JoinWait time.Duration
	// NATTTL drops NAT entries whose destroy event never came. Default 10 min
	// (longer than conntrack's 2 min TIME_WAIT and typical keep-alives, see
	// docs/ARCHITECTURE.md for what happens to longer connections).
	NATTTL time.Duration
	// OpenTTL is how long an open socket stays tracked without its close
	// event (rounded up to whole seconds). Default (zero or negative)
	// 2 min. The entry only lets a NAT entry that arrives after the socket
	// opened be claimed (not reported as forwarded); the kernel creates
	// that entry at the SYN, before the socket opens, so it can only be
	// late by the reader lag, which JoinWait already bounds to about a
	// second. Entries whose close never comes (ring-buffer loss) would
	// otherwise stay forever and fill MaxOpen.
	OpenTTL time.Duration
	// MaxNAT, MaxOpen and MaxPending bound the tables. Defaults 262144,
	// 262144, 65536.
	MaxNAT, MaxOpen, MaxPending int
	// Requests receives request/response turns of accepting sockets; nil
	// ignores them.
	Requests func(*Request)
}

// Stats counts what the table did; every loss has its own counter.
type Stats struct {
	Emitted          atomic.Uint64 // records emitted
	Joined           atomic.Uint64 // socket records joined with a NAT entry
	NoNAT            atomic.Uint64 // socket records emitted without NAT after JoinWait (direct connections)
	Forwarded        atomic.Uint64 // forward records
	Rejected         atomic.Uint64 // reject records
	Requests         atomic.Uint64 // request/response turns passed on
	OutOfScope       atomic.Uint64 // socket events of other nodes (Scope false)
	ClosedOutOfScope atomic.Uint64 // closes of tracked sockets that Scope no longer placed (their namespace was deleted), recorded anyway
	DuplicateNAT     atomic.Uint64 // NAT entries seen again (dump after events, repeated events)
	NATExpired       atomic.Uint64 // NAT entries dropped by NATTTL without a destroy event
	NATResynced      atomic.Uint64 // NAT entries a complete dump no longer listed (destroy event lost): dropped
	NATReplaced      atomic.Uint64 // NAT entries replaced by a new kernel entry for the same tuple (destroy event lost)
	NATTableFull     atomic.Uint64 // NAT entries not stored: table full (their joins are lost)
	OpenTableFull    atomic.Uint64 // open sockets not tracked: table full
	OpenExpired      atomic.Uint64 // open sockets untracked after OpenTTL without a close (a lost close, or a connection older than OpenTTL)
	PendingTableFull atomic.Uint64 // closed sockets emitted early without waiting for NAT: table full
	SocketLB         atomic.Uint64 // client records whose Service a socket load balancer translated at connect()
	DialedTableFull  atomic.Uint64 // connect() translations not kept: table full (their records read as direct)
	DialedExpired    atomic.Uint64 // connect() translations dropped after OpenTTL without their socket's close
}

// natRec is immutable once stored (but for claimed and seen), so records
// may point at its NAT without copying.
type natRec struct {
	entry   conntrack.Entry
	nat     NAT
	claimed bool   // a local socket owns this translation: no forward record
	seen    uint64 // when the kernel last reported it (event or dump)
}

func newNATRec(e *conntrack.Entry) *natRec {
	return &natRec{entry: *e, nat: NAT{ID: e.ID, Original: e.Original, Reply: e.Reply, DNAT: e.DNAT, SNAT: e.SNAT, PortRemap: e.PortRemap}, seen: e.TimeNs}
}

type pendKind uint8

const (
	pendServer pendKind = iota
	pendClient
	pendForward
)

type pending struct {
	kind     pendKind
	key      conntrack.Tuple
	deadline uint64
	done     bool
	conn     Connection // socket record waiting for NAT
	nat      *natRec    // forward candidate
}

// Table joins socket events and NAT entries. It is safe for concurrent use:
// capture and conntrack feed it from their own goroutines.
type Table struct {
	cfg   Config
	clock capture.Clock
	emit  func(*Connection)
	Stats Stats

	mu         sync.Mutex
	natByPod   map[conntrack.Tuple]*natRec // key: pod side (reply reversed)
	natByOrig  map[conntrack.Tuple]*natRec // key: original tuple
	openSrv    map[openKey]openVal
	openCli    map[openKey]openVal
	pendSrv    map[conntrack.Tuple]*pending
	pendCli    map[conntrack.Tuple]*pending
	pendFwd    map[conntrack.Tuple]*pending // key: original tuple
	fifo       []*pending                   // by deadline (deadlines are now+JoinWait, so FIFO); live from head
	head       int
	free       []*pending // popped entries, reused so the hot path does not allocate
	lastSweep  uint64
	lastOpen   uint64               // when the open sets were last swept
	dialed     map[uint64]dialedVal // socket cookie → connect() destination a socket LB rewrote (socketlb.go)
	scratch    Connection           // the record being emitted; emit must not keep it
	reqScratch Request
}

// NewTable returns a table that calls emit for every finished record. emit
// runs with the table locked and must not keep the pointer.
func NewTable(cfg Config, clock capture.Clock, emit func(*Connection)) *Table {
	if cfg.JoinWait == 0 {
		cfg.JoinWait = time.Second
	}
	if cfg.NATTTL == 0 {
		cfg.NATTTL = 10 * time.Minute
	}
	if cfg.MaxNAT == 0 {
		cfg.MaxNAT = 1 << 18
	}
	if cfg.OpenTTL <= 0 {
		cfg.OpenTTL = 2 * time.Minute
	}
	if cfg.MaxOpen == 0 {
		cfg.MaxOpen = 1 << 18
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = 1 << 16
	}
	return &Table{
		cfg: cfg, clock: clock, emit: emit,
		natByPod: map[conntrack.Tuple]*natRec{}, natByOrig: map[conntrack.Tuple]*natRec{},
		openSrv: map[openKey]openVal{}, openCli: map[openKey]openVal{},
		pendSrv: map[conntrack.Tuple]*pending{}, pendCli: map[conntrack.Tuple]*pending{},
		pendFwd: map[conntrack.Tuple]*pending{},
	}
}

// Sizes reports current table sizes (for self-metrics and tests).
func (t *Table) Sizes() (nat, open, pending int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.natByOrig), len(t.openSrv) + len(t.openCli), len(t.pendSrv) + len(t.pendCli) + len(t.pendFwd)
}

// Socket feeds one capture event.
func (t *Table) Socket(e *capture.Event) {
	inScope := t.cfg.Scope == nil || t.cfg.Scope(e.Local.Addr(), e.Netns)
	if !inScope && e.Type != capture.EventClose {
		t.Stats.OutOfScope.Add(1)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !inScope {
		// A socket that opened in scope is ours until it closes, but the
		// scope may no longer place it: a pod's namespace deleted under
		// live connections closes them after it is gone.
		if !t.tracked(e) {
			t.Stats.OutOfScope.Add(1)
			return
		}
		t.Stats.ClosedOutOfScope.Add(1)
	}
	switch e.Type {
	case capture.EventOpen:
		t.open(e)
	case capture.EventClose:
		t.close(e)
	case capture.EventRefused:
		t.reject(e)
	case capture.EventConnect:
		t.connect(e)
	case capture.EventRequest:
		if t.cfg.Requests != nil {
			t.Stats.Requests.Add(1)
			t.reqScratch = Request{Node: t.cfg.Node, Start: t.clock.Time(e.StartNs),
				Latency: time.Duration(e.TimeNs - e.StartNs), Bytes: e.BytesReceived, Turn: e.Retransmits,
				PodSrc: e.Remote, PodDst: e.Local, Netns: e.Netns, NetnsCookie: e.NetnsCookie, Cookie: e.Cookie}
			t.cfg.Requests(&t.reqScratch)
		}
	}
	t.expire(e.TimeNs)
}

// openKey is a tuple without pointers: the open-socket sets hold one per
// live socket (hundreds of thousands on a busy node), and a pointer-free key
// halves their size (netip.Addr carries a zone pointer) and keeps the
// garbage collector from scanning them.
type openKey struct {
	src, dst     [16]byte
	sport, dport uint16
}

// openVal is kept small for the same reason: seconds are precise enough
// for a TTL of minutes, and the namespace inode with the tuple identifies
// the socket well enough to admit its close when Scope no longer does.
type openVal struct {
	sec   uint32 // open time, whole seconds of the kernel's monotonic clock
	netns uint32
}

func keyOf(t conntrack.Tuple) openKey {
	return openKey{src: t.Src.Addr().As16(), dst: t.Dst.Addr().As16(), sport: t.Src.Port(), dport: t.Dst.Port()}
}

func sockKey(e *capture.Event) (conntrack.Tuple, bool) {
	if e.Side == capture.SideClient {
		return conntrack.Tuple{Src: e.Local, Dst: e.Remote}, true
	}
	return conntrack.Tuple{Src: e.Remote, Dst: e.Local}, false
}

func (t *Table) open(e *capture.Event) {
	key, client := sockKey(e)
	open, byKey := t.openSrv, t.natByPod
	if client {
		open, byKey = t.openCli, t.natByOrig
	}
	if len(t.openSrv)+len(t.openCli) >= t.cfg.MaxOpen {
		t.Stats.OpenTableFull.Add(1)
	} else {
		open[keyOf(key)] = openVal{sec: uint32(e.TimeNs / uint64(time.Second)), netns: e.Netns}
	}
	if n := byKey[key]; n != nil {
		t.claim(n)
	}
}

// tracked reports whether e is the close of a socket in the open sets.
func (t *Table) tracked(e *capture.Event) bool {
	key, client := sockKey(e)
	open := t.openSrv
	if client {
		open = t.openCli
	}
	v, ok := open[keyOf(key)]
	return ok && v.netns == e.Netns
}

// claim marks a translation as owned by a local socket, cancelling its
// forward candidate.
func (t *Table) claim(n *natRec) {
	n.claimed = true
	if p := t.pendFwd[n.entry.Original]; p != nil && p.nat == n {
		p.done = true
		delete(t.pendFwd, n.entry.Original)
	}
}

func (t *Table) close(e *capture.Event) {
	key, client := sockKey(e)
	var n *natRec
	if client {
		delete(t.openCli, keyOf(key))
		n = t.natByOrig[key]
	} else {
		delete(t.openSrv, keyOf(key))
		n = t.natByPod[key]
	}
	c := &t.scratch
	t.fromSocket(e, c)
	t.applyDialed(e, c)
	if n != nil {
		t.claim(n)
		t.join(c, n)
		t.Stats.Joined.Add(1)
		t.out(c)
		return
	}
	// The NAT entry may still be on its way (ctnetlink and the ring buffer
	// are separate queues), or there is none (a direct connection).
	pend := t.pendSrv
	kind := pendServer
	if client {
		pend, kind = t.pendCli, pendClient
	}
	if t.pendingLen() >= t.cfg.MaxPending {
		t.Stats.PendingTableFull.Add(1)
		t.Stats.NoNAT.Add(1)
		t.out(c)
		return
	}
	p := t.newPending(kind, key, e.TimeNs)
	p.conn = *c
	if old := pend[key]; old != nil { // the same tuple closed twice within JoinWait
		old.done = true
		t.Stats.NoNAT.Add(1)
		t.out(&old.conn)
	}
	pend[key] = p
}

func (t *Table) pendingLen() int { return len(t.fifo) - t.head }

// newPending queues an entry whose deadline is JoinWait after at.
func (t *Table) newPending(kind pendKind, key conntrack.Tuple, at uint64) *pending {
	var p *pending
	if n := len(t.free); n > 0 {
		p = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		p = &pending{}
	}
	p.kind, p.key, p.deadline = kind, key, at+uint64(t.cfg.JoinWait)
	t.fifo = append(t.fifo, p)
	return p
}

func (t *Table) reject(e *capture.Event) {
	c := &t.scratch
	*c = Connection{
		Node: t.cfg.Node, Role: RoleReject, Outcome: OutcomeRefused,
		Start: t.clock.Time(e.TimeNs), End: t.clock.Time(e.TimeNs),
		Client: e.Remote, Target: e.Local, PodSrc: e.Remote, PodDst: e.Local,
		Error: errnoName(e.Err), Netns: e.Netns,
	}
	if e.Err == syscall.EHOSTUNREACH {
		c.Outcome = OutcomeUnreachable
	}
	t.Stats.Rejected.Add(1)
	t.out(c)
}

func (t *Table) fromSocket(e *capture.Event, c *Connection) {
	*c = Connection{
		Node: t.cfg.Node, Start: t.clock.Time(e.StartNs), End: t.clock.Time(e.TimeNs),
		SRTTMicros: uint32(e.SRTT / time.Microsecond), Retransmits: e.Retransmits,
		ResetSent:     e.Flags&capture.FlagResetSent != 0,
		ResetReceived: e.Flags&capture.FlagResetReceived != 0,
		Error:         errnoName(e.Err), Netns: e.Netns, NetnsCookie: e.NetnsCookie, Cookie: e.Cookie,
	}
	if e.Err == 0 && e.Flags&capture.FlagError != 0 && e.OldState == capture.StateSynSent {
		c.Error = "ICMP_ERROR"
	}
	if e.Side == capture.SideClient {
		c.Role = RoleClient
		c.Client, c.Target = e.Local, e.Remote
		c.PodSrc, c.PodDst = e.Local, e.Remote
		c.BytesToServer, c.BytesToClient = e.BytesAcked, e.BytesReceived
	} else {
		c.Role = RoleServer
		c.Client, c.Target = e.Remote, e.Local
		c.PodSrc, c.PodDst = e.Remote, e.Local
		c.BytesToServer, c.BytesToClient = e.BytesReceived, e.BytesAcked
	}
	c.Outcome = outcome(e)
}

func outcome(e *capture.Event) Outcome {
	switch e.OldState {
	case capture.StateSynSent:
		switch e.Err {
		case syscall.ECONNREFUSED:
			return OutcomeRefused
		case syscall.ETIMEDOUT:
			return OutcomeTimeout
		case syscall.EHOSTUNREACH, syscall.ENETUNREACH:
			return OutcomeUnreachable
		case 0:
			if e.Flags&capture.FlagError != 0 {
				// An ICMP error answered the SYN but connect() consumed
				// the errno first; the node that sent the ICMP reports
				// the exact reason in a reject record.
				return OutcomeRefused
			}
		}
		return OutcomeFailed
	case capture.StateSynRecv:
		return OutcomeFailed
	}
	if e.Flags&(capture.FlagResetSent|capture.FlagResetReceived) != 0 || e.Err == syscall.ECONNRESET {
		return OutcomeReset
	}
	// Established, then the peer went silent (its pod deleted, a node or
	// path gone): the kernel gave up retransmitting. Not "ok", though no
	// reset was ever seen.
	switch e.Err {
	case syscall.ETIMEDOUT:
		return OutcomeTimeout
	case syscall.EHOSTUNREACH, syscall.ENETUNREACH:
		return OutcomeUnreachable
	}
	return OutcomeOK
}

// dropNAT forgets a translation the kernel no longer has.
func (t *Table) dropNAT(n *natRec) {
	delete(t.natByOrig, n.entry.Original)
	if ps := n.entry.PodSide(); t.natByPod[ps] == n {
		delete(t.natByPod, ps)
	}
}

// join applies a NAT translation to a socket record.
func (t *Table) join(c *Connection, n *natRec) {
	en := &n.entry
	c.NAT = &n.nat
	c.SNAT = en.SNAT
	c.Client, c.Target = en.Original.Src, en.Original.Dst
	if c.SocketLB {
		// The application dialled the Service; the NAT here came after.
		c.Target = c.Dialed
	}
	ps := en.PodSide()
	c.PodSrc, c.PodDst = ps.Src, ps.Dst
}

// NAT feeds one conntrack entry.
func (t *Table) NAT(e *conntrack.Entry) {
	if e.IsUDP() {
		return // UDPTable joins UDP translations
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := e.PodSide()
	switch e.Type {
	case conntrack.EntryDestroy:
		if n := t.natByOrig[e.Original]; n != nil && n.entry.ID == e.ID {
			t.dropNAT(n)
		}
	case conntrack.EntryDumpDone:
		// Known entries a complete dump did not list are gone; their
		// destroy events were lost (an overflow, counted by conntrack).
		for _, n := range t.natByOrig {
			if n.seen < e.TimeNs {
				t.dropNAT(n)
				t.Stats.NATResynced.Add(1)
			}
		}
	case conntrack.EntryNew:
		if old := t.natByOrig[e.Original]; old != nil {
			if old.entry.ID == e.ID {
				// The same kernel entry again (a dump after its event):
				// same tuples, nothing to update but when it was seen.
				old.seen = max(old.seen, e.TimeNs)
				t.Stats.DuplicateNAT.Add(1)
				break
			}
			// Another kernel entry for the same tuple (the client reused
			// its port) while the old one's destroy event was lost: the
			// old translation must not name the new connection.
			t.dropNAT(old)
			t.Stats.NATReplaced.Add(1)
		}
		if len(t.natByOrig) >= t.cfg.MaxNAT {
			t.Stats.NATTableFull.Add(1)
			break
		}
		n := newNATRec(e)
		t.natByOrig[e.Original] = n
		t.natByPod[ps] = n
		// Sockets that closed before their translation arrived.
		if p := t.pendSrv[ps]; p != nil {
			t.finishPending(p, n)
		}
		if p := t.pendCli[e.Original]; p != nil {
			t.finishPending(p, n)
		}
		_, srvOpen := t.openSrv[keyOf(ps)]
		_, cliOpen := t.openCli[keyOf(e.Original)]
		if srvOpen || cliOpen {
			n.claimed = true
		}
		if e.DNAT && !n.claimed && !e.Dumped && t.pendingLen() < t.cfg.MaxPending {
			p := t.newPending(pendForward, e.Original, e.TimeNs)
			p.nat = n
			t.pendFwd[e.Original] = p
		} else if e.DNAT && !n.claimed && !e.Dumped {
			t.Stats.PendingTableFull.Add(1)
		}
	}
	t.expire(e.TimeNs)
}

func (t *Table) finishPending(p *pending, n *natRec) {
	p.done = true
	if p.kind == pendServer {
		delete(t.pendSrv, p.key)
	} else {
		delete(t.pendCli, p.key)
	}
	n.claimed = true
	t.join(&p.conn, n)
	t.Stats.Joined.Add(1)
	t.out(&p.conn)
}

// Tick expires what waited long enough; call it periodically so records
// are emitted when no new events arrive.
func (t *Table) Tick(nowNs uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire(nowNs)
}

// Flush emits everything still pending, as if JoinWait had passed; used at
// shutdown so nothing closed is lost.
func (t *Table) Flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire(^uint64(0))
}

func (t *Table) expire(now uint64) {
	for t.head < len(t.fifo) {
		p := t.fifo[t.head]
		if !p.done && p.deadline > now {
			break
		}
		t.fifo[t.head] = nil
		t.head++
		if p.done { // claimed or replaced earlier: nothing references it any more
			t.recycle(p)
			continue
		}
		p.done = true
		switch p.kind {
		case pendServer:
			delete(t.pendSrv, p.key)
			t.Stats.NoNAT.Add(1)
			t.out(&p.conn)
		case pendClient:
			delete(t.pendCli, p.key)
			t.Stats.NoNAT.Add(1)
			t.out(&p.conn)
		case pendForward:
			delete(t.pendFwd, p.key)
			if !p.nat.claimed {
				t.forward(p.nat)
			}
		}
		t.recycle(p)
	}
	// Compact so appends reuse the array instead of growing it forever.
	if t.head > 0 && t.head >= len(t.fifo)/2 {
		n := copy(t.fifo, t.fifo[t.head:])
		clear(t.fifo[n:])
		t.fifo = t.fifo[:n]
		t.head = 0
	}
	// Event times come from two sources (ring buffer, ctnetlink) and may
	// run slightly backwards; without now > last an older time would
	// underflow the difference and sweep on nearly every event.
	if (now > t.lastSweep && now-t.lastSweep > uint64(t.cfg.NATTTL)/4) || now == ^uint64(0) {
		t.sweep(now)
	}
	if now != ^uint64(0) && now > t.lastOpen && now-t.lastOpen >= t.openSweepEvery() {
		t.sweepOpen(now)
	}
}

// openSweepEvery is how often the open sets are swept: O(n) over up to
// MaxOpen entries, so rarely, but often enough that an entry outlives
// OpenTTL by at most half of it.
func (t *Table) openSweepEvery() uint64 {
	return uint64(min(t.cfg.OpenTTL/2, 30*time.Second))
}

// sweepOpen drops open entries older than OpenTTL. Ages are compared in
// whole seconds, each truncated, so an entry is dropped only when its true
// age exceeds OpenTTL rounded up to a second.
func (t *Table) sweepOpen(now uint64) {
	t.lastOpen = now
	ttl := uint32((t.cfg.OpenTTL + time.Second - 1) / time.Second)
	nowSec := uint32(now / uint64(time.Second))
	for _, open := range [2]map[openKey]openVal{t.openSrv, t.openCli} {
		for k, v := range open {
			if nowSec > v.sec && nowSec-v.sec > ttl {
				delete(open, k)
				t.Stats.OpenExpired.Add(1)
			}
		}
	}
	t.sweepDialed(nowSec, ttl)
}

func (t *Table) recycle(p *pending) {
	*p = pending{}
	if len(t.free) < 1024 {
		t.free = append(t.free, p)
	}
}

func (t *Table) sweep(now uint64) {
	t.lastSweep = now
	if now == ^uint64(0) {
		return
	}
	ttl := uint64(t.cfg.NATTTL)
	for k, n := range t.natByOrig {
		if now > n.entry.TimeNs && now-n.entry.TimeNs > ttl {
			delete(t.natByOrig, k)
			delete(t.natByPod, n.entry.PodSide())
			t.Stats.NATExpired.Add(1)
		}
	}
}

func (t *Table) forward(n *natRec) {
	en := &n.entry
	ps := en.PodSide()
	c := &t.scratch
	*c = Connection{
		Node: t.cfg.Node, Role: RoleForward, Outcome: OutcomeForwarded,
		Start: t.clock.Time(en.TimeNs), End: t.clock.Time(en.TimeNs),
		Client: en.Original.Src, Target: en.Original.Dst, PodSrc: ps.Src, PodDst: ps.Dst,
		NAT: &n.nat, SNAT: en.SNAT,
	}
	t.Stats.Forwarded.Add(1)
	t.out(c)
}

func (t *Table) out(c *Connection) {
	t.Stats.Emitted.Add(1)
	t.emit(c)
}
