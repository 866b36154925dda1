// Package conntrack follows the kernel's connection-tracking table of one
// network namespace over ctnetlink and reports the NAT translation of every
// TCP connection and UDP flow: its original tuple (what the client sent to: ClusterIP,
// NodePort, LB IP) and its reply tuple (the pod that answers, and the
// address it answers to when the source was SNATed).
//
// Why ctnetlink and not the netfilter BPF link: the kernel sends one message
// when an entry is confirmed and one when it is destroyed, so the cost is
// per connection, while a netfilter hook runs on every packet (peers that
// hook per packet lost 7-17% throughput on these machines). ctnetlink also
// needs no program verified against this kernel's nf_conn layout. Its weak
// spot is overflow of the socket buffer under a burst; that is detected
// (ENOBUFS), counted, and repaired by a full table dump.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/netns"
)

// Tuple is one direction of a TCP connection as conntrack records it.
type Tuple struct {
	Src netip.AddrPort
	Dst netip.AddrPort
}

func (t Tuple) String() string { return t.Src.String() + "->" + t.Dst.String() }

// Reverse swaps source and destination.
func (t Tuple) Reverse() Tuple { return Tuple{Src: t.Dst, Dst: t.Src} }

// EntryType says whether an entry appeared or went away.
type EntryType uint8

// Entry types.
const (
	EntryNew     EntryType = 1 // confirmed (first packet left the node), or found by a dump
	EntryDestroy EntryType = 2 // removed from the table (timed out or flushed)
	// EntryDumpDone marks the end of a complete dump that started at
	// TimeNs (no tuples): an entry known from before that the dump did not
	// list is gone, its destroy event lost in a socket overflow.
	EntryDumpDone EntryType = 3
)

// Entry is one NAT translation.
type Entry struct {
	Type EntryType
	ID   uint32
	// Original is the tuple of the first packet as it arrived: client →
	// the address it dialled.
	Original Tuple
	// Reply is the tuple replies carry: backend → the address the backend
	// answers to. Reversed, it is the tuple the backend's socket sees.
	Reply Tuple
	DNAT  bool // the destination was rewritten (Service → pod)
	SNAT  bool // the source address was rewritten (client address lost)
	// PortRemap: only the source port was rewritten. The kernel does it
	// on its own when the translated reply tuple would clash with another
	// entry's (the client reused a port towards the same backend through
	// another address); the backend still sees the client's address.
	PortRemap bool
	Dumped    bool   // found by a table dump (after start or an overflow), not an event
	TimeNs    uint64 // CLOCK_MONOTONIC when the agent received it
	// Proto is the IP protocol: ProtoTCP (also the zero value's meaning)
	// or ProtoUDP. flow.Table joins TCP entries, flow.UDPTable UDP ones.
	Proto uint8
}

// srcRewrite tells an address rewrite (SNAT: the client's address is lost
// to the backend) from a port-only rewrite (a clash remap: it is not).
func srcRewrite(orig, replyDst netip.AddrPort) (snat, portRemap bool) {
	if replyDst.Addr() != orig.Addr() {
		return true, false
	}
	return false, replyDst.Port() != orig.Port()
}

// IP protocols an Entry can carry.
const (
	ProtoTCP = unix.IPPROTO_TCP
	ProtoUDP = unix.IPPROTO_UDP
)

// IsUDP reports whether the entry is a UDP translation.
func (e *Entry) IsUDP() bool { return e.Proto == ProtoUDP }

// PodSide is the tuple the backend's socket sees, remote → local.
func (e *Entry) PodSide() Tuple { return e.Reply.Reverse() }

// Config says which namespace's table to follow.
type Config struct {
	// Netns is the path of the node's network namespace; empty for the
	// agent's own (a hostNetwork DaemonSet).
	Netns string
	// ReadBuffer is the netlink socket receive buffer in bytes. Default 8 MiB.
	ReadBuffer int
}

// Stats counts what the listener saw and lost.
type Stats struct {
	Events     atomic.Uint64 // NAT entries delivered
	Ignored    atomic.Uint64 // entries without NAT or neither TCP nor UDP: not needed for the path
	Overflows  atomic.Uint64 // socket buffer overflows (ENOBUFS): events lost, then a resync
	Dumps      atomic.Uint64 // full table dumps (start + one per overflow)
	DumpErrors atomic.Uint64 // dumps that failed
	BadEvents  atomic.Uint64 // event messages that failed to decode (their entries are lost)
}

// Listener follows one namespace's conntrack table.
type Listener struct {
	cfg   Config
	log   *slog.Logger
	Stats Stats
}

// New returns a listener; nothing is opened until Run.
func New(cfg Config, log *slog.Logger) *Listener {
	if cfg.ReadBuffer == 0 {
		cfg.ReadBuffer = 8 << 20
	}
	if log == nil {
		log = slog.Default()
	}
	return &Listener{cfg: cfg, log: log}
}

// Run subscribes to new and destroyed entries, dumps the current table once
// subscribed (so entries that existed before the agent are known), and calls
// fn for each TCP or UDP entry with NAT until ctx is done. After a socket overflow
// it resubscribes and dumps again. fn is called from one goroutine and must
// not keep the pointer.
func (l *Listener) Run(ctx context.Context, fn func(*Entry)) error {
	for {
		err := l.session(ctx, fn)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, unix.ENOBUFS) {
			l.Stats.Overflows.Add(1)
			l.log.Warn("conntrack events lost to a socket overflow; resyncing with a dump", "netns", l.cfg.Netns)
			continue
		}
		return err
	}
}

