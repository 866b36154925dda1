package testbed

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/lbpath/lbpath/testbed/tcnodeport"
)

// TCNodePortDevice is the node device the TC NodePort load balancer sits
// on: the LAN link, where Cilium's bpf_host sits on the native device.
const TCNodePortDevice = "eth0"

// AttachTCNodePort puts the TC NodePort load balancer (testbed/tcnodeport)
// on every node's LAN device: new connections to <node IP>:<service's
// NodePort> go to one of backends at random, translated in tc before
// netfilter sees them (kube-proxy's NodePort rules never match), with the
// client's address kept (externalTrafficPolicy Cluster without SNAT: the
// backend's node answers the client directly, DSR). IPv4 and TCP only.
// Down detaches it; Close on the result does too.
func (c *Cluster) AttachTCNodePort(service string, backends []netip.AddrPort) (*tcnodeport.LB, error) {
	svc, ok := c.Service(service)
	if !ok {
		return nil, fmt.Errorf("TC NodePort: no service %q", service)
	}
	lb, err := tcnodeport.Load()
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if err := lb.SetFrontend(svc.NodePortAddr(n), backends); err != nil {
			return nil, errors.Join(err, lb.Close())
		}
		if err := lb.AttachNode(n.Netns, TCNodePortDevice); err != nil {
			return nil, errors.Join(err, lb.Close())
		}
	}
	c.mu.Lock()
	c.tcnp = append(c.tcnp, lb)
	c.mu.Unlock()
	return lb, nil
}

// stopTCNodePort detaches every TC NodePort load balancer (Down).
func (c *Cluster) stopTCNodePort() error {
	c.mu.Lock()
	lbs := c.tcnp
	c.tcnp = nil
	c.mu.Unlock()
	var errs []error
	for _, lb := range lbs {
		errs = append(errs, lb.Close())
	}
	return errors.Join(errs...)
}
