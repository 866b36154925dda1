package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpath/lbpath/deploy/manifests"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
)

// idleNoAlert: with the chart installed and only the cluster's own traffic
// (kubelet ↔ API server, probes, CoreDNS, the agents' exports), every
// shipped alert rule evaluates to nothing — not even pending — in the real
// Prometheus scraping the chart's collector, while the agents demonstrably
// report their node's own connections by class.
func (r *realNode) idleNoAlert(t *testing.T) {
	ctx := context.Background()
	before := r.agentUsage(t)
	start := time.Now()
	// Evidence that the agents really see the node's own traffic and
	// report it through the collector; without it "no alert" proves little.
	err := poll(ctx, 90*time.Second, func() error {
		v, err := r.prom.Query(ctx, `count by (k8s_node_name) (lbpath_agent_node_connections_total > 0)`, time.Now())
		if err != nil {
			return err
		}
		if len(v) != len(r.c.TB.Nodes) {
			return fmt.Errorf("nodes reporting their own connections: %v", v)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("agents' node-traffic counters never reached Prometheus: %v\n%s", err, r.podReport(ctx))
	}
	// Rules are evaluated every second; a minute of idle covers several
	// metric pushes (10 s) and scrapes (2 s).
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		v, err := r.prom.Query(ctx, `ALERTS`, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(v) > 0 {
			t.Fatalf("alerts on an idle, healthy node: %v\n%s", v, r.podReport(ctx))
		}
		time.Sleep(2 * time.Second)
	}
	classes, err := r.prom.Query(ctx, `sum by (k8s_node_name, lbpath_connection_class) (lbpath_agent_node_connections_total)`, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node's own connections by class after %v idle: %v", time.Since(start).Round(time.Second), classes)
	logUsage(t, "idle", before, r.agentUsage(t), time.Since(start))
}

// lbTraffic sends requests from the external client through web's
// LoadBalancer IP under policy and compares every connection's spans and
// the per-pod connection counts with what the pods answered.
func (r *realNode) lbTraffic(t *testing.T, policy testbed.Policy) {
	ctx := context.Background()
	c, tb := r.c, r.c.TB
	if err := c.SetPolicy(ctx, policy); err != nil {
		t.Fatal(err)
	}
	pods, err := c.WebPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	podNode := map[string]string{}
	for _, p := range pods {
		podNode[p.Name] = p.Node
	}
	// The LB sends to node1 under Cluster; under Local its health checks
	// would pick a node with a web pod.
	lbNode := tb.Node(1)
	if policy == testbed.PolicyLocal && !slices.Contains(slices.Collect(maps.Values(podNode)), lbNode.Name) {
		lbNode = tb.Node(2)
	}
	if err := tb.RouteLB(lbNode.Index); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // kube-proxy resyncs after the Service change
	countsBefore := r.lbConnectionsByPod(ctx)
	const n = 60
	var sent []testbed.Result
	for range n {
		res := tb.Request(ctx, tb.Client.Netns, tb.Web().LoadBalancerAddr(), 64, 512)
		if res.Err != nil {
			t.Fatalf("request through the LB: %v", res.Err)
		}
		sent = append(sent, res)
	}
	want := map[string]float64{}
	for _, res := range sent {
		want[res.Pod]++
		if policy == testbed.PolicyLocal && podNode[res.Pod] != lbNode.Name {
			t.Fatalf("Local policy: pod %s on %s answered a connection that entered %s", res.Pod, podNode[res.Pod], lbNode.Name)
		}
	}
	t.Logf("%s: %d requests entered %s, answered by %v", policy, n, lbNode.Name, want)

	// Spans: every connection's server span names what the pod really was.
	var missing []testbed.Result
	err = poll(ctx, 60*time.Second, func() error {
		missing = missing[:0]
		traces := spansByTrace(r.sink.Spans())
		for _, res := range sent {
			tr, srv := serverSpanFor(traces, res.SeenRemote)
			if srv == nil {
				missing = append(missing, res)
				continue
			}
			checkLBSpans(t, policy, res, podNode[res.Pod], lbNode.Name, tr, srv)
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d connections have no server span yet", len(missing), n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("spans: %v (first missing: %+v)", err, missing[0])
	}
	if t.Failed() {
		t.FailNow()
	}

	// Metrics: the entry node's records carry entry=loadbalancer, once per
	// connection; the counts per pod through the collector and Prometheus
	// must equal what the client was answered by.
	var got map[string]float64
	err = poll(ctx, 60*time.Second, func() error {
		after := r.lbConnectionsByPod(ctx)
		got = map[string]float64{}
		for pod, v := range after {
			if d := v - countsBefore[pod]; d != 0 {
				got[pod] = d
			}
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("connections by pod %v, want %v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	r.checkNativeLatency(ctx, t)
}

// checkNativeLatency: the agents' default exponential latency histograms
// reach Prometheus through the chart's collector as native histograms
// (scraped over protobuf), not as a classic histogram with only +Inf.
func (r *realNode) checkNativeLatency(ctx context.Context, t *testing.T) {
	t.Helper()
	v, err := r.prom.Query(ctx, `lbpath_connection_duration_seconds{k8s_service_name="web"}`, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	native := 0
	for _, s := range v {
		if s.Histogram != nil && s.Histogram.Count > 0 && len(s.Histogram.Buckets) > 1 {
			native++
		}
	}
	if native == 0 {
		t.Errorf("no native histogram with buckets for web's connection duration: %v", v)
	}
	classic, err := r.prom.Query(ctx, `lbpath_connection_duration_seconds_bucket{k8s_service_name="web"}`, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(classic) > 0 {
		t.Errorf("connection duration also arrived as %d classic bucket series (text scrape?)", len(classic))
	}
}

// costUnderLoad measures (reports, asserts nothing) each agent's RSS and
// CPU while the external client opens one connection per request through
// the LB for 10 s, for the issue note and the chart's requests and limits.
func (r *realNode) costUnderLoad(t *testing.T) {
	ctx := context.Background()
	tb := r.c.TB
	before := r.agentUsage(t)
	start := time.Now()
	n := 0
	for time.Since(start) < 10*time.Second {
		if res := tb.Request(ctx, tb.Client.Netns, tb.Web().LoadBalancerAddr(), 64, 512); res.Err != nil {
			t.Fatal(res.Err)
		}
		n++
	}
	d := time.Since(start)
	t.Logf("%d connections in %v (%.0f/s) through the LB", n, d.Round(time.Millisecond), float64(n)/d.Seconds())
	logUsage(t, "under load", before, r.agentUsage(t), d)
}

// lbConnectionsByPod is lbpath_connections_total of Service web's
// LoadBalancer entries, by pod, as Prometheus has it now.
func (r *realNode) lbConnectionsByPod(ctx context.Context) map[string]float64 {
	r.t.Helper()
	v, err := r.prom.Query(ctx, `sum by (k8s_pod_name) (lbpath_connections_total{k8s_service_name="web", lbpath_entry="loadbalancer"})`, time.Now())
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]float64{}
	for _, s := range v {
		out[string(s.Metric["k8s_pod_name"])] = float64(s.Value)
	}
	return out
}

func spansByTrace(spans []otlpsink.Span) map[string][]otlpsink.Span {
	out := map[string][]otlpsink.Span{}
	for _, s := range spans {
		out[s.TraceID] = append(out[s.TraceID], s)
	}
	return out
}

// serverSpanFor finds the span of the pod's accepting socket whose peer is
// seen (what the pod reported it saw), and its trace.
func serverSpanFor(traces map[string][]otlpsink.Span, seen netip.AddrPort) ([]otlpsink.Span, *otlpsink.Span) {
	for _, tr := range traces {
		for i := range tr {
			a := tr[i].Attrs
			if a["lbpath.role"] != "server" {
				continue
			}
			peer := fmt.Sprintf("%v:%v", a["network.peer.address"], a["network.peer.port"])
			if peer == seen.String() {
				return tr, &tr[i]
			}
		}
	}
	return nil, nil
}

// checkLBSpans compares one connection's spans with the ground truth: the
// pod that answered and its node, the Service, the node the LB sent it to,
// whether the client's address survived, and — somewhere in the trace —
// the LoadBalancer entry with the real client.
func checkLBSpans(t *testing.T, policy testbed.Policy, res testbed.Result, podNode, lbNode string, tr []otlpsink.Span, srv *otlpsink.Span) {
	t.Helper()
	a := srv.Attrs
	cross := podNode != lbNode
	want := map[string]any{
		"k8s.pod.name": res.Pod, "k8s.node.name": podNode, "k8s.service.name": testbed.ServiceWeb,
		"k8s.namespace.name": k8s.Namespace, "lbpath.entry_node": lbNode,
		"lbpath.snat": policy == testbed.PolicyCluster, "lbpath.cross_node": cross,
	}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("connection %v answered by %s: server span %s = %v, want %v (span %+v)", res.Local, res.Pod, k, a[k], v, a)
		}
	}
	client := res.Local.Addr().String()
	var entry, clientSeen bool
	for _, s := range tr {
		entry = entry || (s.Attrs["lbpath.entry"] == "loadbalancer" &&
			s.Attrs["server.address"] == res.Remote.Addr().String())
		clientSeen = clientSeen || (s.Attrs["client.address"] == client && s.Attrs["client.port"] == int64(res.Local.Port()))
	}
	if !entry {
		t.Errorf("connection %v: no span of its trace says it entered through the LB IP %v", res.Local, res.Remote)
	}
	if !clientSeen {
		t.Errorf("connection %v: no span of its trace names the real client %v", res.Local, res.Local)
	}
}

// agentUsage reads every agent pod's memory and CPU time from its cgroups
// (what the chart's requests and limits apply to), by pod name.
func (r *realNode) agentUsage(t *testing.T) map[string]k8s.PodStats {
	t.Helper()
	ctx := context.Background()
	pods, err := r.c.Client.CoreV1().Pods(rnNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]k8s.PodStats{}
	for _, p := range pods.Items {
		st, err := r.c.PodStats(ctx, rnNamespace, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[p.Name+" on "+p.Spec.NodeName] = st
	}
	return out
}

// logUsage reports each agent's RSS and CPU share over the interval, for
// the issue note and the chart's requests and limits.
func logUsage(t *testing.T, phase string, before, after map[string]k8s.PodStats, d time.Duration) {
	for pod, a := range after {
		b, ok := before[pod]
		if !ok {
			continue
		}
		t.Logf("agent %s %s: RSS %.1f MiB, CPU %.1f%% of a core over %v", pod, phase,
			float64(a.RSS)/(1<<20), 100*(a.CPU-b.CPU).Seconds()/d.Seconds(), d.Round(time.Second))
	}
}

// agentPodOn returns the agent pod on node and its process ID on this
// machine (the process whose network namespace is the node's).
func (r *realNode) agentPodOn(ctx context.Context, node *testbed.Node) (string, int) {
	r.t.Helper()
	pods, err := r.c.Client.CoreV1().Pods(rnNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=agent", FieldSelector: "spec.nodeName=" + node.Name})
	if err != nil || len(pods.Items) != 1 {
		r.t.Fatalf("agent pod on %s: %v (%d pods)", node.Name, err, len(pods.Items))
	}
	var nodeNS syscall.Stat_t
	if err := syscall.Stat(node.Netns, &nodeNS); err != nil {
		r.t.Fatal(err)
	}
	for pid, comm := range lbpathProcesses() {
		var st syscall.Stat_t
		if comm == "lbpath-agent" && syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == nodeNS.Ino {
			return pods.Items[0].Name, pid
		}
	}
	r.t.Fatalf("no lbpath-agent process in %s's network namespace", node.Name)
	return "", 0
}

// deletedAgentFlushes: connections that close just before an agent pod is
// deleted still reach the trace backend, and the agent process exits (0)
// well inside the pod's terminationGracePeriodSeconds.
func (r *realNode) deletedAgentFlushes(t *testing.T) {
	ctx := context.Background()
	tb := r.c.TB
	if err := r.c.SetPolicy(ctx, testbed.PolicyLocal); err != nil {
		t.Fatal(err)
	}
	pods, err := r.c.WebPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := tb.Node(1)
	if !slices.ContainsFunc(pods, func(p k8s.WebPod) bool { return p.Node == node.Name }) {
		node = tb.Node(2)
	}
	if err := tb.RouteLB(node.Index); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	ds, err := r.c.Client.AppsV1().DaemonSets(rnNamespace).Get(ctx, rnAgentDS, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	grace := time.Duration(*ds.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	podName, pid := r.agentPodOn(ctx, node)

	var sent []testbed.Result
	for range 10 {
		res := tb.Request(ctx, tb.Client.Netns, tb.Web().LoadBalancerAddr(), 64, 512)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		sent = append(sent, res)
	}
	// At once: these connections closed within the last few milliseconds,
	// well inside the agent's join and metadata waits.
	deleted := time.Now()
	if err := r.c.Client.CoreV1().Pods(rnNamespace).Delete(ctx, podName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	exited := waitProcessGone(pid, grace+10*time.Second)
	if exited.IsZero() {
		t.Fatalf("agent pid %d still runs %v after its pod was deleted (grace %v)", pid, grace+10*time.Second, grace)
	}
	took := exited.Sub(deleted)
	t.Logf("agent on %s exited %v after its pod was deleted (grace %v)", node.Name, took.Round(10*time.Millisecond), grace)
	if took >= grace {
		t.Errorf("agent needed %v to exit, the grace period is %v: the kubelet would SIGKILL it", took, grace)
	}
	err = poll(ctx, 30*time.Second, func() error {
		traces := spansByTrace(r.sink.Spans())
		for _, res := range sent {
			if _, srv := serverSpanFor(traces, res.SeenRemote); srv == nil {
				return fmt.Errorf("no span for connection %v closed just before the agent was deleted", res.Local)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.waitReady(ctx, 2*time.Minute) // the DaemonSet replaces the pod
}

// waitProcessGone returns when pid exited (or became a zombie), zero after
// timeout.
func waitProcessGone(pid int, timeout time.Duration) time.Time {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, ok := lbpathProcesses()[pid]; !ok || zombieProc(pid) {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Time{}
}

func zombieProc(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// upgrade: helm upgrade with a changed value rolls every agent; the old
// pods' BPF programs are gone afterwards (one set per node remains).
func (r *realNode) upgrade(t *testing.T) {
	ctx := context.Background()
	old := lbpathProcesses()
	r.helmRun(append([]string{"upgrade", rnRelease, manifests.ChartDir(), "--namespace", rnNamespace,
		"--set", "agent.logLevel=debug"}, r.chartArgs()...)...)
	err := poll(ctx, 3*time.Minute, func() error {
		ds, err := r.c.Client.AppsV1().DaemonSets(rnNamespace).Get(ctx, rnAgentDS, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, "--log-level=debug") {
			return fmt.Errorf("DaemonSet args %v", ds.Spec.Template.Spec.Containers[0].Args)
		}
		if !daemonSetRolledOut(ds, len(r.c.TB.Nodes)) {
			return fmt.Errorf("rolling: %+v", ds.Status)
		}
		for pid, comm := range lbpathProcesses() {
			if _, ok := old[pid]; ok && comm == "lbpath-agent" {
				return fmt.Errorf("old agent pid %d still runs", pid)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("upgrade: %v\n%s", err, r.podReport(ctx))
	}
	want := len(r.c.TB.Nodes) * agentProgramsEach(t)
	if err := poll(ctx, 10*time.Second, func() error {
		if n := lbpathPrograms(t); n != want {
			return fmt.Errorf("%d lbpath BPF programs after the upgrade, want %d (one set per node)", n, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// uninstall: helm uninstall leaves no lbpath process, no BPF program (and
// so no link) and no rule that was not there before the install.
func (r *realNode) uninstall(t *testing.T, rulesBefore map[string]string) {
	ctx := context.Background()
	// Back to the policy the rules were captured with.
	if err := r.c.SetPolicy(ctx, testbed.PolicyCluster); err != nil {
		t.Fatal(err)
	}
	r.helmRun("uninstall", rnRelease, "--namespace", rnNamespace, "--wait", "--timeout", "2m")
	err := poll(ctx, 2*time.Minute, func() error {
		if p := lbpathProcesses(); len(p) > 0 {
			return fmt.Errorf("lbpath processes left: %v", p)
		}
		if n := lbpathPrograms(t); n != 0 {
			return fmt.Errorf("%d lbpath BPF programs left", n)
		}
		pods, err := r.c.Client.CoreV1().Pods(rnNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d pods left in %s", len(pods.Items), rnNamespace)
		}
		after := r.nodeRules()
		for node, before := range rulesBefore {
			if after[node] != before {
				return fmt.Errorf("rules of %s differ from before the install:\n%s", node, lineDiff(before, after[node]))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// lineDiff lists the lines only in a (-) or only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for l, n := range ma {
		if mb[l] < n {
			out = append(out, "- "+l)
		}
	}
	for l, n := range mb {
		if ma[l] < n {
			out = append(out, "+ "+l)
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}
