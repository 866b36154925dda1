package flow

import (
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
)

// These tests drive the join with synthetic events: the join's inputs are
// decoded events, and ordering races (NAT before or after the socket) cannot
// be forced reliably with a real kernel. The kernel path is covered by the
// e2e tests in e2e/.

var (
	client  = netip.MustParseAddrPort("192.168.77.100:40000")
	vip     = netip.MustParseAddrPort("203.0.113.10:80")
	nodeIP  = netip.MustParseAddrPort("192.168.77.11:51000")
	podAddr = netip.MustParseAddrPort("10.244.1.10:8080")
)

const ms = uint64(time.Millisecond)

type rec struct{ got []Connection }

func (r *rec) emit(c *Connection) { r.got = append(r.got, *c) }

func newTable(cfg Config) (*Table, *rec) {
	r := &rec{}
	if cfg.Node == "" {
		cfg.Node = "node1"
	}
	return NewTable(cfg, capture.Clock{}, r.emit), r
}

// snatEntry: client → VIP, DNAT to the pod, SNAT to the node.
func snatEntry(at uint64) *conntrack.Entry {
	return &conntrack.Entry{Type: conntrack.EntryNew, ID: 7,
		Original: conntrack.Tuple{Src: client, Dst: vip},
		Reply:    conntrack.Tuple{Src: podAddr, Dst: nodeIP},
		DNAT:     true, SNAT: true, TimeNs: at}
}

func serverEvent(typ capture.EventType, at uint64) *capture.Event {
	return &capture.Event{Type: typ, Side: capture.SideServer, Cookie: 1, StartNs: 1 * ms, TimeNs: at,
		Local: podAddr, Remote: nodeIP, Netns: 99, BytesReceived: 120, BytesAcked: 4000,
		SRTT: 250 * time.Microsecond, OldState: 4}
}

func checkJoined(t *testing.T, c Connection) {
	t.Helper()
	if c.Role != RoleServer || c.Outcome != OutcomeOK {
		t.Errorf("role/outcome = %s/%s", c.Role, c.Outcome)
	}
	if c.Client != client || c.Target != vip {
		t.Errorf("client/target = %v/%v, want %v/%v (NAT original)", c.Client, c.Target, client, vip)
	}
	if c.PodSrc != nodeIP || c.PodDst != podAddr {
		t.Errorf("pod tuple = %v->%v", c.PodSrc, c.PodDst)
	}
	if c.NAT == nil || !c.NAT.DNAT || !c.SNAT {
		t.Errorf("NAT = %+v SNAT=%v", c.NAT, c.SNAT)
	}
	if c.BytesToServer != 120 || c.BytesToClient != 4000 || c.SRTTMicros != 250 {
		t.Errorf("bytes %d/%d srtt %d", c.BytesToServer, c.BytesToClient, c.SRTTMicros)
	}
}

func TestNATBeforeSocket(t *testing.T) {
	tb, r := newTable(Config{})
	tb.NAT(snatEntry(1 * ms))
	tb.Socket(serverEvent(capture.EventOpen, 2*ms))
	tb.Socket(serverEvent(capture.EventClose, 5*ms))
	tb.Tick(5000 * ms)
	if len(r.got) != 1 {
		t.Fatalf("got %d records, want 1 (no forward record for a locally accepted connection): %+v", len(r.got), r.got)
	}
	checkJoined(t, r.got[0])
	if tb.Stats.Joined.Load() != 1 || tb.Stats.Forwarded.Load() != 0 {
		t.Errorf("joined=%d forwarded=%d", tb.Stats.Joined.Load(), tb.Stats.Forwarded.Load())
	}
}

func TestSocketBeforeNAT(t *testing.T) {
	tb, r := newTable(Config{})
	tb.Socket(serverEvent(capture.EventClose, 5*ms))
	if len(r.got) != 0 {
		t.Fatalf("emitted before the NAT entry could arrive: %+v", r.got)
	}
	tb.NAT(snatEntry(6 * ms))
	if len(r.got) != 1 {
		t.Fatalf("got %d records after NAT arrived, want 1", len(r.got))
	}
	checkJoined(t, r.got[0])
	tb.Tick(5000 * ms)
	if len(r.got) != 1 {
		t.Fatalf("late NAT produced extra records: %+v", r.got[1:])
	}
}

