package testbed

import (
	"context"
	"fmt"
	"strings"
)

// IPTablesWriter writes service NAT the way kube-proxy's iptables mode does:
// KUBE-SERVICES → KUBE-SVC/KUBE-EXT → KUBE-SEP chains with statistic-mode
// load balancing, mark-based masquerade in KUBE-POSTROUTING, and filter-table
// REJECT/DROP for services without (local) endpoints.
//
// Unlike kube-proxy it restores the whole nat and filter tables (no
// --noflush): the node namespace belongs to the testbed, and a full restore is
// one atomic replace that cannot accumulate duplicate jump rules.
type IPTablesWriter struct{}

// Name returns "iptables".
func (IPTablesWriter) Name() string { return string(ModeIPTables) }

// Sync replaces the node's nat and filter tables with kube-proxy rules for state.
func (IPTablesWriter) Sync(ctx context.Context, node *Node, state ServiceState) error {
	rules := renderIPTables(node.Name, state)
	if err := run(ctx, node.Netns, rules, "iptables-restore", "-w"); err != nil {
		return fmt.Errorf("iptables sync on %s: %w", node.Name, err)
	}
	return nil
}

// Flush empties the nat and filter tables and deletes their user chains (the
// equivalent of `iptables -t nat -F; iptables -t nat -X` and the same for
// filter).
func (IPTablesWriter) Flush(ctx context.Context, node *Node) error {
	empty := "*filter\nCOMMIT\n*nat\nCOMMIT\n"
	if err := run(ctx, node.Netns, empty, "iptables-restore", "-w"); err != nil {
		return fmt.Errorf("iptables flush on %s: %w", node.Name, err)
	}
	return nil
}

// iptablesProbability is kube-proxy's formatting of the statistic-mode
// probability that makes N rules pick uniformly.
func iptablesProbability(n int) string { return fmt.Sprintf("%0.10f", 1.0/float64(n)) }

// iptChains collects one table's chain declarations and rules in kube-proxy's
// output order: declarations first, then rules.
type iptChains struct {
	decl  []string
	rules []string
}

func (t *iptChains) chain(name string) { t.decl = append(t.decl, ":"+name+" - [0:0]") }

func (t *iptChains) add(chain string, args ...string) {
	t.rules = append(t.rules, "-A "+chain+" "+strings.Join(args, " "))
}

