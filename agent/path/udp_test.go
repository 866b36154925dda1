package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/conntrack"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// TestUDPFlowNamedByUDPPorts: a UDP Service (dns, UDP 53 → 8053, NodePort
// 30053) over web's pods, beside web's TCP ports. A UDP flow entering by
// the NodePort on node2 and served by a pod on node1 is named on both
// nodes like a TCP connection (Service, entry nodeport, entry node, SNAT,
// cross-node, pod); a TCP connection to the same numbers is not the UDP
// Service's.
func TestUDPFlowNamedByUDPPorts(t *testing.T) {
	x := index("Cluster", true)
	x.SetService(&kube.Service{Namespace: "default", Name: "dns", Type: "NodePort", ExternalTrafficPolicy: "Cluster",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.53")},
		Ports:      []kube.ServicePort{{Port: 53, NodePort: 30053, TargetPort: 8053, Protocol: kube.ProtocolUDP}}}, t0)
	x.SetEndpointSlicePorts("default/dns-1", "default/dns", []kube.SlicePort{{Port: 8053, Protocol: kube.ProtocolUDP}},
		[]kube.Endpoint{{IP: podA, Node: "node1", Ready: true, PodName: "web-abc-1"}}, t0)
	np := netip.AddrPortFrom(node2, 30053)
	snatSrc := netip.AddrPortFrom(node2, 41000)
	pod := netip.AddrPortFrom(podA, 8053)
	nat := &flow.NAT{Original: conntrack.Tuple{Src: client, Dst: np}, DNAT: true, SNAT: true}
	at := t0.Add(time.Minute)
	fwd := flow.Connection{Node: "node2", Role: flow.RoleForward, Outcome: flow.OutcomeForwarded, Start: at, Transport: flow.TransportUDP,
		Client: client, Target: np, PodSrc: snatSrc, PodDst: pod, SNAT: true, NAT: nat}
	p, complete := NewNamer(Config{Node: "node2"}, x).Name(&fwd)
	if !complete || p.Service == nil || p.Service.Name != "dns" || p.Entry != kube.EntryNodePort || p.EntryNode != "node2" ||
		!p.SNAT || !p.CrossNode || p.Pod == nil || p.Pod.Name != "web-abc-1" || p.PodNode != "node1" {
		t.Errorf("forward record: complete %v service %v entry %q on %q snat %v cross %v pod %v on %q",
			complete, p.Service, p.Entry, p.EntryNode, p.SNAT, p.CrossNode, p.Pod, p.PodNode)
	}
	srv := flow.Connection{Node: "node1", Role: flow.RoleServer, Outcome: flow.OutcomeOK, Start: at, Transport: flow.TransportUDP,
		Client: snatSrc, Target: pod, PodSrc: snatSrc, PodDst: pod}
	p, _ = NewNamer(Config{Node: "node1"}, x).Name(&srv)
	if r := p.Record(); r.Service != "default/dns" || r.Pod != "default/web-abc-1" || r.Deployment != "web" ||
		!r.ClientLost || r.EntryNode != "node2" || !r.CrossNode || r.Proto() != flow.TransportUDP {
		t.Errorf("server record: %+v", r)
	}
	// The same numbers over TCP: no such Service port.
	tcp := fwd
	tcp.Transport = ""
	if p, _ := NewNamer(Config{Node: "node2"}, x).Name(&tcp); p.Service != nil {
		t.Errorf("TCP to the UDP NodePort named Service %s", p.Service.Key())
	}
}
