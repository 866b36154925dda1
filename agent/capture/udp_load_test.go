package capture

import (
	"net"
	"testing"
	"time"

	"github.com/lbpath/lbpath/internal/testenv"
)

// TestUDPLoadsAndCounts: the UDP programs pass this kernel's verifier,
// attach to the cgroup v2 root and count one loopback exchange exactly.
func TestUDPLoadsAndCounts(t *testing.T) {
	testenv.Root(t)
	u, err := OpenUDP(UDPConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		b := make([]byte, 2048)
		n, peer, err := srv.ReadFromUDP(b)
		if err == nil {
			srv.WriteToUDP(append(b[:n:n], "pong"...), peer)
		}
	}()
	cl, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cl.Write(make([]byte, 37))
	cl.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 2048)
	n, err := cl.Read(b)
	if err != nil || n != 41 {
		t.Fatalf("read %d %v", n, err)
	}
	var got []UDPFlow
	_, err = u.Expire(MonoNow(), 0, func(f *UDPFlow) {
		if f.Local.Port() == uint16(srv.LocalAddr().(*net.UDPAddr).Port) || f.Remote.Port() == uint16(srv.LocalAddr().(*net.UDPAddr).Port) {
			got = append(got, *f)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("flows %+v", got)
	}
	for _, f := range got {
		in, out := uint64(37), uint64(41) // server: request in, response out
		if f.Side == SideClient {
			in, out = 41, 37
		} else if f.Side != SideServer {
			t.Errorf("side %v", f.Side)
		}
		if f.BytesIn != in || f.BytesOut != out || f.DatagramsIn != 1 || f.DatagramsOut != 1 ||
			f.Exchanges != 1 || f.Unanswered || f.LatencyMax <= 0 || f.LatencySum != f.LatencyMax || f.Netns == 0 {
			t.Errorf("flow %+v: want %d bytes in, %d out, one datagram each way, one answered exchange", f, in, out)
		}
	}
}