func (t *iptChains) write(b *strings.Builder, table string, builtins ...string) {
	fmt.Fprintf(b, "*%s\n", table)
	for _, c := range builtins {
		fmt.Fprintf(b, ":%s ACCEPT [0:0]\n", c)
	}
	for _, l := range t.decl {
		b.WriteString(l + "\n")
	}
	for _, l := range t.rules {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
}

func comment(s string) string { return fmt.Sprintf("-m comment --comment %q", s) }

// renderIPTables produces iptables-restore input for one node.
func renderIPTables(nodeName string, st ServiceState) string {
	var filter, nat iptChains
	cidr := st.ClusterCIDR.String()

	for _, c := range []string{"KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-SERVICES"} {
		filter.chain(c)
	}
	filter.add("INPUT", comment("kubernetes health check service ports"), "-j KUBE-NODEPORTS")
	filter.add("INPUT", "-m conntrack --ctstate NEW", comment("kubernetes externally-visible service portals"), "-j KUBE-EXTERNAL-SERVICES")
	filter.add("FORWARD", comment("kubernetes forwarding rules"), "-j KUBE-FORWARD")
	filter.add("FORWARD", "-m conntrack --ctstate NEW", comment("kubernetes service portals"), "-j KUBE-SERVICES")
	filter.add("FORWARD", "-m conntrack --ctstate NEW", comment("kubernetes externally-visible service portals"), "-j KUBE-EXTERNAL-SERVICES")
	filter.add("OUTPUT", "-m conntrack --ctstate NEW", comment("kubernetes service portals"), "-j KUBE-SERVICES")
	filter.add("KUBE-FORWARD", "-m conntrack --ctstate INVALID", comment("kubernetes forwarding rules"), "-j DROP")
	filter.add("KUBE-FORWARD", comment("kubernetes forwarding rules"), "-m mark --mark "+masqMark+"/"+masqMark, "-j ACCEPT")
	filter.add("KUBE-FORWARD", comment("kubernetes forwarding conntrack rule"), "-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT")

	for _, c := range []string{"KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SERVICES"} {
		nat.chain(c)
	}
	nat.add("PREROUTING", comment("kubernetes service portals"), "-j KUBE-SERVICES")
	nat.add("OUTPUT", comment("kubernetes service portals"), "-j KUBE-SERVICES")
	nat.add("POSTROUTING", comment("kubernetes postrouting rules"), "-j KUBE-POSTROUTING")
	nat.add("KUBE-MARK-MASQ", "-j MARK --or-mark "+masqMark)
	nat.add("KUBE-POSTROUTING", "-m mark ! --mark "+masqMark+"/"+masqMark, "-j RETURN")
	// Clear the bit so a packet re-entering the stack (hairpin via another
	// netns) is not masqueraded twice.
	nat.add("KUBE-POSTROUTING", "-j MARK --xor-mark "+masqMark)
	nat.add("KUBE-POSTROUTING", comment("kubernetes service traffic requiring SNAT"), "-j MASQUERADE --random-fully")

	for _, svc := range st.Services {
		renderIPTablesService(&filter, &nat, nodeName, cidr, svc)
	}
	// Must stay last: it matches any local destination.
	nat.add("KUBE-SERVICES", comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain"), "-m addrtype --dst-type LOCAL", "-j KUBE-NODEPORTS")

	var b strings.Builder
	filter.write(&b, "filter", "INPUT", "FORWARD", "OUTPUT")
	nat.write(&b, "nat", "PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
	return b.String()
}

func renderIPTablesService(filter, nat *iptChains, nodeName, cidr string, svc Service) {
	spn := svc.portName()
	hash := kubeHash(spn+"tcp", 16)
	svcChain, extChain, svlChain := "KUBE-SVC-"+hash, "KUBE-EXT-"+hash, "KUBE-SVL-"+hash
	cip := svc.ClusterIP.String() + "/32"
	lb := svc.LoadBalancerIP.String() + "/32"
	port := fmt.Sprint(svc.Port)
	nodePort := fmt.Sprint(svc.NodePort)

	eps := svc.sortedEndpoints()
	if len(eps) == 0 {
		reject := "-j REJECT --reject-with icmp-port-unreachable"
		c := comment(spn + " has no endpoints")
		filter.add("KUBE-SERVICES", "-d "+cip, "-p tcp", c, "-m tcp --dport "+port, reject)
		if svc.LoadBalancerIP.IsValid() {
			filter.add("KUBE-EXTERNAL-SERVICES", "-d "+lb, "-p tcp", c, "-m tcp --dport "+port, reject)
		}
		if svc.NodePort != 0 {
			filter.add("KUBE-EXTERNAL-SERVICES", "-m addrtype --dst-type LOCAL", "-p tcp", c, "-m tcp --dport "+nodePort, reject)
		}
		return
	}

	local := svc.Policy == PolicyLocal
	localEps := svc.localEndpoints(nodeName)
	external := svc.LoadBalancerIP.IsValid() || svc.NodePort != 0

	nat.chain(svcChain)
	if external {
		nat.chain(extChain)
	}
	if local {
		nat.chain(svlChain)
	}
	sep := func(e Endpoint) string {
		return "KUBE-SEP-" + kubeHash(spn+"tcp"+e.AddrPort().String(), 16)
	}
	for _, e := range eps {
		nat.chain(sep(e))
	}

	nat.add("KUBE-SERVICES", "-d "+cip, "-p tcp", comment(spn+" cluster IP"), "-m tcp --dport "+port, "-j "+svcChain)
	if svc.LoadBalancerIP.IsValid() {
		nat.add("KUBE-SERVICES", "-d "+lb, "-p tcp", comment(spn+" loadbalancer IP"), "-m tcp --dport "+port, "-j "+extChain)
	}
	if svc.NodePort != 0 {
		nat.add("KUBE-NODEPORTS", "-p tcp", comment(spn), "-m tcp --dport "+nodePort, "-j "+extChain)
	}

	nat.add(svcChain, "! -s "+cidr, "-d "+cip, "-p tcp", comment(spn+" cluster IP"), "-m tcp --dport "+port, "-j KUBE-MARK-MASQ")
	iptablesPick(nat, svcChain, spn, eps, sep)

	if external {
		if !local {
			nat.add(extChain, comment("masquerade traffic for "+spn+" external destinations"), "-j KUBE-MARK-MASQ")
			nat.add(extChain, "-j "+svcChain)
		} else {
			// Pods and the node itself keep cluster-wide load
			// balancing; only truly external clients are pinned to
			// local endpoints with their source preserved.
			nat.add(extChain, "-s "+cidr, comment("pod traffic for "+spn+" external destinations"), "-j "+svcChain)
			nat.add(extChain, comment("masquerade LOCAL traffic for "+spn+" external destinations"), "-m addrtype --src-type LOCAL", "-j KUBE-MARK-MASQ")
			nat.add(extChain, comment("route LOCAL traffic for "+spn+" external destinations"), "-m addrtype --src-type LOCAL", "-j "+svcChain)
			nat.add(extChain, "-j "+svlChain)
			iptablesPick(nat, svlChain, spn, localEps, sep)
			if len(localEps) == 0 {
				// Left undropped in nat, the packet would be
				// routed onwards un-DNATed; kube-proxy drops it
				// in filter instead.
				c := comment(spn + " has no local endpoints")
				if svc.LoadBalancerIP.IsValid() {
					filter.add("KUBE-EXTERNAL-SERVICES", "-d "+lb, "-p tcp", c, "-m tcp --dport "+port, "-j DROP")
				}
				if svc.NodePort != 0 {
					filter.add("KUBE-EXTERNAL-SERVICES", "-m addrtype --dst-type LOCAL", "-p tcp", c, "-m tcp --dport "+nodePort, "-j DROP")
				}
			}
		}
	}

	for _, e := range eps {
		ch := sep(e)
		nat.add(ch, "-s "+e.IP.String()+"/32", comment(spn), "-j KUBE-MARK-MASQ")
		nat.add(ch, "-p tcp", comment(spn), "-m tcp", "-j DNAT --to-destination "+e.AddrPort().String())
	}
}

// iptablesPick writes the statistic-mode cascade: rule i matches with
// probability 1/(n-i), so each endpoint ends up with 1/n.
func iptablesPick(nat *iptChains, chain, spn string, eps []Endpoint, sep func(Endpoint) string) {
	for i, e := range eps {
		c := comment(spn + " -> " + e.AddrPort().String())
		if i < len(eps)-1 {
			nat.add(chain, c, "-m statistic --mode random --probability "+iptablesProbability(len(eps)-i), "-j "+sep(e))
		} else {
			nat.add(chain, c, "-j "+sep(e))
		}
	}
}