func TestNoNATEmittedAfterJoinWait(t *testing.T) {
	tb, r := newTable(Config{JoinWait: 100 * time.Millisecond})
	tb.Socket(serverEvent(capture.EventClose, 5*ms))
	tb.Tick(104 * ms)
	if len(r.got) != 0 {
		t.Fatal("emitted before JoinWait")
	}
	tb.Tick(106 * ms)
	if len(r.got) != 1 || r.got[0].NAT != nil || r.got[0].Client != nodeIP {
		t.Fatalf("want one direct record, got %+v", r.got)
	}
	if tb.Stats.NoNAT.Load() != 1 {
		t.Errorf("NoNAT = %d", tb.Stats.NoNAT.Load())
	}
}

func TestForwardWhenNoLocalSocket(t *testing.T) {
	tb, r := newTable(Config{JoinWait: 100 * time.Millisecond})
	tb.NAT(snatEntry(1 * ms))
	tb.Tick(50 * ms)
	if len(r.got) != 0 {
		t.Fatal("forward emitted before JoinWait")
	}
	tb.Tick(200 * ms)
	if len(r.got) != 1 {
		t.Fatalf("got %d records, want 1 forward", len(r.got))
	}
	f := r.got[0]
	if f.Role != RoleForward || f.Outcome != OutcomeForwarded || f.Client != client || f.Target != vip ||
		f.PodSrc != nodeIP || f.PodDst != podAddr || !f.SNAT {
		t.Errorf("forward record = %+v", f)
	}
}

func TestDuplicateNATAndClose(t *testing.T) {
	tb, r := newTable(Config{})
	tb.NAT(snatEntry(1 * ms))
	dumped := snatEntry(2 * ms)
	dumped.Dumped = true
	tb.NAT(dumped) // a dump finds what an event already reported
	tb.Socket(serverEvent(capture.EventOpen, 3*ms))
	tb.Socket(serverEvent(capture.EventClose, 5*ms))
	tb.Tick(5000 * ms)
	if len(r.got) != 1 {
		t.Fatalf("got %d records, want 1", len(r.got))
	}
	if tb.Stats.DuplicateNAT.Load() != 1 {
		t.Errorf("DuplicateNAT = %d", tb.Stats.DuplicateNAT.Load())
	}
}

func TestFailedConnections(t *testing.T) {
	cases := []struct {
		err  syscall.Errno
		want Outcome
	}{
		{syscall.ECONNREFUSED, OutcomeRefused},
		{syscall.ETIMEDOUT, OutcomeTimeout},
		{syscall.EHOSTUNREACH, OutcomeUnreachable},
		{syscall.EACCES, OutcomeFailed},
	}
	for _, tc := range cases {
		tb, r := newTable(Config{JoinWait: time.Millisecond})
		tb.Socket(&capture.Event{Type: capture.EventClose, Side: capture.SideClient, OldState: capture.StateSynSent,
			Err: tc.err, Local: client, Remote: vip, StartNs: 1, TimeNs: 2})
		tb.Flush()
		if len(r.got) != 1 || r.got[0].Outcome != tc.want || r.got[0].Role != RoleClient {
			t.Errorf("%v: got %+v, want outcome %s", tc.err, r.got, tc.want)
		}
	}
	tb, r := newTable(Config{})
	tb.Socket(&capture.Event{Type: capture.EventRefused, Local: vip, Remote: client, TimeNs: 3, Err: syscall.ECONNREFUSED})
	if len(r.got) != 1 || r.got[0].Role != RoleReject || r.got[0].Outcome != OutcomeRefused || r.got[0].Target != vip {
		t.Errorf("refused SYN: %+v", r.got)
	}
	tb, r = newTable(Config{})
	ev := serverEvent(capture.EventClose, 5*ms)
	ev.Flags = capture.FlagResetReceived
	tb.NAT(snatEntry(1 * ms))
	tb.Socket(ev)
	if len(r.got) != 1 || r.got[0].Outcome != OutcomeReset || !r.got[0].ResetReceived {
		t.Errorf("reset: %+v", r.got)
	}
}

