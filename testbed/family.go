package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
)

// Family is the IP family of a cluster's pods, nodes and Services.
type Family string

// Families.
const (
	// FamilyIPv4 is the default: every address is IPv4 and IPv6 is
	// disabled in every namespace.
	FamilyIPv4 Family = "ipv4"
	// FamilyIPv6 gives pods, node InternalIPs and Services IPv6 addresses
	// only. The nodes keep their IPv4 LAN address for one purpose, reaching
	// processes on the host (a kube-apiserver) over the IPv4 host link; no
	// pod, Service or node address of the cluster's own is IPv4.
	FamilyIPv6 Family = "ipv6"
	// FamilyDual is dual-stack with IPv4 as the primary family: every pod,
	// node and Service has one address of each family.
	FamilyDual Family = "dual"
)

// IPv6 twins of the IPv4 ranges; To6 maps an address of one to the other.
var (
	LANPrefix6   = netip.MustParsePrefix("fd00:77::/64")
	LANGateway6  = netip.MustParseAddr("fd00:77::1")
	ClientIP6    = netip.MustParseAddr("fd00:77::64")
	ClusterCIDR6 = netip.MustParsePrefix("fd00:10:244::/56")
	// ServiceCIDR6 is a /112: kube-apiserver allows IPv6 service ranges
	// of at most 20 host bits.
	ServiceCIDR6 = netip.MustParsePrefix("fd00:10:96::/112")
	ClientPodIP6 = To6(ClientPodIP)
	// NodeCIDRMask6 is the size of each node's IPv6 pod CIDR.
	NodeCIDRMask6 = 64
)

// podGateway6 is the pods' IPv6 next hop, a link-local address every
// node-side pod veth carries (Calico uses a link-local gateway the same way).
const podGateway6 = "fe80::1"

// twins maps the IPv4 ranges to their IPv6 twins: the v4 address's third
// byte goes to byte b3, its fourth to byte 15 (and 14 for the service range).
var twins = []struct {
	v4 netip.Prefix
	v6 netip.Addr
	b3 int // index of the v6 byte that takes the v4 third byte; -1: none
}{
	{LANPrefix, netip.MustParseAddr("fd00:77::"), -1},
	{ClusterCIDR, netip.MustParseAddr("fd00:10:244::"), 7},
	{ServiceCIDR, netip.MustParseAddr("fd00:10:96::"), 14},
	{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParseAddr("2001:db8:113::"), -1},
}

// To6 is the IPv6 twin of one of the testbed's IPv4 addresses (LAN, pod,
// Service and LB ranges): 10.244.1.10 → fd00:10:244:1::a, 10.96.0.10 →
// fd00:10:96::a, 192.168.77.11 → fd00:77::b, 203.0.113.10 →
// 2001:db8:113::a. Other addresses and IPv6 ones are returned unchanged.
func To6(a netip.Addr) netip.Addr {
	if !a.Is4() {
		return a
	}
	b := a.As4()
	for _, t := range twins {
		if !t.v4.Contains(a) {
			continue
		}
		out := t.v6.As16()
		if t.b3 >= 0 {
			out[t.b3] = b[2]
		}
		out[15] = b[3]
		return netip.AddrFrom16(out)
	}
	return a
}

// families lists the families of the cluster, primary first.
func (o Options) families() []Family {
	switch o.Family {
	case FamilyIPv6:
		return []Family{FamilyIPv6}
	case FamilyDual:
		return []Family{FamilyIPv4, FamilyIPv6}
	}
	return []Family{FamilyIPv4}
}

// has6 reports whether the cluster uses IPv6.
func (o Options) has6() bool { return o.Family == FamilyIPv6 || o.Family == FamilyDual }

func validFamily(f Family) error {
	switch f {
	case FamilyIPv4, FamilyIPv6, FamilyDual:
		return nil
	}
	return fmt.Errorf("unknown IP family %q: want ipv4, ipv6 or dual", f)
}

// inFamilies maps a layout address (IPv4) to the cluster's addresses, primary
// family first.
func (o Options) inFamilies(v4 netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, f := range o.families() {
		if f == FamilyIPv6 {
			out = append(out, To6(v4))
		} else {
			out = append(out, v4)
		}
	}
	return out
}

func (o Options) prefixInFamilies(v4 netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range o.families() {
		if f == FamilyIPv6 {
			out = append(out, netip.PrefixFrom(To6(v4.Addr()), NodeCIDRMask6))
		} else {
			out = append(out, v4)
		}
	}
	return out
}

// PodAddrs are the addresses of the pod with host number host (10, 11, …) on
// node, one per family of the cluster, primary first: what a kubelet stand-in
// hands to AddPodIPs.
func (c *Cluster) PodAddrs(node *Node, host byte) []netip.Addr {
	a := podCIDR4(node.Index).Addr().As4()
	a[3] = host
	return c.Opt.inFamilies(netip.AddrFrom4(a))
}

