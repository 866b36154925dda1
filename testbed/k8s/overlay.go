package k8s

import (
	"fmt"
	"net/netip"

	"github.com/lbpath/lbpath/testbed"
)

// OverlayAnnotations are the Node annotations the overlay's CNI writes for
// node n (nil on the flat network), with the values it would write for
// each IP family the node has (names checked against the CNIs' sources:
// flannel pkg/subnet/kube and pkg/backend/vxlan, libcalico-go's node
// conversion, Cilium pkg/annotation):
//   - flannel (kube subnet manager, VXLAN backend): backend-type and
//     kube-subnet-manager; for IPv4 backend-data (VNI, flannel.1's VtepMAC)
//     and public-ip, for IPv6 backend-v6-data (VNI, flannel-v6.1's VtepMAC)
//     and public-ipv6. No tunnel address: flannel.1 and flannel-v6.1 hold
//     the network address of the pod CIDR of their family;
//   - Calico (VXLAN): IPv4Address / IPv6Address with the prefix length,
//     IPv4VXLANTunnelAddr / IPv6VXLANTunnelAddr (vxlan.calico's and
//     vxlan-v6.calico's address) and VXLANTunnelMACAddr / ...MACAddrV6;
//   - Cilium: network.cilium.io/ipv4-cilium-host / ipv6-cilium-host (the
//     router IPs) and ipv4-pod-cidr / ipv6-pod-cidr, plus the
//     io.cilium.network.* aliases older releases write.
func OverlayAnnotations(o testbed.Overlay, n *testbed.Node) map[string]string {
	if o == testbed.OverlayFlat {
		return nil
	}
	out := map[string]string{}
	if o == testbed.OverlayFlannel {
		out["flannel.alpha.coreos.com/backend-type"] = "vxlan"
		out["flannel.alpha.coreos.com/kube-subnet-manager"] = "true"
	}
	for _, t := range n.Tunnels {
		for k, v := range familyAnnotations(o, n, t) {
			out[k] = v
		}
	}
	return out
}

// familyAnnotations are the annotations of one family's tunnel t.
func familyAnnotations(o testbed.Overlay, n *testbed.Node, t testbed.Tunnel) map[string]string {
	v, lan := "4", netip.PrefixFrom(n.IPIn(t.IP), testbed.LANPrefix.Bits())
	if t.IP.Is6() {
		v, lan = "6", netip.PrefixFrom(n.IPIn(t.IP), testbed.LANPrefix6.Bits())
	}
	cidr := ""
	for _, p := range n.PodCIDRs {
		if p.Addr().Is4() == t.IP.Is4() {
			cidr = p.String()
		}
	}
	switch o {
	case testbed.OverlayFlannel:
		data, pub := "flannel.alpha.coreos.com/backend-data", "flannel.alpha.coreos.com/public-ip"
		if t.IP.Is6() {
			data, pub = "flannel.alpha.coreos.com/backend-v6-data", "flannel.alpha.coreos.com/public-ipv6"
		}
		return map[string]string{data: fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, t.MAC.String()), pub: t.Underlay.String()}
	case testbed.OverlayCalico:
		mac := "projectcalico.org/VXLANTunnelMACAddr"
		if t.IP.Is6() {
			mac += "V6"
		}
		return map[string]string{
			"projectcalico.org/IPv" + v + "Address":         lan.String(),
			"projectcalico.org/IPv" + v + "VXLANTunnelAddr": t.IP.String(),
			mac: t.MAC.String(),
		}
	case testbed.OverlayCilium:
		return map[string]string{
			"network.cilium.io/ipv" + v + "-cilium-host": t.IP.String(),
			"network.cilium.io/ipv" + v + "-pod-cidr":    cidr,
			"io.cilium.network.ipv" + v + "-cilium-host": t.IP.String(),
			"io.cilium.network.ipv" + v + "-pod-cidr":    cidr,
		}
	}
	return nil
}
