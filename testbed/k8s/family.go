package k8s

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/lbpath/lbpath/testbed"
)

// dualCIDRs are the pod ranges for kube-controller-manager when the cluster
// is not IPv4-only (nil keeps the IPv4 default's flags unchanged).
func (c *Cluster) dualCIDRs() []netip.Prefix {
	if c.opt.Family == "" || c.opt.Family == testbed.FamilyIPv4 {
		return nil
	}
	return c.TB.ClusterCIDRs()
}

// internalIPs are a node's InternalIP addresses, one per family.
func internalIPs(n *testbed.Node) []corev1.NodeAddress {
	var out []corev1.NodeAddress
	for _, ip := range addrStrings(n.IP, n.IPs) {
		out = append(out, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return out
}

// addrStrings are all (or, when all is empty, first alone).
func addrStrings(first netip.Addr, all []netip.Addr) []string {
	if len(all) == 0 {
		all = []netip.Addr{first}
	}
	var out []string
	for _, a := range all {
		out = append(out, a.String())
	}
	return out
}

func prefixStrings(first netip.Prefix, all []netip.Prefix) []string {
	if len(all) == 0 {
		all = []netip.Prefix{first}
	}
	var out []string
	for _, p := range all {
		out = append(out, p.String())
	}
	return out
}

// familyPolicy is RequireDualStack for a Service with an address of each
// family, SingleStack otherwise.
func familyPolicy(ips []netip.Addr) *corev1.IPFamilyPolicy {
	p := corev1.IPFamilyPolicySingleStack
	if len(ips) > 1 {
		p = corev1.IPFamilyPolicyRequireDualStack
	}
	return &p
}

func ipFamilies(ips []netip.Addr) []corev1.IPFamily {
	var out []corev1.IPFamily
	for _, ip := range ips {
		if ip.Is6() {
			out = append(out, corev1.IPv6Protocol)
		} else {
			out = append(out, corev1.IPv4Protocol)
		}
	}
	return out
}

// podStatusIPs are a stand-in pod's status.podIPs and hostIPs.
func podStatusIPs(pod, host []netip.Addr) ([]corev1.PodIP, []corev1.HostIP) {
	var pips []corev1.PodIP
	for _, a := range pod {
		pips = append(pips, corev1.PodIP{IP: a.String()})
	}
	var hips []corev1.HostIP
	for _, a := range host {
		hips = append(hips, corev1.HostIP{IP: a.String()})
	}
	return pips, hips
}

// primaryEndpoints keeps the endpoints of the cluster's primary family; with
// a second family its endpoints must be ready for the same pods.
func (c *Cluster) primaryEndpoints(eps []Endpoint) ([]Endpoint, error) {
	fams := c.TB.Families()
	if len(fams) < 2 {
		return eps, nil
	}
	primary := testbed.FamilyAddr(fams[0])
	var out []Endpoint
	other := map[string]bool{}
	for _, e := range eps {
		if e.IP.Is4() == primary.Is4() {
			out = append(out, e)
		} else if e.Ready {
			other[e.Pod] = true
		}
	}
	for _, e := range out {
		if e.Ready && !other[e.Pod] {
			return nil, fmt.Errorf("pod %s ready in %s but not in its second family's EndpointSlice", e.Pod, fams[0])
		}
	}
	return out, nil
}
