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
// .10–.190 and the client pod's .200).
var tunnelHost = map[Overlay]byte{OverlayFlannel: 0, OverlayCalico: 250, OverlayCilium: 251}

type overlaySpec struct {
	dev  string
	vni  int
	port int
}

var overlaySpecs = map[Overlay]overlaySpec{
	OverlayFlannel: {"flannel.1", 1, 8472},
	OverlayCalico:  {"vxlan.calico", 4096, 4789},
	OverlayCilium:  {"cilium_vxlan", 2, 8472},
}

// lanMTU is the MTU of the node links in an overlay: room for the 50
// bytes of VXLAN headers, so the tunnel device and the pods keep 1500.
const lanMTU = 1600

func (o Overlay) valid() bool {
	if o == OverlayFlat {
		return true
	}
	_, ok := overlaySpecs[o]
	return ok
}

// Tunnel is a node's end of the overlay.
type Tunnel struct {
	// Dev is the VXLAN device (flannel.1, vxlan.calico, cilium_vxlan).
	Dev string
	// IP is the device's address: the source of traffic the node
	// masquerades towards other nodes' pods.
	IP netip.Addr
	// MAC is the device's address (flannel's VtepMAC).
	MAC net.HardwareAddr
}

// tunnelFor lays out node n's tunnel; the zero Tunnel on the flat network.
func tunnelFor(o Overlay, n *Node) Tunnel {
	spec, ok := overlaySpecs[o]
	if !ok {
		return Tunnel{}
	}
	b := n.PodCIDR.Addr().As4()
	b[3] = tunnelHost[o]
	// Locally administered, unicast, unique per node.
	mac := net.HardwareAddr{0x0e, 0x1b, 0x9a, 0x00, 0x00, byte(n.Index)}
	return Tunnel{Dev: spec.dev, IP: netip.AddrFrom4(b), MAC: mac}
}

// overlayNodeCmds are the `ip` lines that give node n its tunnel and route
// the other nodes' pod CIDRs through it (replacing the flat routes).
func (c *Cluster) overlayNodeCmds(n *Node) []string {
	spec := overlaySpecs[c.Opt.Overlay]
	t := n.Tunnel
	cmds := []string{
		fmt.Sprintf("link set eth0 mtu %d", lanMTU),
		fmt.Sprintf("link add %s type vxlan id %d local %s dev eth0 dstport %d nolearning", t.Dev, spec.vni, n.IP, spec.port),
		fmt.Sprintf("link set %s address %s mtu 1500", t.Dev, t.MAC),
		"addr add " + t.IP.String() + "/32 dev " + t.Dev,
		"link set " + t.Dev + " up",
	}
	for _, o := range c.Nodes {
		if o == n {
			continue
		}
		cmds = append(cmds,
			// The next hop is the other node's tunnel address, reached
			// on the device by its static neighbour entry (onlink: it
			// is in no subnet of ours), as flannel programs it.
			fmt.Sprintf("route add %s via %s dev %s onlink", o.PodCIDR, o.Tunnel.IP, t.Dev),
			fmt.Sprintf("neigh add %s lladdr %s dev %s nud permanent", o.Tunnel.IP, o.Tunnel.MAC, t.Dev))
	}
	return cmds
}

// overlayFDB points each other node's VTEP MAC at its LAN address.
func (c *Cluster) overlayFDB(ctx context.Context, n *Node) error {
	var lines []string
	for _, o := range c.Nodes {
		if o != n {
			lines = append(lines, fmt.Sprintf("fdb append %s dev %s dst %s", o.Tunnel.MAC, n.Tunnel.Dev, o.IP))
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
