package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/conntrack"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// The index is filled by hand here (the informers are exercised against a
// real API server in e2e); these tests pin the naming and diagnosis rules.

var (
	t0     = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	node1  = netip.MustParseAddr("192.168.77.11")
	node2  = netip.MustParseAddr("192.168.77.12")
	podA   = netip.MustParseAddr("10.244.1.10")
	podC   = netip.MustParseAddr("10.244.2.10")
	client = netip.MustParseAddrPort("192.168.77.100:40000")
	lb     = netip.MustParseAddrPort("203.0.113.10:80")
)

func index(policy string, lbIP bool) *kube.Index {
	x := kube.NewIndex(kube.IndexConfig{})
	x.SetNode(&kube.Node{Name: "node1", InternalIP: node1, Zone: "z1"}, t0)
	x.SetNode(&kube.Node{Name: "node2", InternalIP: node2, Zone: "z2"}, t0)
	x.SetPod(&kube.Pod{Namespace: "default", Name: "web-abc-1", UID: "1", Node: "node1", IP: podA, Ready: true, ReplicaSet: "web-abc", TemplateHash: "abc"}, t0)
	x.SetPod(&kube.Pod{Namespace: "default", Name: "web-abc-2", UID: "2", Node: "node2", IP: podC, Ready: false, ReplicaSet: "web-abc", TemplateHash: "abc"}, t0)
	s := &kube.Service{Namespace: "default", Name: "web", Type: "LoadBalancer", ExternalTrafficPolicy: policy, Created: t0.Add(-time.Hour),
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Ports: []kube.ServicePort{{Port: 80, NodePort: 30080, TargetPort: 8080}}}
	if lbIP {
		s.LBIngress = []netip.Addr{lb.Addr()}
	}
	x.SetService(s, t0)
	x.SetEndpointSlice("default/web-1", "default/web", []uint16{8080}, []kube.Endpoint{
		{IP: podA, Node: "node1", Ready: true, PodName: "web-abc-1"},
		{IP: podC, Node: "node2", Ready: false, PodName: "web-abc-2"},
	}, t0)
	return x
}

func has(p Path, code string) bool {
	for _, d := range p.Diagnoses {
		if d.Code == code {
			return true
		}
	}
	return false
}

// Entry node's forward record: LB traffic DNATed on node2 to a pod on node1.
func TestForwardIsCrossNodeWithSNAT(t *testing.T) {
	n := NewNamer(Config{Node: "node2"}, index("Cluster", true))
	snatSrc := netip.AddrPortFrom(node2, 51000)
	c := flow.Connection{Node: "node2", Role: flow.RoleForward, Outcome: flow.OutcomeForwarded, Start: t0.Add(time.Minute),
		Client: client, Target: lb, PodSrc: snatSrc, PodDst: netip.AddrPortFrom(podA, 8080), SNAT: true,
		NAT: &flow.NAT{Original: conntrack.Tuple{Src: client, Dst: lb}, DNAT: true, SNAT: true}}
	p, complete := n.Name(&c)
	if !complete || p.Pod == nil || p.Pod.Name != "web-abc-1" || p.Pod.Deployment != "web" {
		t.Fatalf("pod = %+v complete=%v", p.Pod, complete)
	}
	if p.Service == nil || p.Service.Name != "web" || p.Entry != kube.EntryLoadBalancer {
		t.Errorf("service %v entry %q", p.Service, p.Entry)
	}
	if p.EntryNode != "node2" || p.PodNode != "node1" || !p.CrossNode || p.PodZone != "z1" {
		t.Errorf("entry %s pod node %s cross %v zone %s", p.EntryNode, p.PodNode, p.CrossNode, p.PodZone)
	}
	if p.Client.Kind != PeerExternal || p.Client.Addr != client {
		t.Errorf("client = %+v", p.Client)
	}
	if !has(p, DiagSNAT) || !has(p, DiagCrossNode) {
		t.Errorf("diagnoses = %+v", p.Diagnoses)
	}
}

// The pod's node without NAT: the source is another node's address, so the
// hop crossed nodes and the client address is lost.
func TestServerSeesOtherNodeAddress(t *testing.T) {
	n := NewNamer(Config{Node: "node1"}, index("Cluster", true))
	c := flow.Connection{Node: "node1", Role: flow.RoleServer, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
		Client: netip.AddrPortFrom(node2, 51000), Target: netip.AddrPortFrom(podA, 8080),
		PodSrc: netip.AddrPortFrom(node2, 51000), PodDst: netip.AddrPortFrom(podA, 8080)}
	p, _ := n.Name(&c)
	if !p.Client.Lost || !p.SNAT || p.EntryNode != "node2" || !p.CrossNode {
		t.Errorf("lost=%v snat=%v entry=%s cross=%v", p.Client.Lost, p.SNAT, p.EntryNode, p.CrossNode)
	}
	if p.Service == nil || p.Service.Name != "web" {
		t.Errorf("service from the EndpointSlice: %v", p.Service)
	}
}

func TestDiagnoses(t *testing.T) {
	// Local policy, LB traffic entering node2 whose only pod is not ready.
	x := index("Local", false)
	n := NewNamer(Config{Node: "node2", LBPendingAfter: time.Minute}, x)
	c := flow.Connection{Node: "node2", Role: flow.RoleServer, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
		Client: client, Target: netip.AddrPortFrom(node2, 30080), PodSrc: client, PodDst: netip.AddrPortFrom(podC, 8080),
		NAT: &flow.NAT{DNAT: true}}
	p, _ := n.Name(&c)
	if p.Entry != kube.EntryNodePort || p.EndpointReady {
		t.Errorf("entry %q ready %v", p.Entry, p.EndpointReady)
	}
	for _, code := range []string{DiagEndpointNotReady, DiagLocalNoEndpoint, DiagLBPending} {
		if !has(p, code) {
			t.Errorf("missing diagnosis %s in %+v", code, p.Diagnoses)
		}
	}
	if has(p, DiagSNAT) {
		t.Errorf("Local policy diagnosed SNAT: %+v", p.Diagnoses)
	}
	inv := n.Inventory(t0.Add(time.Hour))
	if inv.LoadBalancers != 1 || len(inv.Pending) != 1 {
		t.Errorf("inventory %+v", inv)
	}
	// An unknown pod address is incomplete (the caller waits for metadata).
	c.PodDst = netip.MustParseAddrPort("10.244.9.9:8080")
	if _, complete := n.Name(&c); complete {
		t.Error("unknown pod reported complete")
	}
}
