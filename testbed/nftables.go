package testbed

import (
	"context"
	"fmt"
	"strings"
)

// nftTable is the table kube-proxy's nftables mode owns.
const nftTable = "kube-proxy"

// NFTablesWriter writes service NAT the way kube-proxy's nftables mode does:
// table `ip kube-proxy` with verdict maps service-ips / service-nodeports
// dispatching to service-, external-, local- and endpoint- chains, numgen
// load balancing, and no-endpoint-services / no-endpoint-nodeports maps for
// REJECT and DROP.
//
// Each Sync deletes and recreates the table in one nft transaction, so the
// kernel never sees a half-written rule set.
type NFTablesWriter struct{}

// Name returns "nftables".
func (NFTablesWriter) Name() string { return string(ModeNFTables) }

// Sync atomically replaces table ip kube-proxy on the node.
func (NFTablesWriter) Sync(ctx context.Context, node *Node, state ServiceState) error {
	if err := run(ctx, node.Netns, renderNFTables(node.Name, state), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("nftables sync on %s: %w", node.Name, err)
	}
	return nil
}

// Flush deletes table ip kube-proxy if it exists.
func (NFTablesWriter) Flush(ctx context.Context, node *Node) error {
	// "add" first makes the delete succeed whether or not the table exists.
	script := "add table ip " + nftTable + "\ndelete table ip " + nftTable + "\n"
	if err := run(ctx, node.Netns, script, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("nftables flush on %s: %w", node.Name, err)
	}
	return nil
}

// nftChainBase is kube-proxy's servicePortChainNameBase:
// "<ns>/<name>/<proto>/<portname>".
func nftChainBase(svc Service) string {
	return svc.Namespace + "/" + svc.Name + "/tcp/" + svc.PortName
}

// nftHashed is kube-proxy's hashAndTruncate: the hash keeps names unique,
// the readable suffix keeps them debuggable.
func nftHashed(prefix, base string) string { return prefix + kubeHash(base, 8) + "-" + base }

type nftScript struct {
	chains   strings.Builder
	elements []string
}

func (s *nftScript) chain(name string, rules ...string) {
	fmt.Fprintf(&s.chains, "\tchain %s {\n", name)
	for _, r := range rules {
		fmt.Fprintf(&s.chains, "\t\t%s\n", r)
	}
	s.chains.WriteString("\t}\n")
}

func (s *nftScript) element(set, elem string) {
	s.elements = append(s.elements, fmt.Sprintf("add element ip %s %s { %s }", nftTable, set, elem))
}

