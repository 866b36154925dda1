package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// lastPoint returns the newest value of metric whose attributes include want.
func lastPoint(points []otlpsink.Point, metric string, want map[string]string) (float64, bool) {
	v, ok := 0.0, false
	for _, p := range points {
		if p.Metric != metric {
			continue
		}
		match := true
		for k, val := range want {
			if fmt.Sprint(p.Attrs[k]) != val {
				match = false
			}
		}
		if match {
			v, ok = p.Value, true
		}
	}
	return v, ok
}

// TestCollectorFindsHotPodAndRegression: agents with the real control plane
// export to a real lbpath-collector process; its processors flag the pod
// that Local policy makes hot, do not flag an equally fast rollout, and do
// flag a rollout to a deliberately slower server version.
func TestCollectorFindsHotPodAndRegression(t *testing.T) {
	c := upK8s(t, "lbc", k8s.Options{Mode: testbed.ModeIPTables, Policy: testbed.PolicyLocal})
	ctx := context.Background()
	sink := testbedtest.Sink(t)
	bin := testbedtest.CollectorBinary(t)
	col, err := collectorproc.Start(ctx, bin, collectorproc.Options{
		SinkHTTP:   sink.HTTPAddr,
		Imbalance:  "    window: 20s\n    bucket: 5s\n    min_connections: 10\n",
		Regression: "    before: 1m\n    after: 30s\n    resolution: 2s\n    current_window: 15s\n    min_samples: 40\n    retention: 10m\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(col.Stop)
	startExportingAgents(t, c, col.OTLPGRPC)

	// Phase 1: under Local policy, LB traffic entering the node with the
	// fewest web pods all lands on its pod, while a little ClusterIP
	// traffic reaches every pod.
	pods, err := c.WebPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[string][]string{}
	for _, p := range pods {
		perNode[p.Node] = append(perNode[p.Node], p.Name)
	}
	var hotNode *testbed.Node
	for _, n := range c.TB.Nodes {
		if len(perNode[n.Name]) == 1 && (hotNode == nil) {
			hotNode = n
		}
	}
	if hotNode == nil {
		t.Fatalf("no node with exactly one web pod: %v", perNode)
	}
	hotPod := perNode[hotNode.Name][0]
	if err := c.TB.RouteLB(hotNode.Index); err != nil {
		t.Fatal(err)
	}
	failures := 0
	request := func(from string, target string) {
		t.Helper()
		addr := c.TB.Web().ClusterAddr()
		if target == "lb" {
			addr = c.TB.Web().LoadBalancerAddr()
		}
		// This test is about the collector's verdicts; a lost SYN in the
		// testbed is retried (and reported) rather than failing it.
		for attempt := 0; ; attempt++ {
			res := c.TB.Request(ctx, from, addr, 10, 10)
			if res.Err == nil {
				return
			}
			failures++
			t.Logf("request to %v failed (%v), retrying", addr, res.Err)
			if attempt == 2 {
				t.Fatalf("request to %v failed 3 times: %v", addr, res.Err)
			}
		}
	}
	for i := range 60 {
		request(c.TB.Client.Netns, "lb")
		if i%4 == 0 {
			request(c.TB.ClientPod.Netns, "clusterip")
		}
	}
	waitFor := func(what string, timeout time.Duration, ok func([]otlpsink.Point) bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !ok(sink.Points()) {
			if time.Now().After(deadline) {
				seen := map[string]int{}
				hashes := map[string]uint64{}
				var lastDur otlpsink.Point
				for _, pt := range sink.Points() {
					seen[pt.Metric]++
					if pt.Metric == "lbpath.request.duration" {
						lastDur = pt
						hashes[fmt.Sprint(pt.Attrs["lbpath.pod_template_hash"])] += pt.Count
					}
					if pt.Metric == "lbpath.deploy.rollouts" || pt.Metric == "lbpath.deploy.regression" || pt.Metric == "lbpath.deploy.samples" {
						t.Logf("%s %v = %v", pt.Metric, pt.Attrs, pt.Value)
					}
				}
				t.Logf("metrics seen: %v; last request duration point: %v count %d; cumulative counts by hash %v", seen, lastDur.Attrs, lastDur.Count, hashes)
				t.Fatalf("%s: not seen within %v\ncollector log:\n%s", what, timeout, col.Log())
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	waitFor("hot pod "+hotPod, 30*time.Second, func(p []otlpsink.Point) bool {
		v, ok := lastPoint(p, "lbpath.lb.hot", map[string]string{"k8s.service.name": "web", "k8s.pod.name": hotPod})
		return ok && v == 1
	})
	for _, other := range pods {
		if other.Name == hotPod {
			continue
		}
		if v, ok := lastPoint(sink.Points(), "lbpath.lb.hot", map[string]string{"k8s.service.name": "web", "k8s.pod.name": other.Name}); ok && v != 0 {
			t.Errorf("pod %s flagged hot too", other.Name)
		}
	}

	// Phases 2 and 3: request latency around two rollouts, measured by the
	// agents on the pod side.
	traffic := func(n int) {
		for range n {
			request(c.TB.ClientPod.Netns, "clusterip")
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Baseline revision, for longer than the processor's first resolution
	// (revisions seen then are taken as already running, not rollouts).
	traffic(80)
	time.Sleep(3 * time.Second)
	traffic(20)
	rollout := func(patch string) {
		t.Helper()
		if _, err := c.Client.AppsV1().Deployments(k8s.Namespace).Patch(ctx, k8s.WebDeployment, types.StrategicMergePatchType,
			[]byte(patch), metav1PatchOptions()); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitWebReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	verdict := map[string]string{"k8s.deployment.name": "web"}
	// An equally fast version: a template change that rolls every pod.
	rollout(`{"spec":{"template":{"metadata":{"annotations":{"lbpath.test/revision":"equal"}}}}}`)
	traffic(80)
	waitFor("verdict on the equal rollout", 40*time.Second, func(p []otlpsink.Point) bool {
		n, ok := lastPoint(p, "lbpath.deploy.rollouts", verdict)
		_, has := lastPoint(p, "lbpath.deploy.regression", verdict)
		return ok && n >= 1 && has
	})
	if v, _ := lastPoint(sink.Points(), "lbpath.deploy.regression", verdict); v != 0 {
		pv, _ := lastPoint(sink.Points(), "lbpath.deploy.p_value", verdict)
		t.Errorf("equally fast rollout flagged as a regression (p=%g)", pv)
	}
	// A version that answers 30 ms later.
	if err := c.SetWebDelay(ctx, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitWebReady(ctx); err != nil {
		t.Fatal(err)
	}
	traffic(80)
	waitFor("regression verdict on the slow rollout", 40*time.Second, func(p []otlpsink.Point) bool {
		n, _ := lastPoint(p, "lbpath.deploy.rollouts", verdict)
		v, ok := lastPoint(p, "lbpath.deploy.regression", verdict)
		return n >= 2 && ok && v == 1
	})
	if n, _ := lastPoint(sink.Points(), "lbpath.deploy.regressions", verdict); n != 1 {
		t.Errorf("regressions counter %v, want 1 (only the slow rollout)", n)
	}
	d, _ := lastPoint(sink.Points(), "lbpath.deploy.latency.delta", map[string]string{"k8s.deployment.name": "web", "lbpath.quantile": "p90"})
	t.Logf("hot pod %s flagged; slow rollout p90 ratio %.1f", hotPod, d)
	if d < 2 {
		t.Errorf("p90 after/before ratio %.2f for a +30 ms server, want well above 2", d)
	}
}

func metav1PatchOptions() metav1.PatchOptions { return metav1.PatchOptions{} }