// Families are the cluster's IP families, primary first.
func (c *Cluster) Families() []Family { return c.Opt.families() }

// ClusterCIDRs and ServiceCIDRs are the cluster's ranges, primary first.
func (c *Cluster) ClusterCIDRs() []netip.Prefix { return c.ranges(ClusterCIDR, ClusterCIDR6) }

// ServiceCIDRs are the ClusterIP ranges, primary first.
func (c *Cluster) ServiceCIDRs() []netip.Prefix { return c.ranges(ServiceCIDR, ServiceCIDR6) }

func (c *Cluster) ranges(v4, v6 netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range c.Opt.families() {
		if f == FamilyIPv6 {
			out = append(out, v6)
		} else {
			out = append(out, v4)
		}
	}
	return out
}

func podCIDR4(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
}

func lanIP4(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 77, byte(10 + i)}) }

// applyFamily rewrites the IPv4 layout of newCluster into the cluster's
// families. For FamilyIPv4 it only fills the IPs/PodCIDRs lists.
func (c *Cluster) applyFamily() {
	o := c.Opt
	for _, n := range c.Nodes {
		n.IPs = o.inFamilies(lanIP4(n.Index))
		n.PodCIDRs = o.prefixInFamilies(podCIDR4(n.Index))
		n.IP, n.PodCIDR = n.IPs[0], n.PodCIDRs[0]
	}
	for _, p := range append(slices.Clone(c.Pods), c.ClientPod) {
		p.IPs = o.inFamilies(p.IP)
		p.IP = p.IPs[0]
	}
	c.Client.IPs = o.inFamilies(ClientIP)
	c.Client.IP = c.Client.IPs[0]
	for i := range c.state.Services {
		s := &c.state.Services[i]
		s.ClusterIPs = o.inFamilies(s.ClusterIP)
		s.LoadBalancerIPs = o.inFamilies(s.LoadBalancerIP)
		s.ClusterIP, s.LoadBalancerIP = s.ClusterIPs[0], s.LoadBalancerIPs[0]
		for j := range s.Endpoints {
			e := &s.Endpoints[j]
			e.IP = o.inFamilies(e.IP)[0]
		}
	}
	r := c.ServiceCIDRs()
	c.state.ServiceCIDR, c.state.ClusterCIDR = r[0], c.ClusterCIDRs()[0]
}

// IPIn is the node's address in the family of a (IPv4 or IPv6), or the zero
// Addr if the node has none in it.
func (n *Node) IPIn(a netip.Addr) netip.Addr { return pick(n.IPs, a) }

// IPIn is the pod's address in the family of a.
func (p *Pod) IPIn(a netip.Addr) netip.Addr { return pick(p.addrs(), a) }

func pick(ips []netip.Addr, like netip.Addr) netip.Addr {
	for _, ip := range ips {
		if ip.Is4() == like.Is4() {
			return ip
		}
	}
	return netip.Addr{}
}

// ClusterAddrIn is the Service's ClusterIP:port in the family of a.
func (s Service) ClusterAddrIn(a netip.Addr) (netip.AddrPort, bool) {
	ip := pick(s.ClusterIPs, a)
	return netip.AddrPortFrom(ip, s.Port), ip.IsValid()
}

// LoadBalancerAddrIn is the Service's LB IP:port in the family of a.
func (s Service) LoadBalancerAddrIn(a netip.Addr) (netip.AddrPort, bool) {
	ip := pick(s.LoadBalancerIPs, a)
	return netip.AddrPortFrom(ip, s.Port), ip.IsValid()
}

