package testbed

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
)

// Overlay selects how a node reaches the pods of other nodes. The zero
// value is the flat network: a route per node's pod CIDR via that node's
// LAN address, so traffic between nodes keeps the node addresses (what
// Calico in BGP mode or flannel host-gw do).
//
// The VXLAN overlays put a VXLAN device on every node whose own address is
// the node's tunnel address, and route every other node's pod CIDR through
// it, as the named CNI does. kube-proxy's MASQUERADE picks the address of
// the device a packet leaves by, so a connection SNATed on its way to a pod
// on another node reaches that pod from the entry node's tunnel address —
// not from an InternalIP. That is the case the agent must still recognise
// as a node (agent/kube's node addresses).
type Overlay string

// Overlays.
const (
	OverlayFlat Overlay = ""
	// OverlayFlannel is flannel's VXLAN backend: device flannel.1 (VNI 1,
	// UDP 8472) with the network address (.0) of the node's pod CIDR as a
	// /32. flannel annotates no tunnel address; the Node carries
	// flannel.alpha.coreos.com/backend-type vxlan, backend-data (VNI,
	// VtepMAC) and public-ip, and the agent derives the .0 address.
	OverlayFlannel Overlay = "flannel"
	// OverlayCalico is Calico's VXLAN mode: device vxlan.calico (VNI 4096,
	// UDP 4789) with an address Calico IPAM allocates from the pod pool;
	// the Node carries projectcalico.org/IPv4VXLANTunnelAddr and
	// projectcalico.org/IPv4Address.
	OverlayCalico Overlay = "calico"
	// OverlayCilium is Cilium's tunnel mode as far as the source address
	// goes: Cilium's router IP (cilium_host's address, from the node's pod
	// CIDR) is the source of traffic the node sends to other nodes' pods,
	// annotated as network.cilium.io/ipv4-cilium-host. Here the address sits
	// on the VXLAN device itself (cilium_vxlan) rather than on a separate
	// cilium_host device with `src` routes: same source address, no BPF.
	OverlayCilium Overlay = "cilium"
)

// tunnelHost is the last byte of the tunnel address in a node's /24 pod
// CIDR for the CNIs whose IPAM picks it (outside the testbed's pod IPs
// .10–.190 and the client pod's .200). The IPv6 tunnel address is its twin
// (To6) in the node's IPv6 pod CIDR: for flannel fd00:10:244:<i>::, the
// network address of that /64, as flannel gives flannel-v6.1.
var tunnelHost = map[Overlay]byte{OverlayFlannel: 0, OverlayCalico: 250, OverlayCilium: 251}

type overlaySpec struct {
	dev  string
	dev6 string // the IPv6 device; == dev when one device carries both families
	vni  int
	port int
}

// overlaySpecs name the devices as the CNIs do (checked against their
// sources): flannel's vxlan backend creates flannel.<VNI> for IPv4 and
// flannel-v6.<VNI> for IPv6, same VNI and port, each over the underlay of
// its family; Calico's Felix vxlan.calico and vxlan-v6.calico (same VNI and
// port, IPv6 over the node's IPv6 address); Cilium one cilium_vxlan for both
// families, here over IPv4 when the cluster has IPv4 and IPv6 otherwise
// (what its underlay-protocol "auto" picks).
var overlaySpecs = map[Overlay]overlaySpec{
	OverlayFlannel: {"flannel.1", "flannel-v6.1", 1, 8472},
	OverlayCalico:  {"vxlan.calico", "vxlan-v6.calico", 4096, 4789},
	OverlayCilium:  {"cilium_vxlan", "cilium_vxlan", 2, 8472},
}

// lanMTU is the MTU of the node links in an overlay: room for the 50
// bytes of VXLAN headers over IPv4 (70 over IPv6), so the tunnel devices
// and the pods keep 1500.
const lanMTU = 1600

func (o Overlay) valid() bool {
	if o == OverlayFlat {
		return true
	}
	_, ok := overlaySpecs[o]
	return ok
}

// Tunnel is a node's end of the overlay in one IP family.
type Tunnel struct {
	// Dev is the VXLAN device (flannel.1, flannel-v6.1, vxlan.calico,
	// vxlan-v6.calico, cilium_vxlan).
	Dev string
	// IP is the device's address in this family: the source of traffic
	// the node masquerades towards other nodes' pods of this family.
	IP netip.Addr
	// MAC is the device's address (flannel's VtepMAC).
	MAC net.HardwareAddr
	// Underlay is the node's LAN address the device's VXLAN packets run
	// over (flannel's public-ip or public-ipv6).
	Underlay netip.Addr
}

