package e2e

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbpath/lbpath/testbed"
)

// loadRound drives HTTP through the testbed's NAT (ClusterIP from the
// client pod, kept-alive connections, like wrk) for d and returns requests/s
// and the median latency.
func loadRound(cl *testbed.Cluster, conns int, d time.Duration) (float64, time.Duration) {
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
			c := cl.HTTPClient(cl.ClientPod.Netns, true)
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
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	var p50 time.Duration
	if len(lat) > 0 {
		p50 = lat[len(lat)/2]
	}
	return float64(n.Load()) / d.Seconds(), p50
}

// BenchmarkOverheadOnOff measures what the agents cost a real workload:
// HTTP through kube-proxy-style NAT at saturation (16 kept-alive
// connections, the client, servers and agents on the same two cores),
// agents off and on alternated for several rounds, compared as ratios of
// medians in one run (the method the peer figures in shared/notes used).
func BenchmarkOverheadOnOff(b *testing.B) {
	needCluster(b)
	ctx := context.Background()
	cl, err := testbed.Up(ctx, testbed.Options{Prefix: "lbh", Mode: testbed.ModeIPTables, Policy: testbed.PolicyCluster})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Down()
	const rounds, conns = 4, 16
	round := 4 * time.Second
	var off, on, agentCPU []float64
	bin := filepath.Join(b.TempDir(), "lbpath-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/lbpath-agent").CombinedOutput(); err != nil {
		b.Fatalf("build agent: %v\n%s", err, out)
	}
	var offP, onP []time.Duration
	loadRound(cl, conns, time.Second) // warm up
	for range b.N {
		for range rounds {
			r, p := loadRound(cl, conns, round)
			off, offP = append(off, r), append(offP, p)
			// One agent, as on a real node (the testbed's nodes share one
			// kernel; a second agent would run every hook twice).
			if os.Getenv("LBPATH_BENCH_AA") != "" { // A/A: the method's own bias
				r, p = loadRound(cl, conns, round)
				on, onP = append(on, r), append(onP, p)
				continue
			}
			// The agent as its own process, as on a node: in-process it would
			// share the Go runtime with the load generator and the servers.
			cmd := exec.Command(bin, "--node", "node1", "--netns", cl.Nodes[0].Netns, "--no-kube", "--output", "none", "--stats-interval", "0")
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			time.Sleep(time.Second) // programs attached, conntrack dumped
			r, p = loadRound(cl, conns, round)
			on, onP = append(on, r), append(onP, p)
			var ru syscall.Rusage
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			if st, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				ru = *st
			}
			cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			agentCPU = append(agentCPU, cpu.Seconds())
		}
	}
	med := func(v []float64) float64 { s := append([]float64(nil), v...); sort.Float64s(s); return s[len(s)/2] }
	medD := func(v []time.Duration) time.Duration {
		s := append([]time.Duration(nil), v...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	b.ReportMetric(med(off), "req/s-off")
	b.ReportMetric(med(on), "req/s-on")
	b.ReportMetric(med(on)/med(off), "throughput-on/off")
	if len(agentCPU) > 0 {
		b.ReportMetric(med(agentCPU)/(round.Seconds()+1), "agent-cpu-s/s")
	}
	b.ReportMetric(float64(medD(onP))/float64(medD(offP)), "p50-on/off")
}
