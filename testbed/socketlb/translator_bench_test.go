package socketlb

import (
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/internal/testenv"
)

// BenchmarkTranslatedConnect: what one translated connect() costs the
// socket-LB translator's connect4 program (kernel.bpf_stats_enabled), and
// loopback TCP connect+close through the translator (dialling the VIP)
// against dialling the backend, alternating rounds in one run, in a
// fresh network namespace.
func BenchmarkTranslatedConnect(b *testing.B) {
	testenv.Root(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf stats: %v", err)
	}
	defer stats.Close()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	ns := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/net"
	if out, err := exec.Command("nsenter", "--net="+ns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		b.Fatalf("lo up: %v %s", err, out)
	}
	tr, err := Attach()
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	if err := tr.AllowNetns(ns); err != nil {
		b.Fatal(err)
	}
	vip := netip.MustParseAddrPort("10.96.7.7:80")
	err = netns.Do(ns, func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		be := ln.Addr().(*net.TCPAddr).AddrPort()
		if err := tr.SetService(TCP, vip, []netip.AddrPort{be}); err != nil {
			return err
		}
		runTranslatedBench(b, tr, vip, be)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

func runTranslatedBench(b *testing.B, tr *Translator, vip, be netip.AddrPort) {
	dial := func(to netip.AddrPort, n int) time.Duration {
		start := time.Now()
		for range n {
			c, err := net.Dial("tcp", to.String())
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
		return time.Since(start)
	}
	const rounds = 3
	n := (b.N + rounds - 1) / rounds
	var direct, via time.Duration
	before, _, _ := tr.ProgramStats()
	c0, _ := tr.Counts()
	b.ResetTimer()
	for range rounds {
		direct += dial(be, n)
		via += dial(vip, n)
	}
	b.StopTimer()
	after, _, _ := tr.ProgramStats()
	c1, _ := tr.Counts()
	if got := c1.All - c0.All; got != uint64(rounds*n) {
		b.Fatalf("translated %d connects, want %d", got, rounds*n)
	}
	per := float64(rounds * n)
	b.ReportMetric(float64(direct.Nanoseconds())/per, "ns/connect-direct")
	b.ReportMetric(float64(via.Nanoseconds())/per, "ns/connect-translated")
	b.ReportMetric(float64(via)/float64(direct), "connect-ratio")
	if runs := after.RunCount - before.RunCount; runs > 0 {
		// Runs cover both the direct and the translated connects.
		b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "ns/run-connect4")
	}
	b.ReportMetric(0, "ns/op")
}
