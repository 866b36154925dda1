package e2e

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

// BenchmarkKernelCostKeptAlive is BenchmarkKernelCostPerEvent for the
// per-request path (issue 14): each b.N is one HTTP request on one
// kept-alive connection through the LB IP (Cluster policy), so only the
// read/write hooks run; the connection's own open and close fall outside
// the measured window.
func BenchmarkKernelCostKeptAlive(b *testing.B) {
	needCluster(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf stats: %v", err)
	}
	defer stats.Close()
	ctx := context.Background()
	cl, err := testbed.Up(ctx, testbed.Options{Prefix: "lbka", Mode: testbed.ModeNFTables, Policy: testbed.PolicyCluster})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Down()
	set, err := nodeagents.Start(cl, nodeagents.Options{Flow: flow.Config{JoinWait: 200 * time.Millisecond}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	defer set.Stop()
	cl.RouteLB(1)
	hc := cl.HTTPClient(cl.Client.Netns, true)
	url := "http://" + cl.Web().LoadBalancerAddr().String() + "/"
	get := func() {
		resp, err := hc.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: status %d, %v", url, resp.StatusCode, err)
		}
	}
	get() // opens the connection outside the window
	before, _ := set.Agents[0].Capture().ProgramStats()
	b.ResetTimer()
	for range b.N {
		get()
	}
	b.StopTimer()
	after, _ := set.Agents[0].Capture().ProgramStats()
	reportProgramStats(b, before, after, "req")
}
