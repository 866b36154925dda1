package e2e

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/internal/testenv"
)

// BenchmarkSocketLBConnectCapture: what the connect() capture costs, in one
// run: loopback TCP connect+close with the agent's capture loaded without
// and with connect.bpf.c, alternating rounds so drift of this shared
// machine hits both; and getpid(), because enabling any syscall tracepoint
// sends every syscall of every task through the tracing slow path. It also
// reports the three programs' own run time (kernel.bpf_stats_enabled).
func BenchmarkSocketLBConnectCapture(b *testing.B) {
	testenv.Root(b)
	needTracefs(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf stats: %v", err)
	}
	defer stats.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
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
	addr := ln.Addr().String()
	dial := func(n int) time.Duration {
		start := time.Now()
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
		return time.Since(start)
	}
	getpid := func(n int) time.Duration {
		start := time.Now()
		for range n * 50 {
			unix.Getpid()
		}
		return time.Since(start) / 50
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var conn, pid [2]time.Duration // [without, with]
	var progNs, progRuns [3]uint64 // sys_enter_connect, SYN_SENT, sys_exit_connect
	const rounds = 3
	b.ResetTimer()
	for r := range 2 * rounds {
		with := r%2 == 1
		b.StopTimer()
		c, err := capture.Open(capture.Config{NoConnectCapture: !with}, log)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { c.Run(ctx, func(*capture.Event) {}, func(error) {}); close(done) }()
		if with && !contains(c.Programs(), "connect_dst") {
			b.Fatalf("connect capture unavailable: %v", c.Unavailable)
		}
		before, _ := c.ConnectProgramStats()
		b.StartTimer()
		n := (b.N + rounds - 1) / rounds
		i := 0
		if with {
			i = 1
		}
		conn[i] += dial(n)
		pid[i] += getpid(n)
		b.StopTimer()
		after, _ := c.ConnectProgramStats()
		for k, name := range []string{"on_sys_connect", "on_connect_syn", "on_sys_connect_exit"} {
			progNs[k] += uint64(after[name].Runtime - before[name].Runtime)
			progRuns[k] += after[name].RunCount - before[name].RunCount
		}
		cancel()
		<-done
		c.Close()
		b.StartTimer()
	}
	b.StopTimer()
	per := float64(rounds * ((b.N + rounds - 1) / rounds))
	b.ReportMetric(float64(conn[0].Nanoseconds())/per, "ns/connect-without")
	b.ReportMetric(float64(conn[1].Nanoseconds())/per, "ns/connect-with")
	b.ReportMetric(float64(conn[1])/float64(conn[0]), "connect-ratio")
	b.ReportMetric(float64(pid[0].Nanoseconds())/per, "ns/getpid-without")
	b.ReportMetric(float64(pid[1].Nanoseconds())/per, "ns/getpid-with")
	for k, name := range []string{"sys_enter_connect", "syn_sent", "sys_exit_connect"} {
		if progRuns[k] > 0 {
			b.ReportMetric(float64(progNs[k])/float64(progRuns[k]), "ns/run-"+name)
		}
	}
	b.ReportMetric(0, "ns/op")
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
