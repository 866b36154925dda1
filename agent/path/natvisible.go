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
	// NATHiddenExternalClient: a pod accepted a connection at its own
	// address from a client certainly outside the cluster (no pod, no
	// node, no API server), this node translated nothing, and the
	// cluster declares pod addresses unreachable from outside
	// (Config.IsolatedPodNetwork): the packets' destination was
	// rewritten to the pod before they reached this node, where lbpath
	// does not look — a TC/XDP eBPF NodePort or load balancer (Cilium's
	// kube-proxy replacement, DSR). Which entry and which node are not
	// known.
	NATHiddenExternalClient = "external_client_untranslated_here"
)

// NATNotVisibleReasons lists every reason.
var NATNotVisibleReasons = [...]string{NATHiddenServiceAddress, NATHiddenExternalClient}

// externalEntry decides the entry of a pod's server record that would
// read "direct" although its client is outside the cluster. The facts, all
// required: this node's record of the accepting socket, no conntrack
// translation here and no connect() rewrite; the local address is a
// pod's own (not a host port on the node's address); the pod was named;
// no SNAT inferred; and the client is certainly outside the cluster —
// endOf says endExternal (no object owned the address while the index was
// current, after the full metadata wait) or endEndpoint (a Service
// endpoint that is no pod). Then the entry is external_not_visible with
// reason external_client_untranslated_here if the pod network is declared
// isolated, else unknown: a client outside may dial a routable pod address
// directly, or a load balancer lbpath cannot see (TC/XDP, or a cloud load
// balancer with IP targets) translated it; no fact here tells them apart.
// A client that may still be a pod keeps the record waiting (false); once
// late, it stays unknown. Pods, nodes and the API server as clients stay
// direct: pods and nodes reach pod addresses untranslated by the
// Kubernetes network model.
func (n *Namer) externalEntry(p *Path, late bool) (decided bool) {
	c := &p.Conn
	if c.Role != flow.RoleServer || c.NAT != nil || c.SocketLB || p.Pod == nil || p.Entry != kube.EntryDirect || p.SNAT {
		return true
	}
	if _, ok := n.idx.PodAt(c.PodDst.Addr(), c.Start); !ok {
		return true
	}
	switch n.endOf(c.Client, c.Start, false, late) {
	case endExternal, endEndpoint:
		if n.cfg.IsolatedPodNetwork {
			p.Entry, p.NATNotVisible = kube.EntryExternalNotVisible, NATHiddenExternalClient
		} else {
			p.Entry = kube.EntryUnknown
		}
	case endUnknown:
		if !late {
			return false
		}
		p.Entry = kube.EntryUnknown
	}
	return true
}

// natNotVisible adds the diagnosis where the proof holds: a client socket
// connected to a ClusterIP itself, or (decided by externalEntry) a pod
// reached at its own address from outside an isolated pod network. A
// server socket whose peer is another node's address may be a hostNetwork
// client there as well as invisible SNAT and proves nothing
// (docs/ARCHITECTURE.md, "Socket-LB and eBPF datapaths").
func (n *Namer) natNotVisible(p *Path, add func(code, format string, args ...any)) {
	c := &p.Conn
	if p.NATNotVisible == NATHiddenExternalClient {
		svc := "a Service"
		if p.Service != nil {
			svc = p.Service.Key()
		}
		add(DiagNATNotVisible, "%v is outside the cluster and reached pod %s/%s at its own address %v with no translation on this node; pod addresses are not reachable from outside (--isolated-pod-network), so %s was translated before this node, where lbpath cannot see (TC/XDP eBPF NodePort or load balancer, DSR): entry and entry node unknown (reason %s)",
			c.Client.Addr(), p.Pod.Namespace, p.Pod.Name, c.PodDst, svc, NATHiddenExternalClient)
		return
	}
	if c.Role != flow.RoleClient || c.NAT != nil || c.SocketLB || p.Service == nil ||
		p.Entry != kube.EntryClusterIP || c.Target != c.PodDst {
		return
	}
	add(DiagNATNotVisible, "%v is %s's ClusterIP and the socket is connected to it, but this node's conntrack has no translation: the Service was translated outside netfilter (TC/XDP eBPF load balancer, IPVS without conntrack); the pod is not visible from here (reason %s)",
		c.Target, p.Service.Key(), NATHiddenServiceAddress)
	p.NATNotVisible = NATHiddenServiceAddress
}
