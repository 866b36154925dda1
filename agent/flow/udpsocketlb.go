package flow

import (
	"net/netip"

	"github.com/lbpath/lbpath/agent/capture"
)

// udpDialKey is a connected UDP socket by what its flows carry: its
// namespace and four-tuple (the connect() capture cannot have the
// socket's cookie there; see connect.bpf.c, on_sys_connect_exit).
type udpDialKey struct {
	netns         uint32
	local, remote netip.AddrPort
}

// udpDialed holds the last translated connect()s of one four-tuple: a
// socket that closed and a new one that got the same source port and the
// same backend share it, and the first one's flow may be emitted (once
// idle) after the second connect().
type udpDialed struct {
	seen    uint64 // last connect() or join, ns
	connect [udpDialedKeep]struct {
		addr netip.AddrPort
		at   uint64
	}
}

const udpDialedKeep = 4

// Connect keeps what a connected UDP socket's connect() asked for, until
// its flows come (UDP flows are emitted only once idle).
func (t *UDPTable) Connect(e *capture.Event) {
	if !t.inScope(e.Local.Addr(), e.Netns) {
		t.Stats.OutOfScope.Add(1)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dialed == nil {
		t.dialed = map[udpDialKey]*udpDialed{}
	}
	k := udpDialKey{e.Netns, e.Local, e.Remote}
	d := t.dialed[k]
	if d == nil {
		if len(t.dialed) >= t.cfg.MaxOpen {
			t.Stats.DialedTableFull.Add(1)
			return
		}
		d = &udpDialed{}
		t.dialed[k] = d
	}
	copy(d.connect[1:], d.connect[:udpDialedKeep-1])
	d.connect[0].addr, d.connect[0].at = e.Dialed, e.StartNs
	d.seen = max(d.seen, e.TimeNs)
}

// applyDialed marks a client flow whose socket's connect() was translated:
// the Service address dialled is its target, this node the entry. The
// flow takes the latest translated connect() of its four-tuple made before
// its first datagram. Limit: a socket that reuses that four-tuple (same
// source port, same backend) within NATTTL with a connect() straight to
// the backend, which leaves no record, would be taken as translated.
func (t *UDPTable) applyDialed(f *capture.UDPFlow, c *Connection) {
	if f.Side != capture.SideClient || len(t.dialed) == 0 {
		return
	}
	d := t.dialed[udpDialKey{f.Netns, f.Local, f.Remote}]
	if d == nil {
		return
	}
	for _, cn := range d.connect {
		if cn.addr.IsValid() && cn.at <= f.FirstNs {
			d.seen = max(d.seen, f.LastNs)
			c.Dialed, c.Target, c.SocketLB = cn.addr, cn.addr, true
			t.Stats.SocketLB.Add(1)
			return
		}
	}
}

// sweepDialed forgets translations not joined for NATTTL: the socket
// closed (a UDP socket's close is not captured).
func (t *UDPTable) sweepDialed(now uint64) {
	for k, d := range t.dialed {
		if now > d.seen && now-d.seen > uint64(t.cfg.NATTTL) {
			delete(t.dialed, k)
		}
	}
}
