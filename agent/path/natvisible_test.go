package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

var (
	clusterIP = netip.MustParseAddrPort("10.96.0.10:80")
	cpod      = netip.MustParseAddrPort("10.244.1.200:41000")
)

// Translated at connect() on node1: the Service hop is named, node1 is the
// entry, and nothing says NAT was invisible.
func TestSocketLBNamesServiceHop(t *testing.T) {
	n := NewNamer(Config{Node: "node1"}, index("Cluster", true))
	c := flow.Connection{Node: "node1", Role: flow.RoleClient, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
		Client: cpod, Target: clusterIP, Dialed: clusterIP, SocketLB: true, PodSrc: cpod, PodDst: netip.AddrPortFrom(podC, 8080)}
	p, _ := n.Name(&c)
	if p.Service == nil || p.Service.Key() != "default/web" || p.Entry != kube.EntryClusterIP || p.EntryNode != "node1" ||
		p.Pod == nil || p.Pod.Name != "web-abc-2" || !p.CrossNode || p.SNAT {
		t.Fatalf("path %+v: want web via clusterip entered on node1, pod web-abc-2 on node2, cross-node, no SNAT", p)
	}
	if has(p, DiagNATNotVisible) || p.NATNotVisible != "" {
		t.Errorf("socket-LB translation diagnosed invisible: %+v", p.Diagnoses)
	}
}

// The socket is connected to the ClusterIP itself and no conntrack entry
// translated it: the translation happened where lbpath cannot see it.
func TestNATNotVisibleServiceAddress(t *testing.T) {
	n := NewNamer(Config{Node: "node1"}, index("Cluster", true))
	c := flow.Connection{Node: "node1", Role: flow.RoleClient, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
		Client: cpod, Target: clusterIP, PodSrc: cpod, PodDst: clusterIP}
	p, _ := n.NameLate(&c)
	if !has(p, DiagNATNotVisible) || p.NATNotVisible != NATHiddenServiceAddress {
		t.Fatalf("diagnoses %+v reason %q: want %s / %s", p.Diagnoses, p.NATNotVisible, DiagNATNotVisible, NATHiddenServiceAddress)
	}
	if p.Entry == kube.EntryDirect || p.Service == nil {
		t.Errorf("entry %q service %v: must name the Service, never direct", p.Entry, p.Service)
	}
	if r := p.Record(); r.NATNotVisible != NATHiddenServiceAddress {
		t.Errorf("record nat_not_visible %q", r.NATNotVisible)
	}
	// The same connection with its conntrack translation: visible.
	c.NAT = &flow.NAT{DNAT: true}
	c.PodDst = netip.AddrPortFrom(podA, 8080)
	if p, _ := n.NameLate(&c); has(p, DiagNATNotVisible) {
		t.Errorf("conntrack-translated connection diagnosed invisible")
	}
	// A direct connection to a pod: no Service, no diagnosis.
	c = flow.Connection{Node: "node1", Role: flow.RoleClient, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
		Client: cpod, Target: netip.AddrPortFrom(podA, 8080), PodSrc: cpod, PodDst: netip.AddrPortFrom(podA, 8080)}
	if p, _ := n.NameLate(&c); has(p, DiagNATNotVisible) || p.Entry != kube.EntryDirect {
		t.Errorf("direct connection: entry %q diagnoses %+v", p.Entry, p.Diagnoses)
	}
}

