package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/lbpath/lbpath/agent/kube"
)

// podScope is the repeatable, comma-separable --pod-cidr flag: CIDRs, or
// "node" for the node's own spec.podCIDRs, read from the API server at
// start (for clusters whose nodes share one kernel, such as kind or k3d,
// where the chart cannot know each node's range).
type podScope struct {
	cidrs    []netip.Prefix
	fromNode bool
}

func (s *podScope) String() string {
	if s.fromNode {
		return "node"
	}
	return fmt.Sprint(s.cidrs)
}

func (s *podScope) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "node" {
			s.fromNode = true
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return fmt.Errorf("invalid CIDR %q (want a CIDR or \"node\"): %w", part, err)
		}
		s.cidrs = append(s.cidrs, p)
	}
	if s.fromNode && len(s.cidrs) > 0 {
		return errors.New(`"node" cannot be combined with CIDRs`)
	}
	return nil
}

// nodeCIDRWait bounds how long the agent waits at start for its Node.
const nodeCIDRWait = 30 * time.Second

// resolve returns the CIDRs, reading node's spec.podCIDRs when the flag
// said "node"; kc is nil when the agent runs without an API server.
func (s *podScope) resolve(ctx context.Context, kc *kube.Config, node string) ([]netip.Prefix, error) {
	if !s.fromNode {
		return s.cidrs, nil
	}
	if kc == nil {
		return nil, errors.New(`"node" needs the API server (--kubeconfig, or in-cluster)`)
	}
	cs, err := kc.Client(&kube.APIStats{})
	if err != nil {
		return nil, err
	}
	return kube.NodePodCIDRs(ctx, cs, node, nodeCIDRWait)
}
