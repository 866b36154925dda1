package testbed

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
)

// StartExternalServer runs an HTTP server answering as name (the pods'
// handler, so a request's Result.Pod is name) at addr in the external
// client's namespace: a host outside the cluster on the nodes' LAN, such
// as a database an ExternalName Service points at. addr's IP is added to
// the client's interface (it must be in the LAN prefix and nobody's), and
// the client routes every node's pod CIDRs via that node, so pods reach
// it unmasqueraded, as in a flat VPC. The returned func stops the server;
// the address and routes go with the namespace on Down.
func (c *Cluster) StartExternalServer(ctx context.Context, addr netip.AddrPort, name string) (stop func() error, err error) {
	ip := addr.Addr()
	if !LANPrefix.Contains(ip) || ip == ClientIP || ip == LANGateway || c.NodeByIP(ip) != nil {
		return nil, fmt.Errorf("external server %s: %v is not a free address of the LAN %v", name, ip, LANPrefix)
	}
	cmds := []string{"addr replace " + netip.PrefixFrom(ip, LANPrefix.Bits()).String() + " dev eth0"}
	for _, n := range c.Nodes {
		for _, cidr := range n.PodCIDRs {
			if cidr.Addr().Is4() {
				cmds = append(cmds, "route replace "+cidr.String()+" via "+n.IPIn(cidr.Addr()).String())
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := ipBatch(rctx, filepath.Base(c.Client.Netns), cmds); err != nil {
		return nil, fmt.Errorf("external server %s: %w", name, err)
	}
	var ln net.Listener
	if err := netns.Do(c.Client.Netns, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		return nil, fmt.Errorf("external server %s: listen on %v: %w", name, addr, err)
	}
	return serveHTTP(ln, name, 0).stop, nil
}