// tunnelsFor lays out node n's tunnels, one per family of the cluster,
// primary first; nil on the flat network. n's IPs and PodCIDRs are set.
func tunnelsFor(o Overlay, n *Node) []Tunnel {
	spec, ok := overlaySpecs[o]
	if !ok {
		return nil
	}
	v4 := podCIDR4(n.Index).Addr().As4()
	v4[3] = tunnelHost[o]
	var out []Tunnel
	for _, p := range n.PodCIDRs {
		// Locally administered, unicast, unique per node and device.
		mac := net.HardwareAddr{0x0e, 0x1b, 0x9a, 0x00, 0x00, byte(n.Index)}
		t := Tunnel{Dev: spec.dev, IP: netip.AddrFrom4(v4), MAC: mac, Underlay: n.IPIn(p.Addr())}
		if p.Addr().Is6() {
			t.IP = To6(t.IP)
			t.Dev = spec.dev6
			if spec.dev6 == spec.dev {
				// One device for both families runs over the
				// primary family's underlay.
				t.Underlay = n.IPs[0]
			} else {
				mac[4] = 0x06
			}
		}
		out = append(out, t)
	}
	return out
}

// TunnelIn is the node's tunnel in the family of a (the zero Tunnel when
// the node has none in it).
func (n *Node) TunnelIn(a netip.Addr) Tunnel {
	for _, t := range n.Tunnels {
		if t.IP.Is4() == a.Is4() {
			return t
		}
	}
	return Tunnel{}
}

// tunnelDevs are n's distinct tunnel devices, each with its first tunnel.
func tunnelDevs(n *Node) []Tunnel {
	var out []Tunnel
	seen := map[string]bool{}
	for _, t := range n.Tunnels {
		if !seen[t.Dev] {
			seen[t.Dev] = true
			out = append(out, t)
		}
	}
	return out
}

// overlayNodeCmds are the `ip` lines that give node n its tunnels and
// route the other nodes' pod CIDRs of each family through them (replacing
// the flat routes).
func (c *Cluster) overlayNodeCmds(n *Node) []string {
	spec := overlaySpecs[c.Opt.Overlay]
	cmds := []string{fmt.Sprintf("link set eth0 mtu %d", lanMTU)}
	for _, t := range tunnelDevs(n) {
		cmds = append(cmds,
			fmt.Sprintf("link add %s type vxlan id %d local %s dev eth0 dstport %d nolearning", t.Dev, spec.vni, t.Underlay, spec.port),
			fmt.Sprintf("link set %s address %s mtu 1500", t.Dev, t.MAC),
			"link set "+t.Dev+" up")
	}
	for _, t := range n.Tunnels {
		add := "addr add " + hostBits(t.IP) + " dev " + t.Dev
		if t.IP.Is6() {
			add += " nodad"
		}
		cmds = append(cmds, add)
		for _, o := range c.Nodes {
			if o == n {
				continue
			}
			ot := o.TunnelIn(t.IP)
			cmds = append(cmds,
				// The next hop is the other node's tunnel address,
				// reached on the device by its static neighbour
				// entry (onlink: it is in no subnet of ours), as
				// flannel programs it.
				fmt.Sprintf("route add %s via %s dev %s onlink", pickPrefix(o.PodCIDRs, t.IP), ot.IP, t.Dev),
				fmt.Sprintf("neigh add %s lladdr %s dev %s nud permanent", ot.IP, ot.MAC, t.Dev))
		}
	}
	return cmds
}

// overlayFDB points each other node's VTEP MACs at its underlay addresses.
func (c *Cluster) overlayFDB(ctx context.Context, n *Node) error {
	var lines []string
	for _, t := range tunnelDevs(n) {
		for _, o := range c.Nodes {
			if o == n {
				continue
			}
			for _, ot := range tunnelDevs(o) {
				if ot.Dev == t.Dev {
					lines = append(lines, fmt.Sprintf("fdb append %s dev %s dst %s", ot.MAC, t.Dev, ot.Underlay))
				}
			}
		}
	}
	if len(lines) == 0 {
		return nil
	}
	if err := run(ctx, "", strings.Join(lines, "\n")+"\n", "bridge", "-n", filepath.Base(n.Netns), "-batch", "-"); err != nil {
		return fmt.Errorf("overlay FDB of %s: %w", n.Name, err)
	}
	return nil
}

// lanOverlayCmds raise the LAN side of the node links to lanMTU.
func (c *Cluster) lanOverlayCmds() []string {
	var cmds []string
	for _, n := range c.Nodes {
		cmds = append(cmds, fmt.Sprintf("link set veth-n%d mtu %d", n.Index, lanMTU))
	}
	return cmds
}