// FamilyAddr is an address of family f, for the *In accessors.
func FamilyAddr(f Family) netip.Addr {
	if f == FamilyIPv6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// hostBits is the full-length prefix of a.
func hostBits(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// ipv6Sysctls enable IPv6 in a namespace of a cluster that uses it. DAD is
// off so that addresses are usable at once; nodes forward and never
// rate-limit ICMPv6, as for ICMPv4 (kube-proxy's REJECTs must all arrive).
func (c *Cluster) ipv6Sysctls(node bool) [][2]string {
	kv := [][2]string{
		{"net.ipv6.conf.all.disable_ipv6", "0"},
		{"net.ipv6.conf.default.disable_ipv6", "0"},
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
		{"net.ipv6.conf.all.accept_ra", "0"},
		{"net.ipv6.conf.default.accept_ra", "0"},
	}
	if node {
		kv = append(kv, [2]string{"net.ipv6.conf.all.forwarding", "1"},
			[2]string{"net.ipv6.icmp.ratelimit", "0"})
	}
	return kv
}

// lan6Cmds add the bridge's IPv6 address; snooping off so that neighbour
// discovery never depends on MLD state.
func (c *Cluster) lan6Cmds() []string {
	if !c.Opt.has6() {
		return nil
	}
	return []string{
		"link set br0 type bridge mcast_snooping 0",
		"addr add " + netip.PrefixFrom(LANGateway6, LANPrefix6.Bits()).String() + " dev br0 nodad",
	}
}

// node6Cmds address a node's LAN link in IPv6 and route IPv6 like IPv4.
func (c *Cluster) node6Cmds(n *Node) []string {
	if !c.Opt.has6() {
		return nil
	}
	v6 := n.IPIn(LANGateway6)
	return []string{
		"addr add " + netip.PrefixFrom(v6, LANPrefix6.Bits()).String() + " dev eth0 nodad",
		"route add default via " + LANGateway6.String(),
	}
}

// nodeRoutes route the other nodes' pod CIDRs of every family.
func (c *Cluster) nodeRoutes(n *Node) []string {
	var cmds []string
	for _, o := range c.Nodes {
		if o == n {
			continue
		}
		for _, cidr := range o.PodCIDRs {
			cmds = append(cmds, "route add "+cidr.String()+" via "+o.IPIn(cidr.Addr()).String())
		}
	}
	return cmds
}

// podVethCmds route every address of p to its veth on the node; IPv6 pods
// get the link-local gateway on the node side.
func (c *Cluster) podVethCmds(p *Pod, verb string) []string {
	var cmds []string
	for _, ip := range p.addrs() {
		if ip.Is4() {
			cmds = append(cmds, "route "+verb+" "+hostBits(ip)+" dev "+p.HostVeth+" scope link")
		} else {
			cmds = append(cmds, "route "+verb+" "+hostBits(ip)+" dev "+p.HostVeth)
		}
	}
	if c.Opt.has6() {
		cmds = append(cmds, "addr add "+podGateway6+"/64 dev "+p.HostVeth+" nodad")
	}
	return cmds
}

// podCmds configure the pod's eth0 for every family it has.
func podCmds(p *Pod) []string {
	cmds := []string{"link set lo up"}
	for _, ip := range p.addrs() {
		if ip.Is4() {
			cmds = append(cmds, "addr add "+hostBits(ip)+" dev eth0")
		} else {
			cmds = append(cmds, "addr add "+hostBits(ip)+" dev eth0 nodad")
		}
	}
	cmds = append(cmds, "link set eth0 up")
	if p.IPIn(netip.IPv4Unspecified()).IsValid() {
		cmds = append(cmds, "route add "+podGateway+" dev eth0 scope link",
			"route add default via "+podGateway+" dev eth0")
	}
	if p.IPIn(netip.IPv6Unspecified()).IsValid() {
		cmds = append(cmds, "route add default via "+podGateway6+" dev eth0")
	}
	return cmds
}

// addrs are every address of the pod (IP alone for a pod built without IPs).
func (p *Pod) addrs() []netip.Addr {
	if len(p.IPs) == 0 {
		return []netip.Addr{p.IP}
	}
	return p.IPs
}

// listenNetwork is "tcp4" for IPv4-only pods (as before) and "tcp" (both
// families on one socket, as most servers listen) otherwise.
func (p *Pod) listenNetwork() string {
	for _, ip := range p.addrs() {
		if ip.Is6() {
			return "tcp"
		}
	}
	return "tcp4"
}

// lbIPs are the Service's LB IPs of every family.
func (s Service) lbIPs() []netip.Addr {
	if len(s.LoadBalancerIPs) > 0 {
		return s.LoadBalancerIPs
	}
	if s.LoadBalancerIP.IsValid() {
		return []netip.Addr{s.LoadBalancerIP}
	}
	return nil
}

// noNATWriter is the writer of a non-IPv4 cluster until a real kube-proxy
// takes over: the built-in writers render IPv4 rules only, and rendering
// half of a dual-stack Service would be a datapath no real cluster has.
type noNATWriter struct{}

func (noNATWriter) Name() string                                    { return "none" }
func (noNATWriter) Sync(context.Context, *Node, ServiceState) error { return nil }
func (noNATWriter) Flush(context.Context, *Node) error              { return nil }

func pickPrefix(ps []netip.Prefix, like netip.Addr) netip.Prefix {
	for _, p := range ps {
		if p.Addr().Is4() == like.Is4() {
			return p
		}
	}
	return netip.Prefix{}
}

// IPIn is the host's address in the family of a.
func (h *Host) IPIn(a netip.Addr) netip.Addr {
	if len(h.IPs) == 0 {
		return pick([]netip.Addr{h.IP}, a)
	}
	return pick(h.IPs, a)
}
