package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/lbpath/lbpath/agent"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// apiServerEndpoint is where the test registers "the API server" in the
// default/kubernetes EndpointSlice: a listener on the LAN (in the external
// client's namespace), which node1 dials as a kubelet dials its API
// server. The real kube-apiserver of this test listens on the host's
// loopback, which the node namespaces cannot reach.
var apiServerEndpoint = netip.AddrPortFrom(testbed.ClientIP, 6443)

// TestNodeOwnTraffic: on the plain testbed (real kernel, NAT, conntrack,
// eBPF) with a real kube-apiserver that knows the testbed's nodes, pods and
// Service, the node's own connections — loopback and the node's own address
// (node_local), a dialled API server endpoint (apiserver), port 10250 on
// another node seen from both ends (kubelet), an address on the LAN
// (external) — are classified exactly, counted in
// lbpath.agent.node_connections (OTLP and the agent's counters), make no
// span, no per-pod metric and no drop; pod connections in the same run are
// named and make spans. Then, with the API server stopped, a connection to
// the same LAN address is unknown and unattributed, never external, until
// the informers have recovered.
func TestNodeOwnTraffic(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	cl := upCluster(t, "lbnt", testbed.ModeIPTables, testbed.PolicyCluster)
	cp := startLoopbackControlPlane(t, "lbpath-nodetraffic")
	registerTestbed(t, cp.Client, cl)
	sink := testbedtest.Sink(t)

	named := &namedRecords{}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	set, err := nodeagents.Start(cl, nodeagents.Options{
		Kubeconfig: cp.Kubeconfig, Path: named.add,
		Flow:   flow.Config{JoinWait: 300 * time.Millisecond},
		Export: &exporter.Config{Endpoint: sink.GRPCAddr, Insecure: true, MetricInterval: time.Second},
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			set.Stop()
		}
	})
	waitCurrent(t, set.Agents, true)

	node1, node2 := cl.Nodes[0], cl.Nodes[1]
	lo := netip.MustParseAddr("127.0.0.1")
	servers := map[string]netip.AddrPort{
		"loopback": listenEcho(t, node1.Netns, netip.AddrPortFrom(lo, 0)),
		"own":      listenEcho(t, node1.Netns, netip.AddrPortFrom(node1.IP, 0)),
		"external": listenEcho(t, cl.Client.Netns, netip.AddrPortFrom(testbed.ClientIP, 0)),
		"api":      listenEcho(t, cl.Client.Netns, apiServerEndpoint),
		"kubelet":  listenEcho(t, node2.Netns, netip.AddrPortFrom(node2.IP, 10250)),
	}
	webPod := cl.Pods[0]
	type expect struct {
		node  string
		role  flow.Role
		class path.Class
	}
	type conn struct {
		name   string
		client netip.AddrPort
		server netip.AddrPort
		want   []expect
	}
	dial := func(name string, from string, to netip.AddrPort, want ...expect) conn {
		t.Helper()
		return conn{name, echo(t, from, to), to, want}
	}
	n1, n2 := node1.Name, node2.Name
	client, server := flow.RoleClient, flow.RoleServer
	conns := []conn{
		dial("loopback", node1.Netns, servers["loopback"], expect{n1, client, path.ClassNodeLocal}, expect{n1, server, path.ClassNodeLocal}),
		dial("own address", node1.Netns, servers["own"], expect{n1, client, path.ClassNodeLocal}, expect{n1, server, path.ClassNodeLocal}),
		dial("api server endpoint", node1.Netns, servers["api"], expect{n1, client, path.ClassAPIServer}),
		dial("kubelet on another node", node1.Netns, servers["kubelet"], expect{n1, client, path.ClassKubelet}, expect{n2, server, path.ClassKubelet}),
		dial("LAN address", node1.Netns, servers["external"], expect{n1, client, path.ClassExternal}),
	}
	// A probe-like request from the node to a pod: the cluster's.
	probe := cl.Request(ctx, node1.Netns, netip.AddrPortFrom(webPod.IP, webPod.Port), 0, 0)
	if probe.Err != nil {
		t.Fatal(probe.Err)
	}
	conns = append(conns, conn{"node to pod", probe.Local, probe.Remote,
		[]expect{{n1, client, path.ClassCluster}, {webPod.Node.Name, server, path.ClassCluster}}})
	var viaService []testbed.Result
	for range 3 {
		res := cl.Request(ctx, cl.ClientPod.Netns, cl.Web().ClusterAddr(), 10, 10)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		viaService = append(viaService, res)
	}

	// find returns the record of one end of a connection.
	find := func(recs []path.Record, e expect, c conn) *path.Record {
		for i := range recs {
			r := &recs[i]
			if r.Node == e.node && r.Role == e.role && r.PodSrc == c.client && (r.PodDst == c.server || r.Target == c.server) {
				return r
			}
		}
		return nil
	}
	waitRecords := func(conns []conn, views ...testbed.Result) []path.Record {
		deadline := time.Now().Add(10 * time.Second) // settle 1 s + metadata wait 2 s for "external"
		for {
			recs := named.all()
			missing := 0
			for _, res := range views {
				if _, ok := findView(recs, res); !ok {
					missing++
				}
			}
			for _, c := range conns {
				for _, e := range c.want {
					if find(recs, e, c) == nil {
						missing++
					}
				}
			}
			if missing == 0 || time.Now().After(deadline) {
				return recs
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	recs := waitRecords(conns, viaService...)
	want := map[string]map[path.Class]uint64{n1: {}, n2: {}}
	for _, c := range conns {
		for _, e := range c.want {
			r := find(recs, e, c)
			switch {
			case r == nil:
				t.Errorf("%s (%v -> %v): no %s record from %s", c.name, c.client, c.server, e.role, e.node)
			case r.Class != e.class:
				t.Errorf("%s: %s record from %s has class %q, want %q", c.name, e.role, e.node, r.Class, e.class)
			case e.class.Node() && (r.Pod != "" || r.Service != ""):
				t.Errorf("%s: node traffic named pod %q service %q", c.name, r.Pod, r.Service)
			case e.class == path.ClassCluster && r.Pod != "default/"+webPod.Name:
				t.Errorf("%s: %s record names pod %q, want default/%s", c.name, e.role, r.Pod, webPod.Name)
			}
			if e.class.Node() {
				want[e.node][e.class]++
			}
		}
	}
	for _, res := range viaService {
		v, ok := findView(recs, res)
		if !ok || v.server.Class != path.ClassCluster || v.server.Pod != "default/"+res.Pod || v.server.Service != "default/web" {
			t.Errorf("%v via the ClusterIP: %+v (found %v), want cluster, pod %s, Service default/web", res.Local, v.server, ok, res.Pod)
		}
	}
	// Every node-class record of the run is one of the connections above:
	// the counters count exactly those, and nothing was lost or left
	// unattributed.
	for i, a := range set.Agents { // one per node, in cl.Nodes order
		node := cl.Nodes[i].Name
		st := a.Stats()
		for _, c := range st.NodeConnections {
			if c.Count != want[node][c.Class] {
				t.Errorf("%s: %s counted %d, want %d", node, c.Class, c.Count, want[node][c.Class])
			}
		}
		for _, d := range a.Drops() {
			if d.Count != 0 {
				t.Errorf("%s: dropped %s/%s = %d", node, d.Stage, d.Reason, d.Count)
			}
		}
		if st.Pipeline.RequestsUnattributed.Load() != 0 {
			t.Errorf("%s: %d requests unattributed", node, st.Pipeline.RequestsUnattributed.Load())
		}
	}
	if got := set.Agents[0].Stats().Pipeline.RequestsNode.Load(); got < 2 {
		t.Errorf("node1: %d requests answered by the node's own servers, want the loopback and own-address ones", got)
	}
	for _, r := range recs {
		if r.Class.Node() && !slices.ContainsFunc(conns, func(c conn) bool { return r.PodSrc == c.client }) {
			t.Errorf("unexpected node-class record: %+v", r)
		}
	}

	// The API server goes away: the informers fail, and an address no pod
	// is known to have is no longer known to be no pod's.
	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	waitCurrent(t, set.Agents, false)
	during := []conn{
		dial("LAN address during the outage", node1.Netns, servers["external"], expect{n1, client, path.ClassUnknown}),
		dial("loopback during the outage", node1.Netns, servers["loopback"], expect{n1, client, path.ClassNodeLocal}, expect{n1, server, path.ClassNodeLocal}),
	}
	recs = waitRecords(during)
	for _, c := range during {
		for _, e := range c.want {
			if r := find(recs, e, c); r == nil || r.Class != e.class {
				t.Errorf("%s: %s record %+v, want class %q", c.name, e.role, r, e.class)
			} else if e.class.Node() {
				want[e.node][e.class]++
			}
		}
	}
	if u := set.Agents[0].Stats().Pipeline.Unattributed.Load(); u != 1 {
		t.Errorf("node1 unattributed = %d during the outage, want 1 (the LAN connection)", u)
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	waitCurrent(t, set.Agents, true)
	after := []conn{dial("LAN address after the outage", node1.Netns, servers["external"], expect{n1, client, path.ClassExternal})}
	recs = waitRecords(after)
	if r := find(recs, after[0].want[0], after[0]); r == nil || r.Class != path.ClassExternal {
		t.Errorf("after the outage: %+v, want external", r)
	} else {
		want[n1][path.ClassExternal]++
	}

	// Stopping flushes every exporter: spans and the last metrics.
	stopped = true
	if err := set.Stop(); err != nil {
		t.Fatal(err)
	}
	recs = named.all()
	checkExported(t, sink, recs, want)
}

// checkExported compares what crossed the OTLP wire with the records: a
// span for each record of the cluster's (or unclassified), none for the
// node's own; lbpath.connections counts the same records; and
// lbpath.agent.node_connections carries the counts by class.
func checkExported(t *testing.T, sink *otlpsink.Sink, recs []path.Record, want map[string]map[path.Class]uint64) {
	t.Helper()
	type key struct {
		node, role string
		src        string
	}
	wantSpans := map[key]bool{}
	perNode := map[string]float64{}
	for _, r := range recs {
		if !r.Class.Node() {
			wantSpans[key{r.Node, string(r.Role), r.PodSrc.String()}] = true
			perNode[r.Node]++
		}
	}
	gotSpans := map[key]bool{}
	for _, s := range sink.Spans() {
		role, ok := s.Attrs["lbpath.role"].(string)
		if !ok {
			continue // a hop child
		}
		k := key{fmt.Sprint(s.Attrs["lbpath.node"]), role, netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprint(s.Attrs["network.peer.address"])),
			uint16(s.Attrs["network.peer.port"].(int64))).String()}
		gotSpans[k] = true
		if c := path.Class(fmt.Sprint(s.Attrs["lbpath.connection.class"])); c.Node() {
			t.Errorf("span of the node's own traffic exported: %v", s.Attrs)
		}
	}
	t.Logf("%d records, %d root spans exported for the cluster's and unknown records", len(recs), len(gotSpans))
	for k := range wantSpans {
		if !gotSpans[k] {
			t.Errorf("no span for the record %v", k)
		}
	}
	for k := range gotSpans {
		if !wantSpans[k] {
			t.Errorf("span %v has no cluster record", k)
		}
	}
	// Cumulative metrics: the last point of each series.
	last := map[string]otlpsink.Point{}
	for _, p := range sink.Points() {
		last[fmt.Sprint(p.Metric, p.Resource["k8s.node.name"], p.Attrs)] = p
	}
	conns := map[string]float64{}
	classes := map[string]map[path.Class]uint64{}
	for _, p := range last {
		node := fmt.Sprint(p.Resource["k8s.node.name"])
		switch p.Metric {
		case exporter.MetricConnections:
			conns[node] += p.Value
		case exporter.MetricNodeConnections:
			if classes[node] == nil {
				classes[node] = map[path.Class]uint64{}
			}
			classes[node][path.Class(fmt.Sprint(p.Attrs["lbpath.connection.class"]))] = uint64(p.Value)
		}
	}
	for node, n := range perNode {
		if conns[node] != n {
			t.Errorf("%s: lbpath.connections sums to %v, want %v (the cluster's records only)", node, conns[node], n)
		}
	}
	for node, w := range want {
		for _, c := range path.NodeClasses {
			if got, ok := classes[node][c]; !ok || got != w[c] {
				t.Errorf("%s: %s{%s} = %d (reported %v), want %d", node, exporter.MetricNodeConnections, c, got, ok, w[c])
			}
		}
	}
}

// waitCurrent waits until every agent's index is (or is no longer)
// current: the informers synced, or failing.
func waitCurrent(t *testing.T, agents []*agent.Agent, current bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for _, a := range agents {
		for a.Watcher().CurrentAt(time.Now()) != current {
			if time.Now().After(deadline) {
				t.Fatalf("agent index current=%v after a minute, want %v", !current, current)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// listenEcho listens on addr inside the namespace at nsPath and answers
// each connection's "ping" with "pong".
func listenEcho(t *testing.T, nsPath string, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write([]byte("pong"))
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// echo makes one ping/pong connection from the namespace at nsPath to to,
// and returns the client's address.
func echo(t *testing.T, nsPath string, to netip.AddrPort) netip.AddrPort {
	t.Helper()
	c, err := testbed.DialFrom(context.Background(), nsPath, to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo %v -> %v: %v", local, to, err)
	}
	return local
}

// startLoopbackControlPlane runs etcd, kube-apiserver and the controllers
// on the host's loopback (no host link into the testbed: the agents, which
// run in this process, reach it from the host namespace).
func startLoopbackControlPlane(t *testing.T, name string) *k8s.ControlPlane {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	bins, err := k8s.EnsureBinaries(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatalf("kubernetes binaries: %v", err)
	}
	cp, err := k8s.Start(ctx, k8s.ControlPlaneOptions{Binaries: bins, Name: name, BindAddress: netip.MustParseAddr("127.0.0.1"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("control plane stop: %v", err)
		}
	})
	return cp
}

// registerTestbed tells the API server what the testbed is, as a kubelet
// and a cloud would: its Nodes with their LAN addresses, its pods bound,
// running and ready with their addresses (the web pods labelled for
// Service web, whose EndpointSlices the real controller then writes), the
// web Service at the testbed's ClusterIP, and apiServerEndpoint as the
// default/kubernetes endpoint.
func registerTestbed(t *testing.T, cs kubernetes.Interface, cl *testbed.Cluster) {
	t.Helper()
	ctx := context.Background()
	for _, n := range cl.Nodes {
		node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	web := map[string]string{"app": "web"}
	for _, p := range append(slices.Clone(cl.Pods), cl.ClientPod) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: p.Name},
			Spec: corev1.PodSpec{NodeName: p.Node.Name, Containers: []corev1.Container{{Name: "c", Image: "lbpath.invalid/podserver:v1"}}}}
		if p.Port != 0 {
			pod.Labels = web
			pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: int32(p.Port), Protocol: corev1.ProtocolTCP}}
		}
		created, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		now := metav1.Now()
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IP.String(), PodIPs: []corev1.PodIP{{IP: p.IP.String()}},
			HostIP: p.Node.IP.String(), StartTime: &now,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
		if _, err := cs.CoreV1().Pods("default").UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	w := cl.Web()
	if _, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: w.Name},
		Spec: corev1.ServiceSpec{ClusterIP: w.ClusterIP.String(), Selector: web, Ports: []corev1.ServicePort{{
			Name: w.PortName, Protocol: corev1.ProtocolTCP, Port: int32(w.Port), TargetPort: intstr.FromInt32(int32(w.TargetPort))}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	port, proto, https := int32(apiServerEndpoint.Port()), corev1.ProtocolTCP, "https"
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes", Labels: map[string]string{
			discoveryv1.LabelServiceName: "kubernetes", discoveryv1.LabelManagedBy: "lbpath-e2e"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{apiServerEndpoint.Addr().String()}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &https, Port: &port, Protocol: &proto}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The web EndpointSlice comes from the real controller.
	deadline := time.Now().Add(30 * time.Second)
	for {
		sl, err := cs.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		if err == nil && len(sl.Items) > 0 && len(sl.Items[0].Endpoints) == len(cl.Pods) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no EndpointSlice for web with %d endpoints after 30 s: %v", len(cl.Pods), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
