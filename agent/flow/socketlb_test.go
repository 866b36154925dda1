package flow

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
)

// A socket-LB translation: connect() asked for the ClusterIP, the socket
// went to the pod, no conntrack entry. The client record names the
// ClusterIP as dialled and itself as the entry; the same tuple's server
// record is merged with it.
func TestSocketLBConnectNamesDialled(t *testing.T) {
	tb, r := newTable(Config{JoinWait: 100 * time.Millisecond})
	clusterIP := netip.MustParseAddrPort("10.96.0.10:80")
	cpod := netip.MustParseAddrPort("10.244.1.200:41000")
	tb.Socket(&capture.Event{Type: capture.EventConnect, Side: capture.SideClient, Cookie: 7, TimeNs: 1 * ms,
		Local: netip.AddrPortFrom(cpod.Addr(), 0), Remote: podAddr, Dialed: clusterIP})
	tb.Socket(&capture.Event{Type: capture.EventOpen, Side: capture.SideClient, Cookie: 7, StartNs: 1 * ms, TimeNs: 2 * ms, Local: cpod, Remote: podAddr})
	tb.Socket(&capture.Event{Type: capture.EventClose, Side: capture.SideClient, Cookie: 7, StartNs: 1 * ms, TimeNs: 5 * ms, Local: cpod, Remote: podAddr, BytesAcked: 10, BytesReceived: 20})
	// A direct connection of the same client (no connect record) stays direct.
	direct := netip.MustParseAddrPort("10.244.1.200:41001")
	tb.Socket(&capture.Event{Type: capture.EventClose, Side: capture.SideClient, Cookie: 8, StartNs: 1 * ms, TimeNs: 5 * ms, Local: direct, Remote: podAddr})
	tb.Socket(&capture.Event{Type: capture.EventClose, Side: capture.SideServer, Cookie: 9, StartNs: 1 * ms, TimeNs: 5 * ms, Local: podAddr, Remote: cpod, BytesAcked: 20, BytesReceived: 10})
	tb.Flush()
	if len(r.got) != 3 {
		t.Fatalf("%d records, want 3: %+v", len(r.got), r.got)
	}
	var lbRec, directRec Connection
	for _, c := range r.got {
		switch {
		case c.Role == RoleClient && c.Client == cpod:
			lbRec = c
		case c.Role == RoleClient && c.Client == direct:
			directRec = c
		}
	}
	if !lbRec.SocketLB || lbRec.Dialed != clusterIP || lbRec.Target != clusterIP || lbRec.PodDst != podAddr || lbRec.NAT != nil {
		t.Errorf("socket-LB record %+v: want socket_lb, dialled and target %v, pod_dst %v", lbRec, clusterIP, podAddr)
	}
	if directRec.SocketLB || directRec.Dialed.IsValid() || directRec.Target != podAddr {
		t.Errorf("direct record %+v marked translated", directRec)
	}
	if n := tb.Stats.SocketLB.Load(); n != 1 {
		t.Errorf("SocketLB stat %d, want 1", n)
	}
	ms := Merge(r.got)
	var found bool
	for _, m := range ms {
		if m.ClientRec != nil && m.ClientRec.SocketLB {
			found = true
			if m.Server == nil || m.EntryNode != "node1" || m.Target != clusterIP || m.SNAT || m.Entry != m.ClientRec {
				t.Errorf("merged %+v: want server joined, entry node1, target %v, no SNAT", m, clusterIP)
			}
		}
	}
	if !found {
		t.Errorf("no merged socket-LB connection in %+v", ms)
	}
	if len(tb.dialed) != 0 {
		t.Errorf("dialed table keeps %d entries after the close", len(tb.dialed))
	}
}

// A connect record whose close never comes is dropped after OpenTTL and counted.
func TestSocketLBDialedExpires(t *testing.T) {
	tb, _ := newTable(Config{OpenTTL: 2 * time.Second})
	tb.Socket(&capture.Event{Type: capture.EventConnect, Side: capture.SideClient, Cookie: 1, TimeNs: uint64(time.Second),
		Local: netip.MustParseAddrPort("10.244.1.200:0"), Remote: podAddr, Dialed: netip.MustParseAddrPort("10.96.0.10:80")})
	tb.Tick(uint64(10 * time.Second))
	tb.Tick(uint64(20 * time.Second))
	if len(tb.dialed) != 0 || tb.Stats.DialedExpired.Load() != 1 {
		t.Errorf("dialed %d entries, expired %d; want 0 and 1", len(tb.dialed), tb.Stats.DialedExpired.Load())
	}
}