// TestEstablishedThenPeerGone: a connection that was established and then
// lost its peer (retransmissions exhausted, or its route) is not "ok",
// which is what a deleted pod looks like from the other end.
func TestEstablishedThenPeerGone(t *testing.T) {
	cases := []struct {
		err  syscall.Errno
		want Outcome
	}{
		{0, OutcomeOK},
		{syscall.ETIMEDOUT, OutcomeTimeout},
		{syscall.ENETUNREACH, OutcomeUnreachable},
		{syscall.EHOSTUNREACH, OutcomeUnreachable},
	}
	for _, tc := range cases {
		tb, r := newTable(Config{JoinWait: time.Millisecond})
		tb.Socket(&capture.Event{Type: capture.EventClose, Side: capture.SideClient, OldState: 9, // TCP_LAST_ACK
			Err: tc.err, Local: client, Remote: vip, StartNs: 1, TimeNs: 2})
		tb.Flush()
		if len(r.got) != 1 || r.got[0].Outcome != tc.want {
			t.Errorf("established, then %v: got %+v, want outcome %s", tc.err, r.got, tc.want)
		}
	}
}

func TestBoundsAreCounted(t *testing.T) {
	tb, r := newTable(Config{MaxNAT: 2, MaxPending: 2, JoinWait: time.Second})
	for i := range 3 {
		e := snatEntry(1 * ms)
		e.Original.Src = netip.AddrPortFrom(client.Addr(), uint16(1000+i))
		e.Reply.Dst = netip.AddrPortFrom(nodeIP.Addr(), uint16(2000+i))
		tb.NAT(e)
	}
	if n, _, _ := tb.Sizes(); n != 2 || tb.Stats.NATTableFull.Load() != 1 {
		t.Errorf("nat entries %d, full %d; want 2, 1", n, tb.Stats.NATTableFull.Load())
	}
	// Two forward candidates fill the pending table; a closed socket then
	// cannot wait for its NAT and is emitted at once, counted.
	ev := serverEvent(capture.EventClose, 2*ms)
	ev.Remote = netip.MustParseAddrPort("10.0.0.1:1")
	tb.Socket(ev)
	if len(r.got) != 1 || tb.Stats.PendingTableFull.Load() != 1 {
		t.Errorf("records %d pendingFull %d; want 1, 1", len(r.got), tb.Stats.PendingTableFull.Load())
	}
	// Entries whose destroy never came expire after NATTTL, counted.
	tb2, _ := newTable(Config{NATTTL: time.Second})
	tb2.NAT(snatEntry(1 * ms))
	tb2.Tick(3000 * ms)
	if n, _, _ := tb2.Sizes(); n != 0 || tb2.Stats.NATExpired.Load() != 1 {
		t.Errorf("after TTL: nat %d expired %d", n, tb2.Stats.NATExpired.Load())
	}
	// A destroy removes the entry.
	tb3, _ := newTable(Config{})
	tb3.NAT(snatEntry(1 * ms))
	d := snatEntry(2 * ms)
	d.Type = conntrack.EntryDestroy
	tb3.NAT(d)
	if n, _, _ := tb3.Sizes(); n != 0 {
		t.Errorf("after destroy: %d NAT entries", n)
	}
}

func TestScope(t *testing.T) {
	tb, r := newTable(Config{Scope: func(a netip.Addr, ns uint32) bool { return ns == 99 }})
	ev := serverEvent(capture.EventClose, 5*ms)
	ev.Netns = 5
	tb.Socket(ev)
	tb.Flush()
	if len(r.got) != 0 || tb.Stats.OutOfScope.Load() != 1 {
		t.Errorf("out-of-scope socket: records %d, counted %d", len(r.got), tb.Stats.OutOfScope.Load())
	}
}

