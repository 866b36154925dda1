package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// These tests run the classification over a real kube.Index fed objects as
// the informers would, a real kube.Freshness for "was the index current"
// (its transport and watch-error inputs are tested in agent/kube and
// against a real API server in e2e), and the node's addresses as the agent
// reads them.

var (
	apiEP      = netip.MustParseAddrPort("192.168.77.5:6443")
	kubeSvcIP  = netip.MustParseAddrPort("10.96.0.1:443")
	cniGateway = netip.MustParseAddr("10.244.1.1")
	internet   = netip.MustParseAddrPort("93.184.216.34:443")
	podUnknown = netip.MustParseAddrPort("10.244.2.99:8080")
)

// cluster is node1's view: the index() cluster plus the kubernetes
// Service with its API server endpoint, a hostNetwork exporter publishing
// port 9100 on node1, and a Service whose EndpointSlice names a pod the
// index does not have.
func cluster(t *testing.T) (*kube.Index, *Local, *kube.Freshness) {
	t.Helper()
	x := index("Cluster", true)
	x.SetService(&kube.Service{Namespace: "default", Name: "kubernetes", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{kubeSvcIP.Addr()}, Ports: []kube.ServicePort{{Name: "https", Port: 443, TargetPort: 6443}}}, t0)
	x.SetEndpointSlice("default/kubernetes", "default/kubernetes", []uint16{6443},
		[]kube.Endpoint{{IP: apiEP.Addr(), Ready: true}}, t0)
	x.SetPod(&kube.Pod{Namespace: "monitoring", Name: "node-exporter-x", UID: "ne", Node: "node1", IP: node1,
		HostNetwork: true, Ready: true, HostPorts: []kube.HostPort{{HostPort: 9100, ContainerPort: 9100}}}, t0)
	x.SetService(&kube.Service{Namespace: "shop", Name: "cart", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}, Ports: []kube.ServicePort{{Port: 80, TargetPort: 8080}}}, t0)
	x.SetEndpointSlice("shop/cart-1", "shop/cart", []uint16{8080},
		[]kube.Endpoint{{IP: netip.MustParseAddr("10.244.2.77"), Node: "node2", Ready: true, PodName: "cart-1"}}, t0)
	local := &Local{}
	// Read after the connections below started, as the agent's
	// once-a-second refresh does before they are named.
	local.Set([]netip.Addr{node1, cniGateway, netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}, t0.Add(time.Hour))
	fresh := &kube.Freshness{}
	fresh.Synced(t0)
	return x, local, fresh
}

func namer(t *testing.T) (*Namer, *kube.Index, *Local, *kube.Freshness) {
	t.Helper()
	x, local, fresh := cluster(t)
	return NewNamer(Config{Node: "node1", Local: local, Current: fresh.CurrentAt}, x), x, local, fresh
}

