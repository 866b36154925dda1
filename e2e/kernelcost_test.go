package e2e

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkKernelCostKeptAlive is BenchmarkKernelCostPerEvent for the
// per-request path (issue 14): each b.N is one HTTP request on one
// kept-alive connection through the LB IP (Cluster policy), so only the
// read/write hooks run; the connection's own open and close fall outside
// the measured window.
func BenchmarkKernelCostKeptAlive(b *testing.B) {
	cl, set := kernelCostCluster(b, "lbka")
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
