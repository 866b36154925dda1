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
