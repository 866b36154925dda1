package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestLBHealthProbes: under externalTrafficPolicy Local a cloud load
// balancer's health checker connects to <node>:<healthCheckNodePort> of
// every node. On the plain testbed (real kernel, conntrack, eBPF) with a
// real kube-apiserver, which allocates the Service's healthCheckNodePort,
// N connections from the external client to node1's port are counted as
// exactly N probes of that Service on node1 and 0 on node2 — in the
// agents' records (class lb_health_check, no span) and over OTLP in
// lbpath.loadbalancer.health_probes and lbpath.agent.node_connections. A
// connection from a pod to the same port (the lbsignals receiver probes
// from the collector's pod) and one from the external client to another
// port of node1 are not probes.
func TestLBHealthProbes(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	cl := upCluster(t, "lbhp", testbed.ModeIPTables, testbed.PolicyLocal)
	cp := startLoopbackControlPlane(t, "lbpath-lbprobes")
	registerTestbed(t, cp.Client, cl)
	const hcnp = 32101
	if _, err := cp.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-lb"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			HealthCheckNodePort: hcnp, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 32080, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
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
	for _, a := range set.Agents {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if s, ok := a.Watcher().Index.Service("default", "web-lb"); ok && s.HealthCheckNodePort == hcnp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the agents' index never had default/web-lb's healthCheckNodePort")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	node1, node2 := cl.Nodes[0], cl.Nodes[1]
	// The stand-in testbed's NAT writer is not kube-proxy and serves no
	// healthCheckNodePort; a listener in node1's namespace on the port is
	// what kube-proxy's health server would be there (its HTTP answer
	// does not matter to the agent, which sees the connection). node2
	// gets no probe.
	health := listenEcho(t, node1.Netns, netip.AddrPortFrom(node1.IP, hcnp))
	other := listenEcho(t, node1.Netns, netip.AddrPortFrom(node1.IP, 0))
	const n = 5
	var probes []netip.AddrPort
	for range n {
		probes = append(probes, echo(t, cl.Client.Netns, health))
	}
	fromPod := echo(t, cl.ClientPod.Netns, health)
	elsewhere := echo(t, cl.Client.Netns, other)

	// Every record of node1's server side, waited for: the external
	// client's are decided once the metadata wait is over.
	server := func(recs []path.Record, src netip.AddrPort) *path.Record {
		for i := range recs {
			if r := &recs[i]; r.Node == node1.Name && r.Role == flow.RoleServer && r.PodSrc == src {
				return r
			}
		}
		return nil
	}
	want := append(append([]netip.AddrPort{}, probes...), fromPod, elsewhere)
	deadline := time.Now().Add(15 * time.Second)
	var recs []path.Record
	for {
		recs = named.all()
		missing := 0
		for _, src := range want {
			if server(recs, src) == nil {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, src := range probes {
		if r := server(recs, src); r == nil || r.Class != path.ClassLBHealthCheck || r.HealthCheckService != "default/web-lb" || r.Service != "" || r.Outcome != flow.OutcomeOK {
			t.Errorf("probe from %v: %+v, want class lb_health_check of default/web-lb, outcome ok, no service", src, r)
		}
	}
	if r := server(recs, fromPod); r == nil || r.Class != path.ClassCluster || r.HealthCheckService != "" {
		t.Errorf("connection from the client pod to the port: %+v, want class cluster (not a load balancer's probe)", r)
	}
	if r := server(recs, elsewhere); r == nil || r.Class != path.ClassExternal || r.HealthCheckService != "" {
		t.Errorf("connection to another port of node1: %+v, want class external", r)
	}
	for _, r := range recs {
		if r.Class == path.ClassLBHealthCheck && (r.Node != node1.Name || r.Role != flow.RoleServer) {
			t.Errorf("probe record outside node1's server side: %+v", r)
		}
	}
	if got, want := probeCounts(set.Agents[0].HealthProbes()), "default/web-lb ok=5, default/web-lb refused=0"; got != want {
		t.Errorf("node1 agent counts %q, want %q", got, want)
	}
	if got, want := probeCounts(set.Agents[1].HealthProbes()), "default/web-lb ok=0, default/web-lb refused=0"; got != want {
		t.Errorf("node2 agent counts %q, want %q", got, want)
	}

	stopped = true
	if err := set.Stop(); err != nil {
		t.Fatal(err)
	}
	// Over OTLP: the last point of each series (cumulative).
	last := map[string]float64{}
	for _, p := range sink.Points() {
		switch p.Metric {
		case exporter.MetricHealthProbes:
			if p.Attrs["k8s.node.name"] != p.Resource["k8s.node.name"] {
				t.Errorf("probe point's node %v, resource's %v", p.Attrs["k8s.node.name"], p.Resource["k8s.node.name"])
			}
			last[fmt.Sprint(p.Resource["k8s.node.name"], " ", p.Attrs["k8s.namespace.name"], "/", p.Attrs["k8s.service.name"], " ", p.Attrs["lbpath.outcome"])] = p.Value
		case exporter.MetricNodeConnections:
			if p.Attrs["lbpath.connection.class"] == string(path.ClassLBHealthCheck) {
				last[fmt.Sprint(p.Resource["k8s.node.name"], " node_connections")] = p.Value
			}
		}
	}
	wantOTLP := map[string]float64{
		node1.Name + " default/web-lb ok": n, node2.Name + " default/web-lb ok": 0,
		node1.Name + " default/web-lb refused": 0, node2.Name + " default/web-lb refused": 0,
		node1.Name + " node_connections": n, node2.Name + " node_connections": 0,
	}
	if fmt.Sprint(last) != fmt.Sprint(wantOTLP) {
		t.Errorf("over OTLP %v, want %v", last, wantOTLP)
	}
	for _, s := range sink.Spans() {
		if s.Attrs["lbpath.connection.class"] == string(path.ClassLBHealthCheck) {
			t.Errorf("span of a load-balancer probe exported: %v", s.Attrs)
		}
	}
}

func probeCounts(cs []path.ProbeCount) string {
	out := ""
	for _, c := range cs {
		if out != "" {
			out += ", "
		}
		out += fmt.Sprintf("%s/%s %s=%d", c.Namespace, c.Service, c.Outcome, c.Count)
	}
	return out
}
