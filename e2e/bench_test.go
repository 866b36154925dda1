package e2e

import (
	"context"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

// kernelCostCluster is the kernel-cost benchmarks' set-up: BPF run-time
// statistics on, an nftables/Cluster testbed (LB via node1) and an agent
// per node; all undone when b ends.
func kernelCostCluster(b *testing.B, prefix string) (*testbed.Cluster, *nodeagents.Set) {
	b.Helper()
	needCluster(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf stats: %v", err)
	}
	b.Cleanup(func() { stats.Close() })
	cl, err := testbed.Up(context.Background(), testbed.Options{Prefix: prefix, Mode: testbed.ModeNFTables, Policy: testbed.PolicyCluster})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cl.Down() })
	set, err := nodeagents.Start(cl, nodeagents.Options{Flow: flow.Config{JoinWait: 200 * time.Millisecond}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { set.Stop() })
	cl.RouteLB(1)
	return cl, set
}

// BenchmarkKernelCostPerEvent measures what each eBPF program costs per run
// under real testbed traffic (kernel.bpf_stats_enabled: run_time_ns /
// run_cnt), and per connection. Each b.N is one HTTP request on a fresh
// connection through the LB IP with Cluster policy (DNAT + SNAT, half of
// them cross-node).
func BenchmarkKernelCostPerEvent(b *testing.B) {
	ctx := context.Background()
	cl, set := kernelCostCluster(b, "lbk")
	// One agent's programs are enough: each agent's copy runs on every event.
	before, _ := set.Agents[0].Capture().ProgramStats()
	b.ResetTimer()
	for range b.N {
		res := cl.Request(ctx, cl.Client.Netns, cl.Web().LoadBalancerAddr(), 100, 1000)
		if res.Err != nil {
			b.Fatal(res.Err)
		}
	}
	b.StopTimer()
	after, _ := set.Agents[0].Capture().ProgramStats()
	reportProgramStats(b, before, after, "conn")
}

// reportProgramStats reports each program's ns per run and runs per unit
// (one b.N iteration: a connection, a request) between two ProgramStats
// readings, and the total BPF time per unit.
func reportProgramStats(b *testing.B, before, after map[string]ebpf.ProgramStats, unit string) {
	var names []string
	for n := range after {
		names = append(names, n)
	}
	sort.Strings(names)
	var totalNs time.Duration
	for _, n := range names {
		runs := after[n].RunCount - before[n].RunCount
		rt := after[n].Runtime - before[n].Runtime
		totalNs += rt
		if runs > 0 {
			b.ReportMetric(float64(rt.Nanoseconds())/float64(runs), "ns/run-"+n)
			b.ReportMetric(float64(runs)/float64(b.N), "runs/"+unit+"-"+n)
		}
	}
	b.ReportMetric(float64(totalNs.Nanoseconds())/float64(b.N), "bpf-ns/"+unit)
}
