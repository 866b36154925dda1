package e2e

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpath/lbpath/testbed"
)

// loadRound drives HTTP through the testbed's NAT (ClusterIP from the
// client pod) for d from conns concurrent clients and returns requests/s and
// the latency percentiles. With keepAlive each client reuses one connection
// (like wrk); without, every request is a new connection (the agent's
// per-connection path).
func loadRound(cl *testbed.Cluster, conns int, keepAlive bool, d time.Duration) (rps float64, p50, p99 time.Duration) {
	var n atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	url := "http://" + cl.Web().ClusterAddr().String() + "/"
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cl.HTTPClient(cl.ClientPod.Netns, keepAlive)
			defer c.CloseIdleConnections()
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				resp, err := c.Get(url)
				if err != nil {
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mine = append(mine, time.Since(t0))
				n.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	if len(lat) > 0 {
		p50, p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return float64(n.Load()) / d.Seconds(), p50, p99
}

// waitIdle waits until pid has used less than 10 ms of CPU in 300 ms, or
// for at most limit.
func waitIdle(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		c0 := cpuTime(pid)
		time.Sleep(300 * time.Millisecond)
		if cpuTime(pid)-c0 < 10*time.Millisecond {
			return
		}
	}
}

// BenchmarkOverheadOnOff measures what the agent costs a real workload:
// HTTP through kube-proxy-style NAT at saturation (16 clients; the client,
// servers and agent on the same two cores), agent off and on alternated in
// ABBA order for several rounds, compared as ratios of medians in one run
// (the method the peer figures in shared/notes used). Two workloads:
// kept-alive connections (the agent's per-request path) and a new
// connection per request (its per-connection path). LBPATH_BENCH_AA=1
// leaves the agent off in both slots to measure the method's own bias.
func BenchmarkOverheadOnOff(b *testing.B) {
	needCluster(b)
	ctx := context.Background()
	cl, err := testbed.Up(ctx, testbed.Options{Prefix: "lbh", Mode: testbed.ModeIPTables, Policy: testbed.PolicyCluster})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Down()
	bin := buildAgent(b, releaseFlags...)
	rounds, round := 2, 2*time.Second
	if fullScale() {
		rounds, round = 10, 4*time.Second
	}
	const conns = 16
	aa := os.Getenv("LBPATH_BENCH_AA") != ""
	for _, keepAlive := range []bool{true, false} {
		name := "keepalive"
		if !keepAlive {
			name = "fresh-connections"
		}
		b.Run(name, func(b *testing.B) {
			var off, on, offP50, onP50, offP99, onP99, cpuPer10k []float64
			var last map[string]string
			loadRound(cl, conns, keepAlive, time.Second) // warm up
			measure := func(withAgent bool) {
				var p *agentProc
				if withAgent && !aa {
					// One agent, as on a real node (the testbed's nodes
					// share one kernel; a second agent would run every
					// hook twice), as its own process.
					if os.Getenv("LBPATH_BENCH_PROFILE") != "" {
						os.Setenv("LBPATH_CPUPROFILE", filepath.Join(os.Getenv("LBPATH_BENCH_PROFILE"), name+".pprof"))
						defer os.Unsetenv("LBPATH_CPUPROFILE")
					}
					p = startAgentProc(b, bin, "--node", "node1", "--netns", cl.Nodes[0].Netns, "--no-kube",
						"--output", "none", "--stats-interval", "0", "--health-addr", "")
					// Programs attached; the start-up conntrack dump (tens
					// of thousands of TIME_WAIT entries left by earlier
					// rounds) takes longer: it is start-up cost, not cost
					// per request, so wait until the agent is idle.
					waitIdle(p.cmd.Process.Pid, 10*time.Second)
				}
				var cpu0 time.Duration
				if p != nil {
					cpu0 = cpuTime(p.cmd.Process.Pid)
				}
				r, p50, p99 := loadRound(cl, conns, keepAlive, round)
				if p != nil {
					cpu := cpuTime(p.cmd.Process.Pid) - cpu0
					cpuPer10k = append(cpuPer10k, cpu.Seconds()*1e4/(r*round.Seconds()))
					p.stop(b)
					last = p.lastStats("agent stats")
				}
				if withAgent {
					on, onP50, onP99 = append(on, r), append(onP50, float64(p50)), append(onP99, float64(p99))
				} else {
					off, offP50, offP99 = append(off, r), append(offP50, float64(p50)), append(offP99, float64(p99))
				}
			}
			for range b.N {
				for i := range rounds {
					measure(i%2 == 1) // ABBA: off,on / on,off, so drift hits both alike
					measure(i%2 == 0)
				}
			}
			med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
			b.ReportMetric(med(off), "req/s-off")
			b.ReportMetric(med(on), "req/s-on")
			b.ReportMetric(med(on)/med(off), "throughput-on/off")
			b.ReportMetric(med(onP50)/med(offP50), "p50-on/off")
			b.ReportMetric(med(onP99)/med(offP99), "p99-on/off")
			if len(cpuPer10k) > 0 {
				b.ReportMetric(med(cpuPer10k), "agent-cpu-s/10k-req")
			}
			b.Logf("%s: off %v req/s, on %v req/s; p99 off %v, on %v (ns); agent CPU s/10k requests %v; last agent stats %v",
				name, off, on, offP99, onP99, cpuPer10k, last)
		})
	}
}
