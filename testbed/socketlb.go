package testbed

import (
	"context"
	"errors"
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

// startSocketLB attaches the translator, lets it act on every namespace
// of this cluster (nodes and pods) and feeds it the testbed's own
// Services; called by build.
func (c *Cluster) startSocketLB() error {
	if _, err := c.attachSocketLB(false); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syncSocketLBLocked()
}

// AttachSocketLB attaches the translator for a caller that feeds it the
// Services itself (testbed/k8s, from the API server's EndpointSlices,
// which this testbed's own endpoint lists do not follow). It acts on
// every namespace of the cluster, nodes and pods, and on pods added later;
// Down detaches it. The NAT writer keeps running: kube-proxy's rules stay
// for NodePorts and LB IPs, as beside Cilium's socket-LB.
func (c *Cluster) AttachSocketLB() (*socketlb.Translator, error) {
	return c.attachSocketLB(true)
}

func (c *Cluster) attachSocketLB(external bool) (*socketlb.Translator, error) {
	t, err := socketlb.Attach()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slb != nil {
		return nil, errors.Join(errors.New("socket-LB translator already attached"), t.Close())
	}
	var paths []string
	for _, n := range c.Nodes {
		paths = append(paths, n.Netns)
	}
	for _, p := range c.allPods() {
		paths = append(paths, p.Netns)
	}
	for _, a := range c.added {
		paths = append(paths, a.pod.Netns)
	}
	for _, p := range paths {
		if err := t.AllowNetns(p); err != nil {
			return nil, errors.Join(err, t.Close())
		}
	}
	c.slb, c.slbExternal = t, external
	return t, nil
}

// syncSocketLBLocked gives the translator every Service's endpoints.
func (c *Cluster) syncSocketLBLocked() error {
	if c.slb == nil || c.slbExternal {
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
