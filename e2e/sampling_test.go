package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestSpanSamplingAgreesAcrossNodes: two node agents sample spans at
// probability 1/4, each alone, and export over OTLP through the real
// lbpath-collector process. Cross-node connections through the load
// balancer (externalTrafficPolicy Cluster) must be kept on both nodes or
// on neither, and the kept set must be exactly the one the sampling
// function predicts from each connection's trace ID (computed here from
// the agents' own records); every refused connection (a Service without
// endpoints) is kept whatever its trace ID says, with th:0. The agents'
// spans_sampled_out counters equal the predicted drops, and the metrics
// count every connection.
func TestSpanSamplingAgreesAcrossNodes(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	sink := testbedtest.Sink(t)
	col, err := collectorproc.Start(ctx, testbedtest.CollectorBinary(t), collectorproc.Options{SinkHTTP: sink.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(col.Stop)
	cl := upCluster(t, "lbsmp", testbed.ModeIPTables, testbed.PolicyCluster)
	const p = 0.25
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	set, err := nodeagents.Start(cl, nodeagents.Options{
		Flow: flow.Config{JoinWait: 300 * time.Millisecond},
		// A slow threshold no test connection reaches: the probability
		// alone decides for the healthy ones.
		Export: &exporter.Config{Endpoint: col.OTLPGRPC, Insecure: true, MetricInterval: time.Second,
			Sampling: exporter.Sampling{Enabled: true, Probability: p, SlowThreshold: time.Minute}},
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.RouteLB(1); err != nil {
		t.Fatal(err)
	}
	// 120 connections: about a third cross nodes; that none or all of
	// those is kept at 1/4 is then a 1e-4 event.
	var ok, refused []testbed.Result
	for range 120 {
		res := cl.Request(ctx, cl.Client.Netns, cl.Web().LoadBalancerAddr(), 10, 100)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		ok = append(ok, res)
	}
	for range 12 {
		res := cl.Request(ctx, cl.ClientPod.Netns, cl.Empty().ClusterAddr(), 0, 0)
		if res.Err == nil {
			t.Fatalf("request to a Service without endpoints succeeded: %+v", res)
		}
		refused = append(refused, res)
	}
	time.Sleep(800 * time.Millisecond) // JoinWait for forward records
	recs := set.Records()
	sampledOut := map[string]uint64{}
	for _, a := range set.Agents {
		if a.Exporter() == nil {
			t.Fatal("agent without exporter")
		}
	}
	if err := set.Stop(); err != nil { // flushes every agent's exporter
		t.Fatal(err)
	}
	for i, a := range set.Agents {
		sampledOut[cl.Nodes[i].Name] = a.Exporter().Stats.SampledOut.Load()
	}

	th := exporter.ThresholdFor(p)
	type key struct{ trace, node, role string }
	want := map[key]string{} // expected root spans → their tracestate
	predictedOut := map[string]uint64{}
	cross, crossKept, refusedDropByP := 0, 0, 0
	byPodSrc := map[[2]string][]flow.Connection{}
	for _, r := range recs {
		byPodSrc[[2]string{r.PodSrc.String(), r.PodDst.String()}] = append(byPodSrc[[2]string{r.PodSrc.String(), r.PodDst.String()}], r)
	}
	// Healthy connections: the entry node's record (its client is the
	// request's own socket) and, when cross-node, the pod node's record of
	// the same post-NAT tuple.
	for _, res := range ok {
		var entry *flow.Connection
		for i := range recs {
			if recs[i].Client == res.Local {
				entry = &recs[i]
			}
		}
		if entry == nil {
			t.Errorf("%v: no record on the entry node", res.Local)
			continue
		}
		views := byPodSrc[[2]string{entry.PodSrc.String(), entry.PodDst.String()}]
		tid := exporter.ConnectionTraceID(entry)
		keep := th.Keep(tid)
		if len(views) == 2 {
			cross++
			if keep {
				crossKept++
			}
		}
		for _, v := range views {
			if got := exporter.ConnectionTraceID(&v); got != tid {
				t.Errorf("%v: %s derives trace %s, the entry node %s", res.Local, v.Node, got, tid)
			}
			if v.Outcome != flow.OutcomeOK && v.Outcome != flow.OutcomeForwarded {
				t.Errorf("%v on %s: outcome %s for a request that succeeded", res.Local, v.Node, v.Outcome)
			}
			if keep {
				want[key{tid.String(), v.Node, string(v.Role)}] = "ot=th:" + th.TH()
			} else {
				predictedOut[v.Node]++
			}
		}
	}
	if cross == 0 || crossKept == 0 || crossKept == cross {
		t.Fatalf("%d cross-node connections, %d predicted kept: the test needs both outcomes", cross, crossKept)
	}
	// Refused connections: every record of them is kept, with th:0. The
	// failed dial leaves no local address to match on; the refused
	// records are these requests' (the test bed has no other traffic).
	nRefused := 0
	for i := range recs {
		r := &recs[i]
		if r.Outcome != flow.OutcomeRefused {
			continue
		}
		nRefused++
		tid := exporter.ConnectionTraceID(r)
		if !th.Keep(tid) {
			refusedDropByP++
		}
		want[key{tid.String(), r.Node, string(r.Role)}] = "ot=th:0"
	}
	if nRefused < len(refused) {
		t.Errorf("%d refused records for %d refused requests", nRefused, len(refused))
	}
	if refusedDropByP == 0 {
		t.Fatal("every refused connection's trace ID passes the threshold anyway: the keep-always rule is not exercised")
	}

	var spans []otlpsink.Span
	got := map[key]string{}
	for deadline := time.Now().Add(15 * time.Second); ; {
		spans = sink.Spans()
		got = map[key]string{}
		for _, s := range spans {
			if s.ParentID != "" {
				continue
			}
			node, _ := s.Resource["k8s.node.name"].(string)
			role, _ := s.Attrs["lbpath.role"].(string)
			got[key{s.TraceID, node, role}] = s.TraceState
			if s.Flags&0x3 != 0x3 {
				t.Errorf("span %s on %s: flags %#x, want sampled and random", s.TraceID, node, s.Flags)
			}
		}
		if len(got) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for k, ts := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("predicted kept, not received: trace %s on %s (%s)", k.trace, k.node, k.role)
		} else if g != ts {
			t.Errorf("trace %s on %s (%s): tracestate %q, want %q", k.trace, k.node, k.role, g, ts)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("received, predicted sampled out: trace %s on %s (%s)", k.trace, k.node, k.role)
		}
	}
	for node, n := range predictedOut {
		if sampledOut[node] != n {
			t.Errorf("%s: spans_sampled_out %d, want %d", node, sampledOut[node], n)
		}
	}
	// Metrics count every connection, sampled out or not: per node, the
	// last cumulative lbpath.connections of each series sums to the
	// node's records.
	recsPerNode := map[string]float64{}
	for _, r := range recs {
		recsPerNode[r.Node]++
	}
	conns := map[string]float64{}
	for deadline := time.Now().Add(10 * time.Second); ; {
		last := map[string]otlpsink.Point{}
		for _, pt := range sink.Points() {
			if pt.Metric == exporter.MetricConnections {
				last[fmt.Sprint(pt.Resource["k8s.node.name"], pt.Attrs)] = pt
			}
		}
		conns = map[string]float64{}
		for _, pt := range last {
			if pt.Delta {
				t.Fatalf("delta temporality: the sum below assumes cumulative points")
			}
			conns[pt.Resource["k8s.node.name"].(string)] += pt.Value
		}
		if fmt.Sprint(conns) == fmt.Sprint(recsPerNode) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for node, n := range recsPerNode {
		if conns[node] != n {
			t.Errorf("%s: %s counts %v connections, the node recorded %v", node, exporter.MetricConnections, conns[node], n)
		}
	}
	t.Logf("%d healthy connections (%d cross-node, %d of them kept on both nodes), %d refused (%d kept only by the rule); %d root spans; sampled out %v",
		len(ok), cross, crossKept, len(refused), refusedDropByP, len(got), sampledOut)
	if t.Failed() {
		t.Logf("collector log:\n%s", col.Log())
	}
}
