package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// TestServerSeesTunnelAddress: on an overlay the entry node's MASQUERADE
// picks its tunnel address, which is no InternalIP. The pod's node, which
// has no NAT record, must still see a SNATed connection that crossed from
// that node, for each CNI's way of publishing the address; and a pod
// that holds a derived address is a pod, not a node.
func TestServerSeesTunnelAddress(t *testing.T) {
	cases := []struct {
		name   string
		node2  kube.Node
		src    string
		source kube.NodeAddrSource
	}{
		{"flannel", kube.Node{Addresses: []kube.NodeAddress{{IP: netip.MustParseAddr("10.244.2.0"), Source: kube.NodeAddrFlannelTunnel}}},
			"10.244.2.0", kube.NodeAddrFlannelTunnel},
		{"calico", kube.Node{Addresses: []kube.NodeAddress{{IP: netip.MustParseAddr("10.244.2.250"), Source: kube.NodeAddrCalicoTunnel}}},
			"10.244.2.250", kube.NodeAddrCalicoTunnel},
		{"cilium", kube.Node{Addresses: []kube.NodeAddress{{IP: netip.MustParseAddr("10.244.2.251"), Source: kube.NodeAddrCiliumHost}}},
			"10.244.2.251", kube.NodeAddrCiliumHost},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := index("Cluster", true)
			n2 := tc.node2
			n2.Name, n2.InternalIP, n2.Zone = "node2", node2, "z2"
			x.SetNode(&n2, t0)
			n := NewNamer(Config{Node: "node1"}, x)
			src := netip.AddrPortFrom(netip.MustParseAddr(tc.src), 51000)
			c := flow.Connection{Node: "node1", Role: flow.RoleServer, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
				Client: src, Target: netip.AddrPortFrom(podA, 8080), PodSrc: src, PodDst: netip.AddrPortFrom(podA, 8080)}
			p, _ := n.Name(&c)
			if !p.Client.Lost || !p.SNAT || p.EntryNode != "node2" || !p.CrossNode || !has(p, DiagSNAT) || !has(p, DiagCrossNode) {
				t.Errorf("lost=%v snat=%v entry=%q cross=%v diagnoses %+v", p.Client.Lost, p.SNAT, p.EntryNode, p.CrossNode, p.Diagnoses)
			}
			r := p.Record()
			if r.ClientKind != string(PeerNode) || r.ClientName != "node2" || r.ClientNodeAddr != string(tc.source) {
				t.Errorf("record client %q %q via %q, want node node2 via %q", r.ClientKind, r.ClientName, r.ClientNodeAddr, tc.source)
			}
		})
	}
	t.Run("derived address held by a pod", func(t *testing.T) {
		x := index("Cluster", true)
		gw := netip.MustParseAddr("10.244.2.1")
		x.SetNode(&kube.Node{Name: "node2", InternalIP: node2, Addresses: []kube.NodeAddress{{IP: gw, Source: kube.NodeAddrPodCIDRGateway}}}, t0)
		x.SetPod(&kube.Pod{Namespace: "default", Name: "client", UID: "9", Node: "node2", IP: gw, Ready: true}, t0)
		n := NewNamer(Config{Node: "node1"}, x)
		src := netip.AddrPortFrom(gw, 51000)
		c := flow.Connection{Node: "node1", Role: flow.RoleServer, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
			Client: src, Target: netip.AddrPortFrom(podA, 8080), PodSrc: src, PodDst: netip.AddrPortFrom(podA, 8080)}
		p, _ := n.Name(&c)
		if p.SNAT || p.Client.Lost || p.Client.Kind != PeerPod || p.EntryNode != "" {
			t.Errorf("pod client taken for a node: snat=%v lost=%v kind=%s entry=%q", p.SNAT, p.Client.Lost, p.Client.Kind, p.EntryNode)
		}
	})
}