// A client outside the cluster at a pod's own address, nothing translated
// on the pod's node (a TC NodePort with DSR delivered it): with the pod
// network declared isolated that proves a translation lbpath cannot see;
// without the declaration the entry is unknown, never direct. Either way
// the decision waits until the client is certainly no pod.
func TestNATNotVisibleExternalClient(t *testing.T) {
	srv := netip.AddrPortFrom(podA, 8080)
	for _, isolated := range []bool{true, false} {
		x, local, fresh := cluster(t)
		n := NewNamer(Config{Node: "node1", Local: local, Current: fresh.CurrentAt, IsolatedPodNetwork: isolated}, x)
		c := conn(flow.RoleServer, client, srv)
		if p, complete := n.Name(&c); complete {
			t.Fatalf("isolated=%v: decided before the metadata wait (entry %q): the client could still be a new pod", isolated, p.Entry)
		}
		p, complete := n.NameLate(&c)
		if !complete || p.Pod == nil || p.Pod.Name != "web-abc-1" || p.Service == nil || p.Service.Key() != "default/web" {
			t.Fatalf("isolated=%v: complete %v pod %v service %v", isolated, complete, p.Pod, p.Service)
		}
		if p.Entry == kube.EntryDirect || p.EntryNode != "" || p.CrossNode || p.SNAT {
			t.Errorf("isolated=%v: entry %q node %q cross %v snat %v: must not claim direct or an entry node", isolated, p.Entry, p.EntryNode, p.CrossNode, p.SNAT)
		}
		if isolated {
			if p.Entry != kube.EntryExternalNotVisible || p.NATNotVisible != NATHiddenExternalClient || !has(p, DiagNATNotVisible) {
				t.Errorf("isolated: entry %q reason %q diagnoses %+v", p.Entry, p.NATNotVisible, p.Diagnoses)
			}
			if r := p.Record(); r.Entry != "external_not_visible" || r.NATNotVisible != NATHiddenExternalClient {
				t.Errorf("record entry %q nat_not_visible %q", r.Entry, r.NATNotVisible)
			}
		} else if p.Entry != kube.EntryUnknown || p.NATNotVisible != "" || has(p, DiagNATNotVisible) {
			t.Errorf("not declared: entry %q reason %q diagnoses %+v: want unknown, unproven", p.Entry, p.NATNotVisible, p.Diagnoses)
		}
	}
}

// What stays direct with the pod network declared isolated: a client pod,
// a node, the API server; a SNATed connection keeps its inference; a
// conntrack-translated one is visible. And an index that was never
// current proves nothing: unknown, not nat_not_visible.
func TestNATNotVisibleExternalClientOnlyWhenProved(t *testing.T) {
	srv := netip.AddrPortFrom(podA, 8080)
	x, local, fresh := cluster(t)
	x.SetPod(&kube.Pod{Namespace: "default", Name: "cpod", UID: "c", Node: "node1", IP: cpod.Addr(), Ready: true}, t0)
	n := NewNamer(Config{Node: "node1", Local: local, Current: fresh.CurrentAt, IsolatedPodNetwork: true}, x)
	for name, cl := range map[string]netip.AddrPort{"pod": cpod, "own node": netip.AddrPortFrom(node1, 41000), "apiserver": apiEP} {
		c := conn(flow.RoleServer, cl, srv)
		p, _ := n.NameLate(&c)
		if p.Entry != kube.EntryDirect || p.NATNotVisible != "" {
			t.Errorf("%s client: entry %q reason %q, want direct", name, p.Entry, p.NATNotVisible)
		}
	}
	c := conn(flow.RoleServer, netip.AddrPortFrom(node2, 41000), srv)
	if p, _ := n.NameLate(&c); !p.SNAT || p.NATNotVisible != "" || p.EntryNode != "node2" {
		t.Errorf("SNATed by node2: snat %v reason %q entry node %q", p.SNAT, p.NATNotVisible, p.EntryNode)
	}
	c = conn(flow.RoleServer, client, srv)
	c.Target, c.NAT = netip.AddrPortFrom(node1, 30080), &flow.NAT{DNAT: true}
	if p, _ := n.NameLate(&c); p.Entry != kube.EntryNodePort || p.NATNotVisible != "" {
		t.Errorf("translated by this node's conntrack: entry %q reason %q", p.Entry, p.NATNotVisible)
	}
	stale := NewNamer(Config{Node: "node1", Local: local, IsolatedPodNetwork: true}, x)
	c = conn(flow.RoleServer, client, srv)
	if p, _ := stale.NameLate(&c); p.Entry != kube.EntryUnknown || p.NATNotVisible != "" {
		t.Errorf("index never current: entry %q reason %q, want unknown", p.Entry, p.NATNotVisible)
	}
}