func (l *Listener) dial() (*ct.Conn, error) {
	var c *ct.Conn
	err := netns.Do(l.cfg.Netns, func() error {
		var err error
		c, err = ct.Dial(nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial ctnetlink in netns %q: %w", l.cfg.Netns, err)
	}
	return c, nil
}

func (l *Listener) session(ctx context.Context, fn func(*Entry)) error {
	// Subscribe first, then dump: an entry created during the dump is then
	// seen at least once (twice is harmless, the table counts duplicates).
	s, err := openEvents(l.cfg.Netns, l.cfg.ReadBuffer)
	if err != nil {
		return err
	}
	defer s.close()

	l.dump(fn)

	err = s.readEvents(ctx, func(e *Entry, use bool, err error) {
		switch {
		case err != nil:
			l.Stats.BadEvents.Add(1)
		case !use:
			l.Stats.Ignored.Add(1)
		default:
			l.Stats.Events.Add(1)
			fn(e)
		}
	})
	if err != nil {
		return fmt.Errorf("conntrack events in netns %q: %w", l.cfg.Netns, err)
	}
	return nil
}

func (l *Listener) dump(fn func(*Entry)) {
	l.Stats.Dumps.Add(1)
	c, err := l.dial()
	if err != nil {
		l.Stats.DumpErrors.Add(1)
		l.log.Warn("conntrack dump failed", "err", err)
		return
	}
	defer c.Close()
	start := clock.now()
	flows, err := c.Dump(nil)
	if err != nil {
		l.Stats.DumpErrors.Add(1)
		l.log.Warn("conntrack dump failed", "netns", l.cfg.Netns, "err", err)
		return
	}
	var e Entry
	for i := range flows {
		if !fromFlow(&flows[i], EntryNew, &e) {
			l.Stats.Ignored.Add(1)
			continue
		}
		e.Dumped = true
		l.Stats.Events.Add(1)
		fn(&e)
	}
	fn(&Entry{Type: EntryDumpDone, Dumped: true, TimeNs: start})
}

// fromFlow fills e from a kernel flow; false for entries the path does not
// need (not TCP or UDP, or no address translated).
func fromFlow(f *ct.Flow, typ EntryType, e *Entry) bool {
	proto := f.TupleOrig.Proto.Protocol
	if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP {
		return false
	}
	*e = Entry{
		Type:  typ,
		Proto: proto,
		ID:    f.ID,
		Original: Tuple{
			Src: netip.AddrPortFrom(f.TupleOrig.IP.SourceAddress.Unmap(), f.TupleOrig.Proto.SourcePort),
			Dst: netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress.Unmap(), f.TupleOrig.Proto.DestinationPort),
		},
		Reply: Tuple{
			Src: netip.AddrPortFrom(f.TupleReply.IP.SourceAddress.Unmap(), f.TupleReply.Proto.SourcePort),
			Dst: netip.AddrPortFrom(f.TupleReply.IP.DestinationAddress.Unmap(), f.TupleReply.Proto.DestinationPort),
		},
		TimeNs: clock.now(),
	}
	// The tuples are the truth; status bits can lag on a destroy event.
	e.DNAT = e.Reply.Src != e.Original.Dst
	e.SNAT, e.PortRemap = srcRewrite(e.Original.Src, e.Reply.Dst)
	return e.DNAT || e.SNAT || e.PortRemap
}

// TableStats is the kernel's own view of the node's conntrack table. When
// the table is full the kernel drops the SYNs of new connections before any
// socket exists, so neither the ring buffer nor the event stream can see
// those connections: only these counters can.
type TableStats struct {
	Entries uint64 // entries in this namespace's table now
	Max     uint64 // nf_conntrack_max (one value for the whole host; 0 if the kernel does not say)
	// Summed over CPUs since the namespace was created.
	Drop         uint64 // packets dropped: table full and nothing could be evicted
	EarlyDrop    uint64 // entries evicted (not yet assured) to make room for a new one
	InsertFailed uint64 // entries that lost an insert race or clashed
}

// Drops is every packet or entry the table lost: what the
// lbpath.node.conntrack.drops self-metric sums over its reasons.
func (s TableStats) Drops() uint64 { return s.Drop + s.EarlyDrop + s.InsertFailed }

// Table reads the table's size and loss counters over ctnetlink (one
// request each, no dump), in the namespace the listener follows.
func (l *Listener) Table() (TableStats, error) {
	c, err := l.dial()
	if err != nil {
		return TableStats{}, err
	}
	defer c.Close()
	var st TableStats
	g, err := c.StatsGlobal()
	if err != nil {
		return st, fmt.Errorf("read conntrack table size in netns %q: %w", l.cfg.Netns, err)
	}
	st.Entries, st.Max = uint64(g.Entries), uint64(g.MaxEntries)
	cpus, err := c.Stats()
	if err != nil {
		return st, fmt.Errorf("read conntrack per-CPU counters in netns %q: %w", l.cfg.Netns, err)
	}
	for _, s := range cpus {
		st.Drop += uint64(s.Drop)
		st.EarlyDrop += uint64(s.EarlyDrop)
		st.InsertFailed += uint64(s.InsertFailed)
	}
	return st, nil
}