func TestMergeCrossNode(t *testing.T) {
	// node1 DNATs+SNATs and forwards; node2 runs the pod.
	t1, r1 := newTable(Config{Node: "node1", JoinWait: time.Millisecond})
	t1.NAT(snatEntry(1 * ms))
	t1.Flush()
	t2, r2 := newTable(Config{Node: "node2", JoinWait: time.Millisecond})
	t2.Socket(serverEvent(capture.EventClose, 5*ms))
	t2.Flush()
	all := append(r1.got, r2.got...)
	m := Merge(all)
	if len(m) != 1 {
		t.Fatalf("merged into %d connections, want 1: %+v", len(m), m)
	}
	g := m[0]
	if g.EntryNode != "node1" || g.PodNode != "node2" || !g.CrossNode || !g.SNAT {
		t.Errorf("entry=%s pod=%s cross=%v snat=%v", g.EntryNode, g.PodNode, g.CrossNode, g.SNAT)
	}
	if g.Client != client || g.Target != vip || g.Outcome != OutcomeOK {
		t.Errorf("client=%v target=%v outcome=%s", g.Client, g.Target, g.Outcome)
	}
	// A reused tuple later is a second connection.
	again := r2.got[0]
	again.Start = again.Start.Add(time.Minute)
	if n := len(Merge(append(all, again))); n != 2 {
		t.Errorf("reused tuple merged into %d connections, want 2", n)
	}
}

const sec = uint64(time.Second)

// An open socket whose close never comes (lost in the ring buffer) must
// not stay tracked forever: it would fill MaxOpen and every later open
// would be refused, so NAT entries arriving just after their socket opened
// would become spurious forward records.
func TestOrphanOpenIsSweptAndCounted(t *testing.T) {
	tb, r := newTable(Config{MaxOpen: 2, JoinWait: time.Second})
	for i := range 2 { // two orphans fill the table
		ev := serverEvent(capture.EventOpen, 10*sec)
		ev.Remote = netip.AddrPortFrom(nodeIP.Addr(), uint16(3000+i))
		tb.Socket(ev)
	}
	tb.Socket(serverEvent(capture.EventOpen, 11*sec)) // the live connection: refused
	if _, open, _ := tb.Sizes(); open != 2 || tb.Stats.OpenTableFull.Load() != 1 {
		t.Fatalf("open %d, open_table_full %d; want 2, 1", open, tb.Stats.OpenTableFull.Load())
	}
	// Sweeps run every 30 s (OpenTTL/2 capped at 30 s); at 120 s the
	// orphans are exactly OpenTTL old and still kept.
	tb.Tick(130 * sec)
	if _, open, _ := tb.Sizes(); open != 2 || tb.Stats.OpenExpired.Load() != 0 {
		t.Fatalf("at OpenTTL: open %d, expired %d; want 2, 0 (not swept early)", open, tb.Stats.OpenExpired.Load())
	}
	tb.Tick(160 * sec)
	if _, open, _ := tb.Sizes(); open != 0 || tb.Stats.OpenExpired.Load() != 2 {
		t.Fatalf("after OpenTTL: open %d, expired %d; want 0, 2", open, tb.Stats.OpenExpired.Load())
	}
	// Room again: a new socket is tracked and claims its late NAT entry.
	tb.Socket(serverEvent(capture.EventOpen, 161*sec))
	tb.NAT(snatEntry(161*sec + 5*ms))
	tb.Tick(170 * sec)
	if len(r.got) != 0 || tb.Stats.OpenTableFull.Load() != 1 {
		t.Fatalf("records %+v, open_table_full %d; want none (NAT claimed, no forward), 1",
			r.got, tb.Stats.OpenTableFull.Load())
	}
	tb.Socket(serverEvent(capture.EventClose, 171*sec))
	if len(r.got) != 1 {
		t.Fatalf("got %d records, want 1", len(r.got))
	}
	checkJoined(t, r.got[0])
}

