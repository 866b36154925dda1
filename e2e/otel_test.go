package e2e

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/jaeger"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// otelPipeline starts a real Jaeger, an OTLP sink and the real
// lbpath-collector process forwarding to both.
func otelPipeline(t *testing.T) (*collectorproc.Collector, *otlpsink.Sink, *jaeger.Jaeger) {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	jbin, err := jaeger.EnsureBinary(ctx, log)
	if err != nil {
		t.Fatal(err)
	}
	j, err := jaeger.Start(ctx, jbin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Stop)
	sink := testbedtest.Sink(t)
	bin := testbedtest.CollectorBinary(t)
	col, err := collectorproc.Start(ctx, bin, collectorproc.Options{SinkHTTP: sink.HTTPAddr, JaegerGRPC: j.OTLPGRPC})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(col.Stop)
	return col, sink, j
}

// TestTracesStitchAcrossNodes: two node agents export over OTLP to a real
// lbpath-collector process; for every cross-node connection the entry
// node's span and the pod node's span carry the same trace ID — in what the
// collector forwarded and in Jaeger's query API.
func TestTracesStitchAcrossNodes(t *testing.T) {
	needCluster(t)
	col, sink, j := otelPipeline(t)
	cl := upCluster(t, "lbo", testbed.ModeIPTables, testbed.PolicyCluster)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	set, err := nodeagents.Start(cl, nodeagents.Options{
		Flow:   flow.Config{JoinWait: 300 * time.Millisecond},
		Export: &exporter.Config{Endpoint: col.OTLPGRPC, Insecure: true, MetricInterval: time.Second},
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := cl.RouteLB(1); err != nil {
		t.Fatal(err)
	}
	type conn struct {
		res       testbed.Result
		crossNode bool
	}
	var conns []conn
	for range 20 {
		res := cl.Request(ctx, cl.Client.Netns, cl.Web().LoadBalancerAddr(), 10, 100)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		conns = append(conns, conn{res, cl.Pod(res.Pod).Node != cl.Nodes[0]})
	}
	time.Sleep(800 * time.Millisecond) // JoinWait for forward records
	if err := set.Stop(); err != nil { // flushes every agent's exporter
		t.Fatal(err)
	}

	// Spans by the trace they belong to, per reporting node.
	var spans []otlpsink.Span
	deadline := time.Now().Add(10 * time.Second)
	crossWant := 0
	for _, c := range conns {
		if c.crossNode {
			crossWant++
		}
	}
	if crossWant == 0 {
		t.Fatalf("no cross-node connection among %d (pods %v)", len(conns), conns)
	}
	for {
		spans = sink.Spans()
		stitched := stitchedTraces(spans)
		if len(stitched) >= crossWant || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	stitched := stitchedTraces(spans)
	for _, c := range conns {
		if !c.crossNode {
			continue
		}
		// Find the entry node's root span for this client tuple.
		var tid string
		for _, s := range spans {
			if s.Kind == "Client" && s.Attrs["client.port"] == int64(c.res.Local.Port()) && s.Attrs["lbpath.role"] == "forward" {
				tid = s.TraceID
			}
		}
		if tid == "" {
			t.Errorf("%v: no entry-node span received by the collector", c.res.Local)
			continue
		}
		nodes := stitched[tid]
		if !nodes["node1"] || !nodes["node2"] {
			t.Errorf("%v: trace %s has spans from %v, want node1 (entry) and node2 (pod)", c.res.Local, tid, nodes)
			continue
		}
		// The same trace, read back from Jaeger.
		var tr *jaeger.Trace
		for end := time.Now().Add(10 * time.Second); ; {
			tr, err = j.Trace(tid)
			if err == nil && len(traceNodes(tr)) == 2 {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("jaeger trace %s: %v %v", tid, err, tr)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if n := traceNodes(tr); !n["node1"] || !n["node2"] {
			t.Errorf("jaeger trace %s nodes %v", tid, n)
		}
	}
	if t.Failed() {
		t.Logf("collector log:\n%s", col.Log())
		for i, s := range spans {
			if i < 6 {
				t.Logf("span: %s %s %v %v", s.Name, s.Kind, s.Resource, s.Attrs)
			}
		}
		t.Logf("%d spans received", len(spans))
	}
}

// stitchedTraces maps trace ID → the nodes (resource k8s.node.name) whose
// root spans it holds.
func stitchedTraces(spans []otlpsink.Span) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, s := range spans {
		if s.Name[:min(len(s.Name), 17)] != "lbpath.connection" {
			continue
		}
		node, _ := s.Resource["k8s.node.name"].(string)
		if out[s.TraceID] == nil {
			out[s.TraceID] = map[string]bool{}
		}
		out[s.TraceID][node] = true
	}
	for id, nodes := range out {
		if len(nodes) < 2 {
			delete(out, id)
		}
	}
	return out
}

func traceNodes(tr *jaeger.Trace) map[string]bool {
	out := map[string]bool{}
	for _, s := range tr.Spans {
		if n := tr.NodeOf(s); n != "" {
			out[n] = true
		}
	}
	return out
}