func conn(role flow.Role, client, server netip.AddrPort) flow.Connection {
	c := flow.Connection{Node: "node1", Role: role, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
		Client: client, Target: server, PodSrc: client, PodDst: server}
	c.End = c.Start.Add(time.Second)
	return c
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

type classCase struct {
	name string
	c    flow.Connection
	// at Name (metadata settled) and at NameLate (full wait), with the
	// index current, and at NameLate while the API server was unreachable.
	settled, late, outage Class
}

// pending is an expectation, not a class: the cluster's connection, not
// complete yet (an end that could be a pod's is unnamed).
const pending Class = "cluster, incomplete"

func TestClassify(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	viaService := conn(flow.RoleClient, ap(node1, 40010), kubeSvcIP)
	viaService.PodDst = apiEP
	viaService.NAT = &flow.NAT{DNAT: true}
	dockerDNAT := conn(flow.RoleServer, netip.MustParseAddrPort("198.51.100.7:5555"), ap(node1, 8080))
	dockerDNAT.PodDst = netip.MustParseAddrPort("172.17.0.2:80")
	dockerDNAT.NAT = &flow.NAT{DNAT: true}
	reject := conn(flow.RoleReject, netip.MustParseAddrPort("198.51.100.7:5555"), ap(node1, 23))
	cartViaService := conn(flow.RoleClient, ap(node1, 40009), netip.MustParseAddrPort("10.96.0.20:80"))
	cartViaService.PodDst = netip.MustParseAddrPort("10.244.2.77:8080")
	cartViaService.NAT = &flow.NAT{DNAT: true}
	const u = ClassUnknown
	for _, tc := range []classCase{
		// Kernel facts: decided at once, API server or not.
		{"loopback", conn(flow.RoleClient, ap(lo, 40000), ap(lo, 8080)), ClassNodeLocal, ClassNodeLocal, ClassNodeLocal},
		{"loopback kubelet", conn(flow.RoleServer, ap(lo, 40000), ap(lo, 10250)), ClassKubelet, ClassKubelet, ClassKubelet},
		{"own non-InternalIP address", conn(flow.RoleClient, ap(cniGateway, 40000), ap(cniGateway, 53)), ClassNodeLocal, ClassNodeLocal, ClassNodeLocal},
		// The InternalIP can carry a pod's host port: index needed.
		{"own InternalIP", conn(flow.RoleClient, ap(node1, 40000), ap(node1, 22)), ClassNodeLocal, ClassNodeLocal, u},
		{"host port of a hostNetwork pod", conn(flow.RoleClient, ap(node1, 40001), ap(node1, 9100)), ClassCluster, ClassCluster, ClassCluster},
		{"apiserver endpoint dialled", conn(flow.RoleClient, ap(node1, 40002), apiEP), ClassAPIServer, ClassAPIServer, u},
		{"kubernetes ClusterIP: a Service backed by no pod", viaService, ClassCluster, ClassCluster, pending},
		{"kubelet inbound from another node", conn(flow.RoleServer, ap(node2, 50000), ap(node1, 10250)), ClassKubelet, ClassKubelet, u},
		{"kubelet outbound to another node", conn(flow.RoleClient, ap(node1, 40003), ap(node2, 10250)), ClassKubelet, ClassKubelet, u},
		{"kubelet inbound from an unknown address", conn(flow.RoleServer, netip.MustParseAddrPort("192.168.77.99:50000"), ap(node1, 10250)), u, ClassKubelet, u},
		{"egress", conn(flow.RoleClient, ap(node1, 40004), internet), u, ClassExternal, u},
		{"node to another node's ssh", conn(flow.RoleClient, ap(node1, 40005), ap(node2, 22)), ClassExternal, ClassExternal, u},
		{"refused on the node", reject, u, ClassExternal, u},
		{"DNAT to no Service", dockerDNAT, u, ClassExternal, u},
		// An address no pod is known to have is no pod's only late, and
		// only if the index was complete.
		{"node to an unknown address in the pod range", conn(flow.RoleClient, ap(node1, 40006), podUnknown), u, ClassExternal, u},
		{"pod egress", conn(flow.RoleClient, ap(podA, 40000), internet), pending, ClassCluster, pending},
		{"pod to node", conn(flow.RoleClient, ap(podA, 40000), ap(node2, 10250)), ClassCluster, ClassCluster, pending},
		{"node to pod (probe)", conn(flow.RoleClient, ap(node1, 40007), ap(podA, 8080)), ClassCluster, ClassCluster, ClassCluster},
		{"Service endpoint naming a pod the index lacks", conn(flow.RoleClient, ap(node1, 40008), netip.MustParseAddrPort("10.244.2.77:8080")), u, u, u},
		{"through that Service", cartViaService, pending, pending, pending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, _, _, fresh := namer(t)
			check := func(what string, name func(*flow.Connection) (Path, bool), want Class) {
				t.Helper()
				p, complete := name(&tc.c)
				wantClass, wantComplete := want, want != ClassUnknown
				if want == pending {
					wantClass, wantComplete = ClassCluster, false
				}
				if p.Class != wantClass || complete != wantComplete {
					t.Errorf("%s: class %q complete %v, want %q", what, p.Class, complete, want)
				}
				if want.Node() && (p.Pod != nil || p.Service != nil || p.Entry != "" || p.PodNode != "" || p.SNAT || len(p.Diagnoses) > 0) {
					t.Errorf("%s: node class with pod %v service %v entry %q pod node %q snat %v diagnoses %v",
						what, p.Pod, p.Service, p.Entry, p.PodNode, p.SNAT, p.Diagnoses)
				}
			}
			check("settled", n.Name, tc.settled)
			check("late", n.NameLate, tc.late)
			fresh.Fail("pods")
			check("late during an outage", n.NameLate, tc.outage)
		})
	}
}

