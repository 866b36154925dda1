package flow

import (
	"net/netip"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
)

// dialedVal is a connect() destination a socket load balancer rewrote,
// kept by socket cookie until the socket closes. The capture reports it at
// the SYN, in the same ring buffer as the socket's close and before it, so
// no wait is needed here: the close finds it or there was none.
type dialedVal struct {
	addr netip.AddrPort
	sec  uint32 // when connect() was called, whole seconds of the monotonic clock
}

// connect keeps what a socket's connect() asked for.
func (t *Table) connect(e *capture.Event) {
	if t.dialed == nil {
		t.dialed = map[uint64]dialedVal{}
	}
	if len(t.dialed) >= t.cfg.MaxOpen {
		t.Stats.DialedTableFull.Add(1)
		return
	}
	t.dialed[e.Cookie] = dialedVal{addr: e.Dialed, sec: uint32(e.TimeNs / uint64(time.Second))}
}

// applyDialed marks a client record whose Service was translated inside
// connect(): the address dialled is the Service's, and this node is where
// the translation happened.
func (t *Table) applyDialed(e *capture.Event, c *Connection) {
	if e.Side != capture.SideClient || len(t.dialed) == 0 {
		return
	}
	d, ok := t.dialed[e.Cookie]
	if !ok {
		return
	}
	delete(t.dialed, e.Cookie)
	c.Dialed, c.Target, c.SocketLB = d.addr, d.addr, true
	t.Stats.SocketLB.Add(1)
}

// sweepDialed drops translations whose socket's close never came (a lost
// ring-buffer record), after the same TTL as open sockets.
func (t *Table) sweepDialed(nowSec, ttl uint32) {
	for k, v := range t.dialed {
		if nowSec > v.sec && nowSec-v.sec > ttl {
			delete(t.dialed, k)
			t.Stats.DialedExpired.Add(1)
		}
	}
}
