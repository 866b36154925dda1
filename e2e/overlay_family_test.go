package e2e

import (
	"testing"

	"github.com/lbpath/lbpath/testbed"
)

// The overlays in IPv6-only and dual-stack clusters: one cluster per
// (family, overlay), kube-proxy mode and externalTrafficPolicy switched
// inside it, entries ClusterIP, NodePort on every node and LB via every
// node in every family of the cluster, every connection checked by
// checkOverlay (pod, Service, Deployment, ReplicaSet, entry and entry node,
// SNAT, cross-node, and for a cross-node SNAT the tunnel address of the
// connection's family the pod saw and the source the pod node's agent
// names the entry node by: flannel_tunnel, calico_tunnel, cilium_host).
//
// Cells (family × overlay × kube-proxy × policy), 16 of the 24 of the
// product; a kube-proxy switch costs ~25 s of CI, so Calico and Cilium run
// one mode per family, crossed, and every pair of axes is covered in full
// (each family × overlay, overlay × mode, family × mode, mode × policy):
//
//	TestOverlayIPv6/flannel       ipv6 × {iptables,nftables} × {Cluster,Local}
//	TestOverlayIPv6/calico        ipv6 × iptables × {Cluster,Local}
//	TestOverlayIPv6/cilium        ipv6 × nftables × {Cluster,Local}
//	TestOverlayDualStack/flannel  dual × {iptables,nftables} × {Cluster,Local}
//	TestOverlayDualStack/calico   dual × nftables × {Cluster,Local}
//	TestOverlayDualStack/cilium   dual × iptables × {Cluster,Local}
//
// Dual-stack cells check IPv4 and IPv6 connections alike. Not run: ipv6 ×
// {calico × nftables, cilium × iptables} and dual × {calico × iptables,
// cilium × nftables}.
type familyOverlay struct {
	ov     testbed.Overlay
	prefix string
	modes  []testbed.ProxyMode
}

var (
	iptablesOnly = []testbed.ProxyMode{testbed.ModeIPTables}
	nftablesOnly = []testbed.ProxyMode{testbed.ModeNFTables}
)

// TestOverlayIPv6: IPv6-only clusters on flannel (flannel-v6.1, the IPv6
// pod CIDR's network address, derived), Calico (vxlan-v6.calico,
// projectcalico.org/IPv6VXLANTunnelAddr) and Cilium (cilium_vxlan over the
// IPv6 underlay, network.cilium.io/ipv6-cilium-host).
func TestOverlayIPv6(t *testing.T) {
	familyOverlays(t, "lbo6", testbed.FamilyIPv6, []familyOverlay{
		{testbed.OverlayFlannel, "f", bothModes}, {testbed.OverlayCalico, "c", iptablesOnly},
		{testbed.OverlayCilium, "i", nftablesOnly}})
}

// TestOverlayDualStack: dual-stack clusters on every overlay, IPv4 and
// IPv6 connections alike: flannel's second device flannel-v6.1, Calico's
// vxlan-v6.calico, Cilium's one cilium_vxlan (IPv4 underlay) with both
// router IPs.
func TestOverlayDualStack(t *testing.T) {
	familyOverlays(t, "lbod", testbed.FamilyDual, []familyOverlay{
		{testbed.OverlayFlannel, "f", bothModes}, {testbed.OverlayCalico, "c", nftablesOnly},
		{testbed.OverlayCilium, "i", iptablesOnly}})
}

// familyOverlays runs overlayMatrix for each overlay, one cluster each.
func familyOverlays(t *testing.T, prefix string, fam testbed.Family, ovs []familyOverlay) {
	for _, o := range ovs {
		t.Run(string(o.ov), func(t *testing.T) { overlayMatrix(t, prefix+o.prefix, fam, o.ov, o.modes) })
	}
}