// renderNFTables produces `nft -f` input for one node.
func renderNFTables(nodeName string, st ServiceState) string {
	var s nftScript
	s.chain("filter-input",
		"type filter hook input priority -110; policy accept;",
		"ct state new jump nodeport-endpoints-check",
		"ct state new jump service-endpoints-check")
	s.chain("filter-forward",
		"type filter hook forward priority -110; policy accept;",
		"ct state new jump service-endpoints-check",
		"ct state new jump cluster-ips-check")
	s.chain("filter-output",
		"type filter hook output priority -110; policy accept;",
		"ct state new jump service-endpoints-check")
	s.chain("filter-output-post-dnat",
		"type filter hook output priority -90; policy accept;",
		"ct state new jump cluster-ips-check")
	s.chain("nat-prerouting",
		"type nat hook prerouting priority dstnat; policy accept;",
		"jump services")
	s.chain("nat-output",
		"type nat hook output priority -100; policy accept;",
		"jump services")
	s.chain("nat-postrouting",
		"type nat hook postrouting priority srcnat; policy accept;",
		"jump masquerading")
	s.chain("nodeport-endpoints-check",
		"ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports")
	s.chain("service-endpoints-check",
		"ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
	s.chain("cluster-ips-check",
		`ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"`,
		fmt.Sprintf(`ip daddr %s drop comment "Drop traffic to unallocated ClusterIPs"`, st.ServiceCIDR))
	s.chain("mark-for-masquerade",
		"mark set mark or "+masqMark)
	s.chain("masquerading",
		"mark and "+masqMark+" == 0 return",
		// Clear the bit so a packet re-entering the stack is not
		// masqueraded twice.
		"mark set mark xor "+masqMark,
		"masquerade fully-random")
	s.chain("services",
		"ip daddr . meta l4proto . th dport vmap @service-ips",
		"fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports")
	s.chain("reject-chain",
		`reject comment "helper for @no-endpoint-services / @no-endpoint-nodeports"`)

	for _, svc := range st.Services {
		renderNFTablesService(&s, nodeName, st, svc)
	}

	var b strings.Builder
	// add+delete makes the replace work whether or not the table exists,
	// all inside one transaction.
	fmt.Fprintf(&b, "add table ip %s\ndelete table ip %s\n", nftTable, nftTable)
	fmt.Fprintf(&b, "table ip %s {\n", nftTable)
	fmt.Fprintf(&b, "\tcomment \"rules for kube-proxy\"\n")
	b.WriteString("\tset cluster-ips {\n\t\ttype ipv4_addr\n\t\tcomment \"Active ClusterIPs\"\n\t}\n")
	b.WriteString("\tmap no-endpoint-services {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\tcomment \"vmap to drop or reject packets to services with no endpoints\"\n\t}\n")
	b.WriteString("\tmap no-endpoint-nodeports {\n\t\ttype inet_proto . inet_service : verdict\n\t\tcomment \"vmap to drop or reject packets to service nodeports with no endpoints\"\n\t}\n")
	b.WriteString("\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\tcomment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"\n\t}\n")
	b.WriteString("\tmap service-nodeports {\n\t\ttype inet_proto . inet_service : verdict\n\t\tcomment \"NodePort traffic\"\n\t}\n")
	b.WriteString(s.chains.String())
	b.WriteString("}\n")
	for _, e := range s.elements {
		b.WriteString(e + "\n")
	}
	return b.String()
}

func renderNFTablesService(s *nftScript, nodeName string, st ServiceState, svc Service) {
	base := nftChainBase(svc)
	svcChain := nftHashed("service-", base)
	extChain := nftHashed("external-", base)
	localChain := nftHashed("local-", base)
	cip := svc.ClusterIP.String()
	hasLB := svc.LoadBalancerIP.IsValid()
	lb := svc.LoadBalancerIP.String()

	s.element("cluster-ips", cip)

	eps := svc.sortedEndpoints()
	if len(eps) == 0 {
		s.element("no-endpoint-services", fmt.Sprintf("%s . tcp . %d : goto reject-chain", cip, svc.Port))
		if hasLB {
			s.element("no-endpoint-services", fmt.Sprintf("%s . tcp . %d : goto reject-chain", lb, svc.Port))
		}
		if svc.NodePort != 0 {
			s.element("no-endpoint-nodeports", fmt.Sprintf("tcp . %d : goto reject-chain", svc.NodePort))
		}
		return
	}

	epChain := func(e Endpoint) string {
		return nftHashed("endpoint-", base+"__"+e.IP.String()+"/"+fmt.Sprint(e.Port))
	}

	s.chain(svcChain,
		fmt.Sprintf("ip daddr %s tcp dport %d ip saddr != %s jump mark-for-masquerade", cip, svc.Port, st.ClusterCIDR),
		nftPick(eps, epChain))
	s.element("service-ips", fmt.Sprintf("%s . tcp . %d : goto %s", cip, svc.Port, svcChain))

	external := hasLB || svc.NodePort != 0
	if external {
		if svc.Policy != PolicyLocal {
			s.chain(extChain,
				`jump mark-for-masquerade comment "masquerade traffic for external destinations"`,
				"goto "+svcChain)
		} else {
			// Pods and the node itself keep cluster-wide load
			// balancing; external clients go to local endpoints
			// with their source preserved.
			s.chain(extChain,
				fmt.Sprintf(`ip saddr %s goto %s comment "short-circuit pod traffic"`, st.ClusterCIDR, svcChain),
				`fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"`,
				fmt.Sprintf(`fib saddr type local goto %s comment "short-circuit local traffic"`, svcChain),
				"goto "+localChain)
			local := svc.localEndpoints(nodeName)
			if len(local) > 0 {
				s.chain(localChain, nftPick(local, epChain))
			} else {
				// Nothing is DNATed, so the packet still has the
				// service address when it reaches the filter
				// hooks and the drop element catches it there.
				s.chain(localChain)
				if hasLB {
					s.element("no-endpoint-services", fmt.Sprintf("%s . tcp . %d : drop", lb, svc.Port))
				}
				if svc.NodePort != 0 {
					s.element("no-endpoint-nodeports", fmt.Sprintf("tcp . %d : drop", svc.NodePort))
				}
			}
		}
		if hasLB {
			s.element("service-ips", fmt.Sprintf("%s . tcp . %d : goto %s", lb, svc.Port, extChain))
		}
		if svc.NodePort != 0 {
			s.element("service-nodeports", fmt.Sprintf("tcp . %d : goto %s", svc.NodePort, extChain))
		}
	}

	for _, e := range eps {
		s.chain(epChain(e),
			fmt.Sprintf("ip saddr %s jump mark-for-masquerade", e.IP),
			fmt.Sprintf("meta l4proto tcp dnat to %s", e.AddrPort()))
	}
}

// nftPick is kube-proxy's endpoint selection: one random number, one vmap.
func nftPick(eps []Endpoint, chain func(Endpoint) string) string {
	parts := make([]string, len(eps))
	for i, e := range eps {
		parts[i] = fmt.Sprintf("%d : goto %s", i, chain(e))
	}
	return fmt.Sprintf("numgen random mod %d vmap { %s }", len(eps), strings.Join(parts, ", "))
}
