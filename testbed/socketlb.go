package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/lbpath/lbpath/testbed/socketlb"
)

// ModeSocketLB: ClusterIPs are translated inside connect() by the testbed's
// socket load balancer (testbed/socketlb, a cgroup connect4 program as in
// Cilium's socket-LB); kube-proxy's iptables rules stay for NodePorts and
// LB IPs but have no ClusterIP rules, so a ClusterIP connect the
// translator missed goes nowhere. The real Cilium agent cannot run here:
// it is not served by the Go module proxy, and needs its own install
// (operator, CRDs, its BPF datapath compiled at run time with clang).
const ModeSocketLB ProxyMode = "socketlb"

// SocketLBWriter is kube-proxy's iptables mode without its ClusterIP
// rules: what a node runs when a socket load balancer owns ClusterIPs.
type SocketLBWriter struct{}

// Name returns "socketlb".
func (SocketLBWriter) Name() string { return string(ModeSocketLB) }

// Sync writes kube-proxy's iptables rules for state minus the nat rules
// that match a ClusterIP.
func (SocketLBWriter) Sync(ctx context.Context, node *Node, state ServiceState) error {
	rules := withoutClusterIPNAT(renderIPTables(node.Name, state), state)
	if err := run(ctx, node.Netns, rules, "iptables-restore", "-w"); err != nil {
		return fmt.Errorf("socketlb iptables sync on %s: %w", node.Name, err)
	}
	return nil
}

// Flush empties the tables as the iptables writer does.
func (SocketLBWriter) Flush(ctx context.Context, node *Node) error {
	return IPTablesWriter{}.Flush(ctx, node)
}

// withoutClusterIPNAT drops the nat table's KUBE-SERVICES jumps for
// ClusterIPs; the filter table's REJECT for Services without endpoints
// stays (the translator leaves those Services alone).
func withoutClusterIPNAT(rules string, state ServiceState) string {
	var drop []string
	for _, s := range state.Services {
		drop = append(drop, "-A KUBE-SERVICES -d "+s.ClusterIP.String()+"/32 ")
	}
	var b strings.Builder
	table := ""
	for line := range strings.SplitAfterSeq(rules, "\n") {
		if strings.HasPrefix(line, "*") {
			table = strings.TrimSpace(line)
		}
		skip := false
		for _, d := range drop {
			if table == "*nat" && strings.HasPrefix(line, d) {
				skip = true
			}
		}
		if !skip {
			b.WriteString(line)
		}
	}
	return b.String()
}

// startSocketLB attaches the translator and lets it act on every
// namespace of this cluster (nodes and pods); called by build.
func (c *Cluster) startSocketLB() error {
	t, err := socketlb.Attach()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.slb = t
	c.mu.Unlock()
	for _, n := range c.Nodes {
		if err := t.AllowNetns(n.Netns); err != nil {
			return err
		}
	}
	for _, p := range c.allPods() {
		if err := t.AllowNetns(p.Netns); err != nil {
			return err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syncSocketLBLocked()
}

// syncSocketLBLocked gives the translator every Service's endpoints.
func (c *Cluster) syncSocketLBLocked() error {
	if c.slb == nil {
		return nil
	}
	for _, s := range c.state.Services {
		var bes []netip.AddrPort
		for _, e := range s.sortedEndpoints() {
			bes = append(bes, e.AddrPort())
		}
		if err := c.slb.SetService(socketlb.TCP, s.ClusterAddr(), bes); err != nil {
			return err
		}
	}
	return nil
}

// SocketLB is the cluster's socket load balancer, nil unless the cluster
// runs in ModeSocketLB.
func (c *Cluster) SocketLB() *socketlb.Translator {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slb
}

// stopSocketLB detaches the translator (Down). A crashed process needs no
// cleanup: the link dies with it.
func (c *Cluster) stopSocketLB() error {
	c.mu.Lock()
	t := c.slb
	c.slb = nil
	c.mu.Unlock()
	if t == nil {
		return nil
	}
	return t.Close()
}
