package path

import (
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// DiagNATNotVisible: lbpath can prove that a Service was translated on the
// way, but neither conntrack nor the connect() capture of this node saw
// the translation, so the pod behind it is not known from this view. The
// path never reads "direct" then. The reason says what the proof is.
const DiagNATNotVisible = "nat_not_visible"

// Reasons of nat_not_visible (label lbpath.nat_not_visible.reason).
const (
	// NATHiddenServiceAddress: a client socket on this node is connected
	// to a Service's ClusterIP itself (its peer is the VIP, so no
	// connect()-time rewrite happened) and this node's conntrack has no
	// translation for it. A ClusterIP is no socket's address: something
	// translated the packets outside netfilter — a TC/XDP BPF load
	// balancer (Cilium or GKE Dataplane V2 without socket-LB), IPVS
	// without conntrack, or a node the service CIDR is routed to.
	NATHiddenServiceAddress = "service_address_untranslated_here"
)

// NATNotVisibleReasons lists every reason.
var NATNotVisibleReasons = [...]string{NATHiddenServiceAddress}

// natNotVisible adds the diagnosis where the proof holds. Only the client
// side can prove it from one node: a server socket whose peer is another
// node's address may be a hostNetwork client there as well as invisible
// SNAT (docs/ARCHITECTURE.md, "Socket-LB and eBPF datapaths").
func (n *Namer) natNotVisible(p *Path, add func(code, format string, args ...any)) {
	c := &p.Conn
	if c.Role != flow.RoleClient || c.NAT != nil || c.SocketLB || p.Service == nil ||
		p.Entry != kube.EntryClusterIP || c.Target != c.PodDst {
		return
	}
	add(DiagNATNotVisible, "%v is %s's ClusterIP and the socket is connected to it, but this node's conntrack has no translation: the Service was translated outside netfilter (TC/XDP eBPF load balancer, IPVS without conntrack); the pod is not visible from here (reason %s)",
		c.Target, p.Service.Key(), NATHiddenServiceAddress)
	p.NATNotVisible = NATHiddenServiceAddress
}