// A connection living longer than OpenTTL loses only its open entry: its
// close still finds its NAT entry and gives exactly one joined record.
func TestLiveConnectionCloseAfterSweep(t *testing.T) {
	tb, r := newTable(Config{})
	tb.NAT(snatEntry(1 * sec))
	tb.Socket(serverEvent(capture.EventOpen, 1*sec+ms))
	tb.Tick(200 * sec)
	if _, open, _ := tb.Sizes(); open != 0 || tb.Stats.OpenExpired.Load() != 1 {
		t.Fatalf("open %d, expired %d; want 0, 1", open, tb.Stats.OpenExpired.Load())
	}
	tb.Socket(serverEvent(capture.EventClose, 210*sec))
	tb.Tick(220 * sec)
	if len(r.got) != 1 {
		t.Fatalf("got %d records, want 1: %+v", len(r.got), r.got)
	}
	checkJoined(t, r.got[0])
	if tb.Stats.Joined.Load() != 1 || tb.Stats.Forwarded.Load() != 0 || tb.Stats.NoNAT.Load() != 0 {
		t.Errorf("joined=%d forwarded=%d no_nat=%d", tb.Stats.Joined.Load(), tb.Stats.Forwarded.Load(), tb.Stats.NoNAT.Load())
	}
}

// A socket that opened just before a sweep keeps its entry, so the NAT
// entry that arrives after it is claimed, not forwarded.
func TestNATClaimedAcrossSweep(t *testing.T) {
	tb, r := newTable(Config{JoinWait: 100 * time.Millisecond})
	tb.Tick(60 * sec)                                    // a sweep ran at 60 s
	tb.Socket(serverEvent(capture.EventOpen, 90*sec-ms)) // opens just before the next one
	tb.Tick(90 * sec)                                    // the next sweep
	tb.NAT(snatEntry(90*sec + ms))                       // its translation, read late
	tb.Tick(95 * sec)
	if len(r.got) != 0 || tb.Stats.OpenExpired.Load() != 0 {
		t.Fatalf("records %+v expired %d; want none (claimed), 0", r.got, tb.Stats.OpenExpired.Load())
	}
	tb.Socket(serverEvent(capture.EventClose, 96*sec))
	tb.Tick(100 * sec)
	if len(r.got) != 1 || tb.Stats.Forwarded.Load() != 0 {
		t.Fatalf("got %d records (%d forwarded), want 1 joined", len(r.got), tb.Stats.Forwarded.Load())
	}
	checkJoined(t, r.got[0])
}

// Ring-buffer and ctnetlink times interleave slightly out of order; an
// older time must not count as "long since the last sweep".
func TestSweepNotRerunByOlderEventTime(t *testing.T) {
	tb, _ := newTable(Config{})
	tb.Tick(200 * sec) // sweeps (nothing to drop)
	ev := serverEvent(capture.EventOpen, 1*sec)
	tb.Socket(ev) // an old open, already past OpenTTL at the last sweep's time
	tb.Tick(200*sec - ms)
	if tb.Stats.OpenExpired.Load() != 0 {
		t.Fatalf("an older time re-ran the sweep (expired %d)", tb.Stats.OpenExpired.Load())
	}
	tb.Tick(230 * sec)
	if tb.Stats.OpenExpired.Load() != 1 {
		t.Fatalf("the next sweep did not drop it (expired %d)", tb.Stats.OpenExpired.Load())
	}
}

