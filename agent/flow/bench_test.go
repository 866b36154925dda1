package flow

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
)

// record encodes a ring-buffer record the way the kernel program lays it out.
func record(typ capture.EventType, side capture.Side, cookie uint64, local, remote netip.AddrPort, at uint64) []byte {
	b := make([]byte, capture.EventSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], cookie)
	le.PutUint64(b[8:], at-1000)
	le.PutUint64(b[16:], at)
	le.PutUint64(b[24:], 4000)
	le.PutUint64(b[32:], 120)
	l4, r4 := local.Addr().As4(), remote.Addr().As4()
	copy(b[40:], l4[:])
	copy(b[56:], r4[:])
	le.PutUint32(b[72:], 4026531840)
	le.PutUint32(b[76:], 250)
	le.PutUint16(b[88:], local.Port())
	le.PutUint16(b[90:], remote.Port())
	le.PutUint16(b[92:], 2)
	b[94], b[95], b[96] = byte(typ), byte(side), 4
	return b
}

// BenchmarkDecodeJoin measures the user-space path per connection on the
// pod's node: a NAT entry, then the server socket's open and close records
// decoded from ring-buffer bytes and joined into one Connection. Reported
// per event (3 events per connection).
func BenchmarkDecodeJoin(b *testing.B) {
	const conns = 4096
	type input struct {
		nat         conntrack.Entry
		open, close []byte
	}
	in := make([]input, conns)
	for i := range in {
		cport := uint16(10000 + i)
		nport := uint16(30000 + i)
		cl := netip.AddrPortFrom(client.Addr(), cport)
		nd := netip.AddrPortFrom(nodeIP.Addr(), nport)
		in[i].nat = conntrack.Entry{Type: conntrack.EntryNew, ID: uint32(i),
			Original: conntrack.Tuple{Src: cl, Dst: vip}, Reply: conntrack.Tuple{Src: podAddr, Dst: nd},
			DNAT: true, SNAT: true, TimeNs: 1}
		in[i].open = record(capture.EventOpen, capture.SideServer, uint64(i), podAddr, nd, 2)
		in[i].close = record(capture.EventClose, capture.SideServer, uint64(i), podAddr, nd, 3)
	}
	var emitted int
	tb := NewTable(Config{Node: "node1"}, capture.Clock{}, func(*Connection) { emitted++ })
	var ev capture.Event
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		x := &in[n%conns]
		tb.NAT(&x.nat)
		if err := capture.Decode(x.open, &ev); err != nil {
			b.Fatal(err)
		}
		tb.Socket(&ev)
		if err := capture.Decode(x.close, &ev); err != nil {
			b.Fatal(err)
		}
		tb.Socket(&ev)
		d := x.nat
		d.Type = conntrack.EntryDestroy
		tb.NAT(&d)
	}
	b.StopTimer()
	if emitted != b.N {
		b.Fatalf("emitted %d records for %d connections", emitted, b.N)
	}
	perEvent := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / 4
	b.ReportMetric(perEvent, "ns/event")
	b.ReportMetric(1e9/perEvent, "events/s")
}

// BenchmarkDecode measures decoding alone.
func BenchmarkDecode(b *testing.B) {
	raw := record(capture.EventClose, capture.SideServer, 1, podAddr, nodeIP, 3)
	var ev capture.Event
	b.ReportAllocs()
	for b.Loop() {
		if err := capture.Decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
