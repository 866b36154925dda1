package flow

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
)

var (
	uClient = netip.MustParseAddrPort("10.244.1.200:40000")
	uVIP    = netip.MustParseAddrPort("10.96.0.53:53")
	uPod    = netip.MustParseAddrPort("10.244.2.10:8053")
	uNode   = netip.MustParseAddrPort("192.168.77.11:40000")
)

func udpNAT(typ conntrack.EntryType, id uint32, snatTo netip.AddrPort, at uint64) *conntrack.Entry {
	e := &conntrack.Entry{Type: typ, ID: id, Proto: conntrack.ProtoUDP,
		Original: conntrack.Tuple{Src: uClient, Dst: uVIP},
		Reply:    conntrack.Tuple{Src: uPod, Dst: snatTo}, TimeNs: at}
	e.DNAT = true
	e.SNAT = snatTo != uClient
	return e
}

func newUDPTest() (*UDPTable, *[]Connection, *[]Request) {
	var recs []Connection
	var reqs []Request
	t := NewUDPTable(Config{Node: "node2", JoinWait: time.Second,
		Requests: func(r *Request) { reqs = append(reqs, *r) }},
		capture.Clock{}, func(c *Connection) { recs = append(recs, *c) })
	return t, &recs, &reqs
}

// TestUDPServerFlowJoinsNAT: a server flow (the pod received first) is
// joined by its pod-side tuple with the DNAT+SNAT entry, with datagrams,
// bytes and latency by direction, and its exchange is a UDP Request.
func TestUDPServerFlowJoinsNAT(t *testing.T) {
	tb, recs, reqs := newUDPTest()
	tb.NAT(udpNAT(conntrack.EntryNew, 7, uNode, 100))
	tb.Event(&capture.UDPEvent{Type: capture.UDPEventFlow, Side: capture.SideServer, Local: uPod, Remote: uNode, TimeNs: 110})
	tb.Event(&capture.UDPEvent{Type: capture.UDPEventExchange, Side: capture.SideServer, Local: uPod, Remote: uNode, StartNs: 110, TimeNs: 150})
	tb.Tick(5e9) // no forward record: the flow claimed the entry
	tb.Flow(&capture.UDPFlow{Side: capture.SideServer, Local: uPod, Remote: uNode, FirstNs: 110, LastNs: 150,
		BytesIn: 30, BytesOut: 90, DatagramsIn: 1, DatagramsOut: 2, Exchanges: 1, LatencySum: 40, LatencyMax: 40})
	if len(*recs) != 1 {
		t.Fatalf("records %+v", *recs)
	}
	c := (*recs)[0]
	if c.Transport != TransportUDP || c.Role != RoleServer || c.Outcome != OutcomeOK || c.NAT == nil || !c.SNAT ||
		c.Client != uClient || c.Target != uVIP || c.PodSrc != uNode || c.PodDst != uPod ||
		c.BytesToServer != 30 || c.BytesToClient != 90 || c.DatagramsToServer != 1 || c.DatagramsToClient != 2 ||
		c.Exchanges != 1 || c.LatencyMaxNs != 40 || c.Duration() != 40 {
		t.Errorf("record %+v", c)
	}
	if len(*reqs) != 1 || (*reqs)[0].Transport != TransportUDP || (*reqs)[0].Latency != 40 || (*reqs)[0].PodDst != uPod {
		t.Errorf("requests %+v", *reqs)
	}
}

// TestUDPClientFlowAndForward: on the entry node a client pod's flow joins
// the DNAT entry by the original tuple; a DNAT entry no local flow claims
// becomes one forward record after JoinWait, and only one.
func TestUDPClientFlowAndForward(t *testing.T) {
	tb, recs, _ := newUDPTest()
	tb.Event(&capture.UDPEvent{Type: capture.UDPEventFlow, Side: capture.SideClient, Local: uClient, Remote: uVIP, TimeNs: 90})
	tb.NAT(udpNAT(conntrack.EntryNew, 1, uClient, 100)) // arrives after the flow's first datagram
	other := udpNAT(conntrack.EntryNew, 2, uNode, 100)
	other.Original.Src = netip.MustParseAddrPort("192.168.77.100:5000")
	tb.NAT(other)
	tb.Tick(100 + uint64(time.Second) - 1)
	if len(*recs) != 0 {
		t.Fatalf("early records %+v", *recs)
	}
	tb.Tick(100 + uint64(time.Second))
	tb.Tick(100 + 3*uint64(time.Second))
	if len(*recs) != 1 || (*recs)[0].Role != RoleForward || (*recs)[0].Client != other.Original.Src || (*recs)[0].Transport != TransportUDP {
		t.Fatalf("want one forward record for the unclaimed entry, got %+v", *recs)
	}
	tb.Flow(&capture.UDPFlow{Side: capture.SideClient, Local: uClient, Remote: uVIP, FirstNs: 90, LastNs: 95,
		BytesOut: 10, DatagramsOut: 1, Unanswered: true})
	c := (*recs)[1]
	if c.Role != RoleClient || c.NAT == nil || c.NAT.ID != 1 || c.SNAT || c.PodDst != uPod || c.Outcome != OutcomeUnanswered || c.BytesToServer != 10 {
		t.Errorf("client record %+v", c)
	}
	// Merge keeps it apart from a TCP connection on the same tuple.
	tcp := c
	tcp.Transport = ""
	if ms := Merge([]Connection{c, tcp}); len(ms) != 2 {
		t.Errorf("TCP and UDP records on one tuple merged: %+v", ms)
	}
}

// TestUDPIgnoresTCPAndDestroy: TCP entries are not UDP's; a destroyed entry
// joins nothing; the TCP table ignores UDP entries.
func TestUDPIgnoresTCPAndDestroy(t *testing.T) {
	tb, recs, _ := newUDPTest()
	tcpEntry := udpNAT(conntrack.EntryNew, 3, uNode, 100)
	tcpEntry.Proto = conntrack.ProtoTCP
	tb.NAT(tcpEntry)
	tb.NAT(udpNAT(conntrack.EntryNew, 4, uNode, 100))
	tb.NAT(udpNAT(conntrack.EntryDestroy, 4, uNode, 200))
	tb.Flow(&capture.UDPFlow{Side: capture.SideServer, Local: uPod, Remote: uNode, FirstNs: 110, LastNs: 150})
	if len(*recs) != 1 || (*recs)[0].NAT != nil || tb.Stats.NoNAT.Load() != 1 {
		t.Errorf("records %+v", *recs)
	}
	tcp := NewTable(Config{Node: "n"}, capture.Clock{}, func(*Connection) {})
	tcp.NAT(udpNAT(conntrack.EntryNew, 5, uNode, 100))
	if n, _, _ := tcp.Sizes(); n != 0 {
		t.Errorf("TCP table stored a UDP entry")
	}
}

// TestUDPScope: flows of other nodes' sockets are left out and counted.
func TestUDPScope(t *testing.T) {
	var recs []Connection
	tb := NewUDPTable(Config{Scope: func(netip.Addr, uint32) bool { return false }}, capture.Clock{},
		func(c *Connection) { recs = append(recs, *c) })
	tb.Flow(&capture.UDPFlow{Side: capture.SideServer, Local: uPod, Remote: uNode})
	if len(recs) != 0 || tb.Stats.OutOfScope.Load() != 1 {
		t.Errorf("out-of-scope flow recorded: %+v", recs)
	}
}
