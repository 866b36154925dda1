package kube

import (
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// NodeAddrSource says how the agent learnt that an address is a node's. It
// is the record's client_node_address_source and the attribute
// lbpath.client.node_address_source (docs/TELEMETRY.md).
//
// A node sends from more addresses than its InternalIP: on an overlay,
// kube-proxy's MASQUERADE towards a pod on another node picks the tunnel
// device's address (flannel.1, vxlan.calico, cilium_host), and towards a
// pod on a bridge CNI's node the bridge's address. Those connections reach
// the pod from an address that is no InternalIP; without them the pod's
// node would take a SNATed, cross-node connection for a direct one.
type NodeAddrSource string

// Node address sources. Exact ones are published by the kubelet or the CNI
// itself; the derived ones (podcidr_gateway, flannel_tunnel) follow a CNI's
// convention and yield to a pod that holds the address (Index.NodeAt).
const (
	// NodeAddrInternalIP and NodeAddrExternalIP are status.addresses.
	NodeAddrInternalIP NodeAddrSource = "internal_ip"
	NodeAddrExternalIP NodeAddrSource = "external_ip"
	// NodeAddrFlannelPublicIP is flannel.alpha.coreos.com/public-ip (and
	// public-ipv6): the address flannel's tunnel runs over.
	NodeAddrFlannelPublicIP NodeAddrSource = "flannel_public_ip"
	// NodeAddrFlannelTunnel is the network address (.0) of each of the
	// node's podCIDRs when flannel.alpha.coreos.com/backend-type names a
	// tunnel backend (vxlan, ipip, wireguard, udp): flannel gives its
	// device (flannel.1) that address as a /32 and annotates no tunnel
	// address. Derived.
	NodeAddrFlannelTunnel NodeAddrSource = "flannel_tunnel"
	// NodeAddrCalico is projectcalico.org/IPv4Address and IPv6Address
	// (the address Calico's BGP and tunnels use; prefix length dropped).
	NodeAddrCalico NodeAddrSource = "calico_address"
	// NodeAddrCalicoTunnel is projectcalico.org/IPv4VXLANTunnelAddr,
	// IPv6VXLANTunnelAddr, IPv4IPIPTunnelAddr, IPv4WireguardInterfaceAddr
	// or IPv6WireguardInterfaceAddr: the address of vxlan.calico, tunl0
	// or wireguard.cali.
	NodeAddrCalicoTunnel NodeAddrSource = "calico_tunnel"
	// NodeAddrCiliumHost is network.cilium.io/ipv4-cilium-host or
	// ipv6-cilium-host (older releases: io.cilium.network.*): the router
	// address on cilium_host, the source of what the node sends to pods.
	NodeAddrCiliumHost NodeAddrSource = "cilium_host"
	// NodeAddrPodCIDRGateway is the first address (.1) of each of the
	// node's podCIDRs: bridge CNIs (flannel's cni0, kubenet's cbr0, the
	// bridge plugin with host-local IPAM) give it to the bridge, so a
	// connection the node masquerades to one of its own pods comes from
	// it. On CNIs whose pods may hold it (Calico IPAM with host-local
	// ranges, Cilium) a pod holding it wins. Derived.
	NodeAddrPodCIDRGateway NodeAddrSource = "podcidr_gateway"
)

// derived reports whether the source is a convention rather than a
// statement: such an address is a node's only while no pod holds it.
func (s NodeAddrSource) derived() bool {
	return s == NodeAddrFlannelTunnel || s == NodeAddrPodCIDRGateway
}

// NodeAddress is one address of a node and where it was learnt.
type NodeAddress struct {
	IP     netip.Addr
	Source NodeAddrSource
}

// Node annotations that carry node addresses, by source. Checked against
// the CNIs' sources: flannel pkg/subnet/kube, Calico libcalico-go's
// k8s node conversion, Cilium pkg/annotation (NetworkPrefix and the old
// io.cilium prefix).
var nodeAddrAnnotations = map[string]NodeAddrSource{
	"flannel.alpha.coreos.com/public-ip":           NodeAddrFlannelPublicIP,
	"flannel.alpha.coreos.com/public-ipv6":         NodeAddrFlannelPublicIP,
	"projectcalico.org/IPv4Address":                NodeAddrCalico,
	"projectcalico.org/IPv6Address":                NodeAddrCalico,
	"projectcalico.org/IPv4VXLANTunnelAddr":        NodeAddrCalicoTunnel,
	"projectcalico.org/IPv6VXLANTunnelAddr":        NodeAddrCalicoTunnel,
	"projectcalico.org/IPv4IPIPTunnelAddr":         NodeAddrCalicoTunnel,
	"projectcalico.org/IPv4WireguardInterfaceAddr": NodeAddrCalicoTunnel,
	"projectcalico.org/IPv6WireguardInterfaceAddr": NodeAddrCalicoTunnel,
	"network.cilium.io/ipv4-cilium-host":           NodeAddrCiliumHost,
	"network.cilium.io/ipv6-cilium-host":           NodeAddrCiliumHost,
	"io.cilium.network.ipv4-cilium-host":           NodeAddrCiliumHost,
	"io.cilium.network.ipv6-cilium-host":           NodeAddrCiliumHost,
}

// FlannelBackendType is the annotation naming flannel's backend.
const FlannelBackendType = "flannel.alpha.coreos.com/backend-type"

// flannelTunnels are the flannel backends whose device holds the pod
// CIDR's network address.
var flannelTunnels = map[string]bool{"vxlan": true, "ipip": true, "wireguard": true, "udp": true}

// keptNodeAnnotations are what strip keeps of a Node's annotations.
func keptNodeAnnotations(in map[string]string) map[string]string {
	var out map[string]string
	for k, v := range in {
		if _, ok := nodeAddrAnnotations[k]; ok || k == FlannelBackendType {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// NodeAddresses is every address the agent takes for node v's, each with
// its source, in a stable order without repeats (the first source wins).
func NodeAddresses(v *corev1.Node) []NodeAddress {
	var out []NodeAddress
	add := func(ip netip.Addr, src NodeAddrSource) {
		if !ip.IsValid() || ip.IsUnspecified() || ip.IsLoopback() {
			return
		}
		if slices.ContainsFunc(out, func(a NodeAddress) bool { return a.IP == ip }) {
			return
		}
		out = append(out, NodeAddress{IP: ip, Source: src})
	}
	for _, a := range v.Status.Addresses {
		switch a.Type {
		case corev1.NodeInternalIP:
			add(parseIP(a.Address), NodeAddrInternalIP)
		case corev1.NodeExternalIP:
			add(parseIP(a.Address), NodeAddrExternalIP)
		}
	}
	for _, k := range slices.Sorted(mapKeys(nodeAddrAnnotations)) {
		if val, ok := v.Annotations[k]; ok {
			add(annotatedIP(val), nodeAddrAnnotations[k])
		}
	}
	cidrs, _ := parsePodCIDRs(v.Name, v.Spec.PodCIDRs, v.Spec.PodCIDR)
	if flannelTunnels[v.Annotations[FlannelBackendType]] {
		for _, p := range cidrs {
			add(p.Addr(), NodeAddrFlannelTunnel)
		}
	}
	for _, p := range cidrs {
		if gw := p.Addr().Next(); p.Contains(gw) && p.Bits() < p.Addr().BitLen() {
			add(gw, NodeAddrPodCIDRGateway)
		}
	}
	return out
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// annotatedIP reads an address that may carry a prefix length (Calico
// writes "192.168.0.63/24").
func annotatedIP(s string) netip.Addr {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap()
	}
	return parseIP(s)
}

// addrSource is the source by which n holds ip ("" if it does not).
func (n *Node) addrSource(ip netip.Addr) NodeAddrSource {
	for _, a := range n.Addresses {
		if a.IP == ip {
			return a.Source
		}
	}
	if n.InternalIP == ip {
		return NodeAddrInternalIP
	}
	return ""
}

// nodeAddrSet is every address the index keys n under.
func nodeAddrSet(n *Node) map[netip.Addr]bool {
	set := map[netip.Addr]bool{}
	if n == nil {
		return set
	}
	if n.InternalIP.IsValid() {
		set[n.InternalIP] = true
	}
	for _, a := range n.Addresses {
		set[a.IP] = true
	}
	return set
}

// openNodeAddrs indexes every address of n beyond its InternalIP (which
// SetNode indexes itself).
func (x *Index) openNodeAddrs(n *Node, now time.Time) {
	for _, a := range n.Addresses {
		if a.IP != n.InternalIP {
			openSpan(x.nodeByIP, a.IP, n, now, sameNode, x.cfg, &x.Stats)
		}
	}
}

// closeNodeAddrs ends the spans of old's addresses that n (nil when the
// node is gone) no longer has.
func (x *Index) closeNodeAddrs(old, n *Node, now time.Time) {
	keep := nodeAddrSet(n)
	for a := range nodeAddrSet(old) {
		if !keep[a] {
			closeSpan(x.nodeByIP, a, old, now, sameNode, x.cfg, &x.Stats)
		}
	}
}

// nodeAtLocked is the node holding ip at t. An address derived from a
// CNI convention yields to a pod holding it at t. Callers hold x.mu.
func (x *Index) nodeAtLocked(ip netip.Addr, t time.Time) (*Node, NodeAddrSource, bool) {
	n, ok := x.nodeByIP[ip].at(t, x.cfg.Slack)
	if !ok {
		return nil, "", false
	}
	src := n.addrSource(ip)
	if src == "" {
		// A past owner's address the current view no longer lists.
		src = NodeAddrInternalIP
		if old := x.nodes[n.Name]; old != nil {
			if s := old.addrSource(ip); s != "" {
				src = s
			}
		}
	}
	if src.derived() {
		if _, isPod := x.podByIP[ip].at(t, x.cfg.Slack); isPod {
			return nil, "", false
		}
	}
	return n, src, true
}

// NodeAddrAt returns the node that held ip at t and how the agent knows
// the address is that node's.
func (x *Index) NodeAddrAt(ip netip.Addr, t time.Time) (*Node, NodeAddrSource, bool) {
	x.mu.RLock()
	n, src, ok := x.nodeAtLocked(ip, t)
	x.mu.RUnlock()
	x.miss(ok)
	return n, src, ok
}
