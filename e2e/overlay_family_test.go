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
// Cells (family × overlay × kube-proxy × policy): all 24 of the product.
//
//	TestOverlayIPv6/{flannel,calico,cilium}      ipv6 × {iptables,nftables} × {Cluster,Local}
//	TestOverlayDualStack/{flannel,calico,cilium} dual × {iptables,nftables} × {Cluster,Local},
//	                                             IPv4 and IPv6 connections in each cell
//
// Measured here, warm: both tests 246 s together, 1080 connections.
var familyOverlays = []struct {
	ov     testbed.Overlay
	prefix string
}{{testbed.OverlayFlannel, "f"}, {testbed.OverlayCalico, "c"}, {testbed.OverlayCilium, "i"}}

// TestOverlayIPv6: IPv6-only clusters on flannel (flannel-v6.1, the IPv6
// pod CIDR's network address, derived), Calico (vxlan-v6.calico,
// projectcalico.org/IPv6VXLANTunnelAddr) and Cilium (cilium_vxlan over the
// IPv6 underlay, network.cilium.io/ipv6-cilium-host).
func TestOverlayIPv6(t *testing.T) { overlayFamily(t, "lbo6", testbed.FamilyIPv6) }

// TestOverlayDualStack: dual-stack clusters on every overlay, IPv4 and
// IPv6 connections alike: flannel's second device flannel-v6.1, Calico's
// vxlan-v6.calico, Cilium's one cilium_vxlan (IPv4 underlay) with both
// router IPs.
func TestOverlayDualStack(t *testing.T) { overlayFamily(t, "lbod", testbed.FamilyDual) }

// overlayFamily runs overlayMatrix for each overlay in family fam, one
// cluster each, both kube-proxy modes.
func overlayFamily(t *testing.T, prefix string, fam testbed.Family) {
	for _, o := range familyOverlays {
		t.Run(string(o.ov), func(t *testing.T) { overlayMatrix(t, prefix+o.prefix, fam, o.ov, bothModes) })
	}
}
