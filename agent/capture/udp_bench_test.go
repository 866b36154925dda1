package capture

import (
	"io"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/internal/testenv"
)

// BenchmarkUDPDatagram measures the UDP programs' cost per datagram: a
// loopback request/response ping-pong (two datagrams per op, each passing
// egress and ingress) without and with the programs attached, in one run
// so the two can be compared (ns/op ratio), and the programs' own run
// time from kernel.bpf_stats_enabled (bpf-ns/datagram). Loopback is the
// cheapest path a datagram can take, so the ratio is an upper bound of the
// relative cost. Run under the e2e lock: it attaches to the cgroup root.
func BenchmarkUDPDatagram(b *testing.B) {
	testenv.Root(b)
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			var u *UDP
			if on {
				stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
				if err != nil {
					b.Fatal(err)
				}
				defer stats.Close()
				if u, err = OpenUDP(UDPConfig{MaxFlows: 1 << 16}, nil); err != nil {
					b.Fatal(err)
				}
				defer u.Close()
			}
			srv, cl := udpPair(b)
			defer srv.Close()
			defer cl.Close()
			go func() {
				buf := make([]byte, 2048)
				for {
					n, peer, err := srv.ReadFromUDPAddrPort(buf)
					if err != nil {
						return
					}
					srv.WriteToUDPAddrPort(buf[:n], peer)
				}
			}()
			req := make([]byte, 64)
			buf := make([]byte, 2048)
			b.ResetTimer()
			for b.Loop() {
				cl.Write(req)
				if _, err := cl.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if u != nil {
				st, err := u.ProgramStats()
				if err != nil {
					b.Fatal(err)
				}
				var runs, ns uint64
				for _, s := range st {
					runs += s.RunCount
					ns += uint64(s.Runtime)
				}
				if runs > 0 {
					// Each datagram runs egress once and ingress once.
					b.ReportMetric(float64(ns)/float64(runs)*2, "bpf-ns/datagram")
				}
				u.Expire(MonoNow(), 0, func(*UDPFlow) {})
			}
		})
	}
}

func udpPair(b *testing.B) (*net.UDPConn, *net.UDPConn) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	cl, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	return srv, cl
}

// BenchmarkTCPWithUDPPrograms: the UDP programs also run (and leave at
// once) for every TCP packet a local socket sends or receives; this is
// that cost on a loopback TCP stream of 64 KiB writes, off and on in one
// run (MB/s ratio).
func BenchmarkTCPWithUDPPrograms(b *testing.B) {
	testenv.Root(b)
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			var u *UDP
			if on {
				stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
				if err != nil {
					b.Fatal(err)
				}
				defer stats.Close()
				if u, err = OpenUDP(UDPConfig{}, nil); err != nil {
					b.Fatal(err)
				}
				defer u.Close()
				defer func() {
					// The early exit's cost per TCP packet (data and ACKs).
					st, err := u.ProgramStats()
					if err != nil {
						b.Fatal(err)
					}
					var runs, ns uint64
					for _, s := range st {
						runs += s.RunCount
						ns += uint64(s.Runtime)
					}
					if runs > 0 {
						b.ReportMetric(float64(ns)/float64(runs), "bpf-ns/packet")
					}
				}()
			}
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err == nil {
					io.Copy(io.Discard, c)
					c.Close()
				}
			}()
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			chunk := make([]byte, 64<<10)
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