// A pod whose IP reaches the index after its first connection started
// (the kubelet probes before its status patch lands): not yet known when
// the metadata settles, so not concluded external then; named once it
// arrives within the index's slack.
func TestLatePodIsNotExternal(t *testing.T) {
	n, x, _, _ := namer(t)
	c := conn(flow.RoleClient, ap(node1, 40000), podUnknown)
	if p, complete := n.Name(&c); complete {
		t.Fatalf("settled: class %q complete before the pod was known", p.Class)
	}
	x.SetPod(&kube.Pod{Namespace: "default", Name: "new", UID: "new", Node: "node2", IP: podUnknown.Addr(), Ready: true}, c.Start.Add(1500*time.Millisecond))
	p, complete := n.NameLate(&c)
	if !complete || p.Class != ClassCluster || p.Pod == nil || p.Pod.Name != "new" {
		t.Errorf("late: class %q pod %v complete %v", p.Class, p.Pod, complete)
	}
}

// Connections that started before the informers synced, or before the
// index recovered from an outage, cannot be proven to touch no pod.
func TestFreshnessBoundsTheNegative(t *testing.T) {
	n, _, _, fresh := namer(t)
	c := conn(flow.RoleClient, ap(node1, 40000), internet)
	c.Start = t0.Add(-time.Second) // before the sync at t0
	if p, complete := n.NameLate(&c); complete {
		t.Errorf("started before sync: class %q", p.Class)
	}
	fresh.Fail("pods")
	recovered := t0.Add(2 * time.Minute)
	fresh.OK("pods", recovered)
	c.Start = recovered.Add(-time.Second)
	if p, complete := n.NameLate(&c); complete {
		t.Errorf("started during the outage: class %q", p.Class)
	}
	c.Start = recovered.Add(time.Second)
	if p, complete := n.NameLate(&c); !complete || p.Class != ClassExternal {
		t.Errorf("started after recovery: class %q complete %v", p.Class, complete)
	}
}

// The node's address list must be newer than the connection before an
// address missing from it is taken as not the node's.
func TestStaleLocalAddresses(t *testing.T) {
	n, _, local, _ := namer(t)
	c := conn(flow.RoleClient, ap(node1, 40000), internet)
	local.Set([]netip.Addr{node1}, c.Start.Add(-time.Second))
	if p, complete := n.NameLate(&c); complete {
		t.Errorf("address list older than the connection: class %q", p.Class)
	}
	local.Set([]netip.Addr{node1}, c.Start.Add(time.Second))
	if p, complete := n.NameLate(&c); !complete || p.Class != ClassExternal {
		t.Errorf("fresh address list: class %q complete %v", p.Class, complete)
	}
}

func TestUnnamedClass(t *testing.T) {
	local := &Local{}
	local.Set([]netip.Addr{node1}, t0)
	lo := netip.MustParseAddr("127.0.0.1")
	nat := conn(flow.RoleClient, ap(node1, 40000), ap(node1, 30080))
	nat.PodDst, nat.NAT = ap(podA, 8080), &flow.NAT{DNAT: true}
	for _, tc := range []struct {
		c    flow.Connection
		want Class
	}{
		{conn(flow.RoleClient, ap(lo, 40000), ap(lo, 8080)), ClassNodeLocal},
		{conn(flow.RoleServer, ap(node1, 40000), ap(node1, 10250)), ClassKubelet},
		{conn(flow.RoleClient, ap(node1, 40000), internet), ClassUnknown},
		{conn(flow.RoleClient, ap(node1, 40000), ap(podA, 8080)), ClassUnknown},
		{nat, ClassUnknown},
	} {
		if got := UnnamedClass(&tc.c, local); got != tc.want {
			t.Errorf("%v -> %v: %q, want %q", tc.c.Client, tc.c.PodDst, got, tc.want)
		}
		if got := UnnamedClass(&tc.c, nil); got != ClassUnknown && !tc.c.PodDst.Addr().IsLoopback() {
			t.Errorf("%v -> %v without addresses: %q", tc.c.Client, tc.c.PodDst, got)
		}
	}
}
