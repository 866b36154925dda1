package capture

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/lbpath/lbpath/agent/bpf"
)

// TestUDPEventLayout: the decoder's offsets match the generated structs.
func TestUDPEventLayout(t *testing.T) {
	if got := unsafe.Sizeof(bpf.UdpUdpEvent{}); got != UDPEventSize {
		t.Fatalf("struct udp_event is %d bytes, decoder assumes %d", got, UDPEventSize)
	}
	if got := unsafe.Sizeof(bpf.UdpUdpKey{}); got != 48 {
		t.Fatalf("struct udp_key is %d bytes, decoder assumes 48", got)
	}
	ev := bpf.UdpUdpEvent{TsNs: 11, StartNs: 7, Netns: 99, Bytes: 42, Type: 2, Side: 2}
	ev.Key.Cookie = 5
	ev.Key.Family = 2
	copy(ev.Key.Laddr[:], []byte{10, 244, 1, 5})
	copy(ev.Key.Raddr[:], []byte{192, 168, 77, 11})
	ev.Key.Lport, ev.Key.Rport = 8080, 40000
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, &ev); err != nil {
		t.Fatal(err)
	}
	var e UDPEvent
	if err := DecodeUDP(buf.Bytes(), &e); err != nil {
		t.Fatal(err)
	}
	want := UDPEvent{Type: UDPEventExchange, Side: SideServer, Cookie: 5,
		Local:  netip.MustParseAddrPort("10.244.1.5:8080"),
		Remote: netip.MustParseAddrPort("192.168.77.11:40000"), Netns: 99, TimeNs: 11, StartNs: 7, Bytes: 42}
	if e != want {
		t.Fatalf("decoded %+v, want %+v", e, want)
	}
	if err := DecodeUDP(buf.Bytes()[:UDPEventSize-1], &e); err == nil {
		t.Fatal("short record decoded")
	}
	b := buf.Bytes()
	b[44] = 3 // family
	if err := DecodeUDP(b, &e); err == nil {
		t.Fatal("unknown family decoded")
	}
}