// A tracked socket's close is recorded even when Scope no longer places
// it (its pod's namespace was deleted); untracked ones stay out.
func TestCloseOfTrackedSocketOutlivesScope(t *testing.T) {
	inScope := true
	tb, r := newTable(Config{JoinWait: time.Millisecond,
		Scope: func(a netip.Addr, ns uint32) bool { return inScope && ns == 99 }})
	tb.NAT(snatEntry(1 * ms))
	tb.Socket(serverEvent(capture.EventOpen, 2*ms))
	inScope = false
	other := serverEvent(capture.EventClose, 4*ms)
	other.Netns = 5 // same tuple, another namespace: not the tracked socket
	tb.Socket(other)
	tb.Socket(serverEvent(capture.EventClose, 5*ms))
	tb.Flush()
	if len(r.got) != 1 {
		t.Fatalf("got %d records, want 1: %+v", len(r.got), r.got)
	}
	checkJoined(t, r.got[0])
	if tb.Stats.ClosedOutOfScope.Load() != 1 || tb.Stats.OutOfScope.Load() != 1 {
		t.Errorf("closed_out_of_scope %d out_of_scope %d; want 1, 1",
			tb.Stats.ClosedOutOfScope.Load(), tb.Stats.OutOfScope.Load())
	}
	if _, open, _ := tb.Sizes(); open != 0 {
		t.Errorf("open %d after the close, want 0", open)
	}
}

// TestResyncDropsWhatTheDumpLost: after a conntrack overflow the listener
// dumps the table; a known translation the dump no longer lists is gone
// (its destroy event was lost) and must not name a later connection.
func TestResyncDropsWhatTheDumpLost(t *testing.T) {
	tb, _ := newTable(Config{})
	kept := snatEntry(1 * ms)
	gone := snatEntry(1 * ms)
	gone.ID = 8
	gone.Original.Src = netip.MustParseAddrPort("192.168.77.100:40001")
	gone.Reply.Dst = netip.MustParseAddrPort("192.168.77.11:51001")
	tb.NAT(kept)
	tb.NAT(gone)
	// The resync dump starts at 5 ms and lists only kept.
	dumped := *kept
	dumped.Dumped, dumped.TimeNs = true, 6*ms
	tb.NAT(&dumped)
	tb.NAT(&conntrack.Entry{Type: conntrack.EntryDumpDone, Dumped: true, TimeNs: 5 * ms})
	if nat, _, _ := tb.Sizes(); nat != 1 || tb.natByOrig[kept.Original] == nil || tb.Stats.NATResynced.Load() != 1 {
		t.Fatalf("after the resync: %d entries, kept present %v, resynced %d; want only kept, 1 resynced",
			nat, tb.natByOrig[kept.Original] != nil, tb.Stats.NATResynced.Load())
	}
	if tb.natByPod[gone.PodSide()] != nil {
		t.Error("the lost entry is still found by its pod-side tuple")
	}
	if tb.Stats.DuplicateNAT.Load() != 1 {
		t.Errorf("duplicates %d, want 1 (kept, dumped again)", tb.Stats.DuplicateNAT.Load())
	}
}

// TestNewEntryReplacesStaleTuple: the client reuses a port for the same
// VIP while the previous entry's destroy event was lost; the new kernel
// entry (another ID, another pod) must win, or the new connection would be
// joined with the old pod's translation.
func TestNewEntryReplacesStaleTuple(t *testing.T) {
	tb, r := newTable(Config{JoinWait: time.Millisecond})
	stale := snatEntry(1 * ms)
	stale.Reply.Src = netip.MustParseAddrPort("10.244.2.99:8080") // another pod
	tb.NAT(stale)
	fresh := snatEntry(10 * ms)
	fresh.ID = 99
	tb.NAT(fresh)
	if tb.Stats.NATReplaced.Load() != 1 {
		t.Errorf("replaced %d, want 1", tb.Stats.NATReplaced.Load())
	}
	tb.Socket(serverEvent(capture.EventOpen, 11*ms))
	tb.Socket(serverEvent(capture.EventClose, 20*ms))
	tb.Flush()
	// The stale entry's own connection was forwarded (nothing here claimed
	// it): that record stays. The new connection's record is the server's.
	var srv []Connection
	for _, c := range r.got {
		if c.Role == RoleServer {
			srv = append(srv, c)
		}
	}
	if len(srv) != 1 || srv[0].NAT == nil || srv[0].NAT.ID != 99 {
		t.Fatalf("server records %+v, want one joined with entry 99", srv)
	}
	checkJoined(t, srv[0])
}
