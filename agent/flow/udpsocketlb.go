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

// udpDialed is a connected UDP socket's connect() destination that a
// socket load balancer rewrote.
type udpDialed struct {
	addr   netip.AddrPort
	seen   uint64 // connect() or last join, ns
	cookie uint64 // the first flow's socket cookie (0 until one joined)
}

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
	if _, ok := t.dialed[k]; !ok && len(t.dialed) >= t.cfg.MaxOpen {
		t.Stats.DialedTableFull.Add(1)
		return
	}
	t.dialed[k] = &udpDialed{addr: e.Dialed, seen: e.TimeNs}
}

// applyDialed marks a client flow of a socket whose connect() was
// translated: the Service address dialled is its target, this node the
// entry. The first flow to join binds the record to its socket cookie, so
// a later socket that happens to reuse the four-tuple without a
// translation is not taken for it.
func (t *UDPTable) applyDialed(f *capture.UDPFlow, c *Connection) {
	if f.Side != capture.SideClient || len(t.dialed) == 0 {
		return
	}
	d := t.dialed[udpDialKey{f.Netns, f.Local, f.Remote}]
	if d == nil || (d.cookie != 0 && d.cookie != f.Cookie) {
		return
	}
	d.cookie, d.seen = f.Cookie, max(d.seen, f.LastNs)
	c.Dialed, c.Target, c.SocketLB = d.addr, d.addr, true
	t.Stats.SocketLB.Add(1)
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
