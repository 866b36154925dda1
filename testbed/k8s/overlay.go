package k8s

import (
	"fmt"

	"github.com/lbpath/lbpath/testbed"
)

// OverlayAnnotations are the Node annotations the overlay's CNI writes for
// node n (nil on the flat network), with the values it would write:
//   - flannel (kube subnet manager, VXLAN backend): backend-type, backend-data
//     with VNI and VtepMAC, kube-subnet-manager and public-ip. No tunnel
//     address: flannel.1 holds the pod CIDR's network address;
//   - Calico (VXLAN): IPv4Address with the prefix length and
//     IPv4VXLANTunnelAddr, the address of vxlan.calico;
//   - Cilium: network.cilium.io/ipv4-cilium-host (the router IP) and
//     ipv4-pod-cidr, plus the io.cilium.network.* aliases older releases
//     write.
func OverlayAnnotations(o testbed.Overlay, n *testbed.Node) map[string]string {
	lanBits := testbed.LANPrefix.Bits()
	switch o {
	case testbed.OverlayFlannel:
		return map[string]string{
			"flannel.alpha.coreos.com/backend-type":        "vxlan",
			"flannel.alpha.coreos.com/backend-data":        fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, n.Tunnel.MAC),
			"flannel.alpha.coreos.com/kube-subnet-manager": "true",
			"flannel.alpha.coreos.com/public-ip":           n.IP.String(),
		}
	case testbed.OverlayCalico:
		return map[string]string{
			"projectcalico.org/IPv4Address":         fmt.Sprintf("%s/%d", n.IP, lanBits),
			"projectcalico.org/IPv4VXLANTunnelAddr": n.Tunnel.IP.String(),
		}
	case testbed.OverlayCilium:
		return map[string]string{
			"network.cilium.io/ipv4-cilium-host": n.Tunnel.IP.String(),
			"network.cilium.io/ipv4-pod-cidr":    n.PodCIDR.String(),
			"io.cilium.network.ipv4-cilium-host": n.Tunnel.IP.String(),
			"io.cilium.network.ipv4-pod-cidr":    n.PodCIDR.String(),
		}
	}
	return nil
}
