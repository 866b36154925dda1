package e2e

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
)

// dnsQueriesPerClient is how many queries each client pod sends: with two
// CoreDNS pods picked at random by kube-proxy, 20 make it all but certain
// (1 − 2·2⁻²⁰) that a client's queries reach both, one on its own node and
// one across.
const dnsQueriesPerClient = 20

// dnsClient is a pod that sends the test's DNS queries.
type dnsClient struct{ pod, node, netns string }

// clusterDNS: a web pod on each real node sends DNS queries to kube-dns's
// ClusterIP, each from a fresh socket, and the real kube-proxy DNATs each
// to one of the CoreDNS pods, which answers `CH TXT hostname.bind` with its
// own pod name (ground truth of who answered, as web's pods answer with
// theirs). From the agent pods' telemetry, through the chart's collector:
// every flow has a server span naming the CoreDNS pod that answered, its
// node, Service kube-system/kube-dns, network.transport udp, the exact
// datagrams, payload bytes and exchanges each way and a request→response
// latency within what the client measured, in a trace whose entry is the
// ClusterIP on the client's node; the per-pod UDP connection, request and
// request-latency counts in Prometheus equal what the clients were
// answered by; and every UDP loss counter of every agent is 0.
//
// The counts are deltas of the whole Service's UDP series, so they hold
// only if nothing else queries the cluster DNS meanwhile, and nothing does:
// CoreDNS has no upstream, every other component dials IPs, and the agents
// dial their collector by its Service's ClusterIP (the chart's
// --otlp-endpoint from the Service link variable) without gRPC's DNS
// service config. Before that, the agents re-resolved the collector's name
// (with the search path's misses and a _grpc_config TXT lookup) during the
// window, and the counts were off by those flows. A flow that is not the
// test's is listed from the spans when the counts disagree.
func (r *realNode) clusterDNS(t *testing.T) {
	ctx := context.Background()
	dnsNode := r.dnsPods(ctx, t)
	clients := r.dnsClients(ctx, t)
	before := r.dnsCounts(ctx, t)

	var exps []udpExp
	for _, cl := range clients {
		for i := range dnsQueriesPerClient {
			res := k8s.ChaosHostname(ctx, cl.netns)
			if res.Err != nil {
				t.Fatalf("query %d from pod %s to kube-dns: %v", i, cl.pod, res.Err)
			}
			if _, ok := dnsNode[res.Pod]; !ok {
				t.Fatalf("query from %s answered by %q, not a CoreDNS pod (%v)", cl.pod, res.Pod, dnsNode)
			}
			var err error
			if exps, err = mergeExchange(exps, udpExp{expectation{res: res, entryNode: cl.node, svc: "kube-system/kube-dns"}, 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := dnsGroundTruth(t, exps, dnsNode)

	r.checkDNSSpans(ctx, t, exps, dnsNode)
	err := poll(ctx, 60*time.Second, func() error {
		got := dnsDelta(before, r.dnsCounts(ctx, t))
		if !maps.Equal(got, want) {
			return fmt.Errorf("kube-dns UDP counts by pod %v, want %v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("metrics: %v\nflows of kube-dns in the spans that are not the test's:\n%s", err, otherDNSFlows(r.sink.Spans(), exps))
	}
	// Since the install: the agents' own lookups would show here.
	t.Logf("kube-dns UDP server spans whose client is not the test's: %d\n%s",
		strings.Count(otherDNSFlows(r.sink.Spans(), exps), "\n"), otherDNSFlows(r.sink.Spans(), exps))
	r.checkNoUDPLoss(ctx, t)
}

// dnsPods names the running CoreDNS pods and their nodes: one per node.
func (r *realNode) dnsPods(ctx context.Context, t *testing.T) map[string]string {
	t.Helper()
	pods, err := r.c.Client.CoreV1().Pods(k8s.DNSNamespace).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=" + k8s.DNSService})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == "Running" {
			out[p.Name] = p.Spec.NodeName
		}
	}
	nodes := map[string]bool{}
	for _, n := range out {
		nodes[n] = true
	}
	if len(out) != len(r.c.TB.Nodes) || len(nodes) != len(r.c.TB.Nodes) {
		t.Fatalf("CoreDNS pods %v, want one on each of %d nodes", out, len(r.c.TB.Nodes))
	}
	return out
}

// dnsClients picks one web pod on each node: a pod's network namespace on
// a real node, its own pod IP as the source.
func (r *realNode) dnsClients(ctx context.Context, t *testing.T) []dnsClient {
	t.Helper()
	pods, err := r.c.WebPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []dnsClient
	seen := map[string]bool{}
	for _, p := range pods {
		if seen[p.Node] {
			continue
		}
		seen[p.Node] = true
		ns, err := r.c.PodNetns(ctx, k8s.Namespace, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, dnsClient{pod: p.Name, node: p.Node, netns: ns})
	}
	if len(out) != len(r.c.TB.Nodes) {
		t.Fatalf("web pods on %d of %d nodes: %+v", len(out), len(r.c.TB.Nodes), pods)
	}
	return out
}

// dnsGroundTruth is what the Service's UDP counters must have grown by,
// per pod and measurement: flows (one per client tuple) and exchanges
// (queries). It also requires that the queries reached CoreDNS pods both
// on and off their client's node.
func dnsGroundTruth(t *testing.T, exps []udpExp, dnsNode map[string]string) map[string]float64 {
	t.Helper()
	want := map[string]float64{}
	var same, cross, reused int
	for _, e := range exps {
		want["connections "+e.res.Pod]++
		want["requests "+e.res.Pod] += float64(e.n)
		want["latencies "+e.res.Pod] += float64(e.n)
		if dnsNode[e.res.Pod] == e.entryNode {
			same++
		} else {
			cross++
		}
		reused += e.n - 1
	}
	t.Logf("%d flows (%d queries reused a closed socket's tuple; %d to a CoreDNS pod on the client's node, %d across): %v",
		len(exps), reused, same, cross, want)
	if same == 0 || cross == 0 {
		t.Fatalf("queries reached CoreDNS on the client's node %d times and across %d times: both paths must be covered (pods %v)", same, cross, dnsNode)
	}
	return want
}

// dnsCounts reads kube-dns's UDP series by pod from Prometheus: server
// flows (lbpath_connections_total), answered exchanges
// (lbpath_requests_total) and latency samples (the native histogram's
// count), keyed "<measure> <pod>".
func (r *realNode) dnsCounts(ctx context.Context, t *testing.T) map[string]float64 {
	t.Helper()
	sel := `k8s_namespace_name="kube-system", k8s_service_name="kube-dns", network_transport="udp"`
	out := map[string]float64{}
	for measure, q := range map[string]string{
		"connections": `sum by (k8s_pod_name) (lbpath_connections_total{` + sel + `, lbpath_role="server"})`,
		"requests":    `sum by (k8s_pod_name) (lbpath_requests_total{` + sel + `})`,
		"latencies":   `sum by (k8s_pod_name) (histogram_count(lbpath_request_duration_seconds{` + sel + `}))`,
	} {
		v, err := r.prom.Query(ctx, q, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range v {
			out[measure+" "+string(s.Metric["k8s_pod_name"])] = float64(s.Value)
		}
	}
	return out
}

// dnsDelta is after − before, without the zeros.
func dnsDelta(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// checkDNSSpans waits for every flow's spans, then compares them with what
// the client sent and was answered. A flow's spans come from two agents
// when the CoreDNS pod is on the other node (the server span from the
// pod's, the ClusterIP entry from the client's), each exporting on its own
// schedule: the wait is for both, and only the comparison decides.
func (r *realNode) checkDNSSpans(ctx context.Context, t *testing.T, exps []udpExp, dnsNode map[string]string) {
	t.Helper()
	var missing []udpExp
	// When each flow's server span and its entry span were first seen: the
	// log shows how far apart the two agents' exports arrive.
	srvAt, entryAt := map[int]time.Duration{}, map[int]time.Duration{}
	start := time.Now()
	err := poll(ctx, 60*time.Second, func() error {
		missing = missing[:0]
		traces := spansByTrace(r.sink.Spans())
		round := time.Since(start) // one time per round: a lag is whole rounds
		for i, e := range exps {
			tr, s := udpServerSpan(traces, e.res)
			if _, seen := srvAt[i]; s != nil && !seen {
				srvAt[i] = round
			}
			if _, seen := entryAt[i]; s != nil && hasDNSEntry(tr, e) && !seen {
				entryAt[i] = round
			}
			if s == nil || !hasDNSEntry(tr, e) {
				missing = append(missing, e)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d flows lack their server or ClusterIP entry span (%d server spans)", len(missing), len(exps), len(srvAt))
		}
		return nil
	})
	logSpanArrival(t, exps, dnsNode, srvAt, entryAt, err)
	traces := spansByTrace(r.sink.Spans())
	for _, e := range exps {
		tr, srv := udpServerSpan(traces, e.res)
		if srv == nil {
			t.Errorf("query %v→%v answered by %s: no server span", e.res.Local, e.res.Remote, e.res.Pod)
			continue
		}
		checkDNSSpan(t, e, dnsNode[e.res.Pod], tr, srv)
	}
	if t.Failed() {
		t.Logf("every span of the test's client sockets, any trace:\n%s\n%s", clientSpans(r.sink.Spans(), exps), r.podReport(ctx))
		t.FailNow()
	}
}

// logSpanArrival logs, per kind of flow, how much later than its server
// span a flow's ClusterIP entry span was first seen.
func logSpanArrival(t *testing.T, exps []udpExp, dnsNode map[string]string, srvAt, entryAt map[int]time.Duration, err error) {
	t.Helper()
	later := map[string]int{}
	var maxLag time.Duration
	for i, e := range exps {
		kind := "same-node"
		if dnsNode[e.res.Pod] != e.entryNode {
			kind = "cross-node"
		}
		if lag := entryAt[i] - srvAt[i]; lag > 0 {
			later[kind+" from "+e.entryNode]++
			maxLag = max(maxLag, lag)
		}
	}
	t.Logf("spans of %d flows (err %v): entry span first seen after the server span for %v, by up to %v", len(exps), err, later, maxLag)
}

// clientSpans lists, for a failure message, every span whose client is
// one of the test's sockets, with its trace ID: a span in another trace
// than the server's shows up here.
func clientSpans(spans []otlpsink.Span, exps []udpExp) string {
	ours := testSockets(exps)
	var b strings.Builder
	for _, s := range spans {
		a := s.Attrs
		if c := fmt.Sprintf("%v:%v", a["client.address"], a["client.port"]); ours[c] || (a["network.transport"] == "udp" && a["lbpath.role"] != "server") {
			fmt.Fprintf(&b, "  trace %s %s: %v\n", s.TraceID, c, a)
		}
	}
	return b.String()
}

// udpServerSpan finds the UDP server span of the flow from res's client
// socket, and its trace.
func udpServerSpan(traces map[string][]otlpsink.Span, res testbed.Result) ([]otlpsink.Span, *otlpsink.Span) {
	for _, tr := range traces {
		for i := range tr {
			a := tr[i].Attrs
			if a["lbpath.role"] == "server" && a["network.transport"] == "udp" &&
				a["client.address"] == res.Local.Addr().String() && a["client.port"] == int64(res.Local.Port()) {
				return tr, &tr[i]
			}
		}
	}
	return nil, nil
}

// checkDNSSpan compares one flow's server span with the ground truth, and
// looks in its trace for the ClusterIP entry on the client's node.
func checkDNSSpan(t *testing.T, e udpExp, podNode string, tr []otlpsink.Span, srv *otlpsink.Span) {
	t.Helper()
	res, a := e.res, srv.Attrs
	id := fmt.Sprintf("query %v→%v answered by %s", res.Local, res.Remote, res.Pod)
	n := int64(e.n)
	want := map[string]any{
		"k8s.pod.name": res.Pod, "k8s.node.name": podNode, "k8s.service.name": k8s.DNSService,
		"k8s.namespace.name": k8s.DNSNamespace, "network.transport": "udp", "lbpath.outcome": "ok",
		"lbpath.bytes_to_server": res.Sent, "lbpath.bytes_to_client": res.Received,
		"lbpath.datagrams_to_server": n, "lbpath.datagrams_to_client": n, "lbpath.exchanges": n,
	}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("%s: server span %s = %v, want %v (span %v)", id, k, a[k], v, a)
		}
	}
	// The pod's request→response time lies inside the client's send→receive.
	lat, _ := a["lbpath.latency_max_us"].(int64)
	if rtt := res.End.Sub(res.Start).Microseconds(); lat <= 0 || lat > rtt {
		t.Errorf("%s: lbpath.latency_max_us %v, the client measured %d µs", id, a["lbpath.latency_max_us"], rtt)
	}
	if !hasDNSEntry(tr, e) {
		t.Errorf("%s: no span of its trace says it entered through kube-dns's ClusterIP on %s (trace %v)", id, e.entryNode, spanAttrs(tr))
	}
}

// hasDNSEntry: a span of the flow's trace says it entered through
// kube-dns's ClusterIP on the client's node, to the pod that answered.
func hasDNSEntry(tr []otlpsink.Span, e udpExp) bool {
	for _, s := range tr {
		a := s.Attrs
		if a["lbpath.entry"] == "clusterip" && a["server.address"] == k8s.DNSServiceIP.String() &&
			a["server.port"] == int64(53) && a["lbpath.entry_node"] == e.entryNode && a["k8s.pod.name"] == e.res.Pod {
			return true
		}
	}
	return false
}

func spanAttrs(tr []otlpsink.Span) []map[string]any {
	var out []map[string]any
	for _, s := range tr {
		out = append(out, s.Attrs)
	}
	return out
}

// testSockets are the test's client sockets, "address:port".
func testSockets(exps []udpExp) map[string]bool {
	ours := map[string]bool{}
	for _, e := range exps {
		ours[e.res.Local.String()] = true
	}
	return ours
}

// otherDNSFlows lists kube-dns's UDP server spans whose client is none of
// the test's sockets, for a failure message.
func otherDNSFlows(spans []otlpsink.Span, exps []udpExp) string {
	ours := testSockets(exps)
	var b strings.Builder
	for _, s := range spans {
		a := s.Attrs
		if a["k8s.service.name"] != k8s.DNSService || a["network.transport"] != "udp" || a["lbpath.role"] != "server" {
			continue
		}
		if c := fmt.Sprintf("%v:%v", a["client.address"], a["client.port"]); !ours[c] {
			fmt.Fprintf(&b, "  %s → %v: %v\n", c, a["k8s.pod.name"], a)
		}
	}
	return b.String()
}

// checkNoUDPLoss: every agent reports each UDP loss counter, and all are 0.
func (r *realNode) checkNoUDPLoss(ctx context.Context, t *testing.T) {
	t.Helper()
	v, err := r.prom.Query(ctx, `lbpath_agent_dropped_total{lbpath_reason=~"udp_.+"}`, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]int{}
	for _, s := range v {
		nodes[string(s.Metric["k8s_node_name"])]++
		if s.Value != 0 {
			t.Errorf("UDP loss: %v = %v", s.Metric, s.Value)
		}
	}
	// kernel/udp_flow_table_full, ringbuf/udp_flow, ringbuf/udp_exchange,
	// capture/udp_decode_error, flow/udp_nat_table_full,
	// flow/udp_nat_expired, flow/udp_open_table_full,
	// flow/udp_dialed_table_full (socket-LB UDP).
	const udpLossCounters = 8
	for _, n := range r.c.TB.Nodes {
		if nodes[n.Name] != udpLossCounters {
			t.Errorf("agent on %s reports %d UDP loss counters, want %d: %v", n.Name, nodes[n.Name], udpLossCounters, v)
		}
	}
}
