package kube

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// NodePodCIDRs reads node's spec.podCIDRs, retrying for up to wait while the
// API server cannot be reached (an agent starting with its node may come up
// before the API server answers). It is how an agent scopes itself to its
// node's pods where several nodes share one kernel (kind, k3d, the testbed):
// there every agent's hooks see every node's sockets.
func NodePodCIDRs(ctx context.Context, cs kubernetes.Interface, node string, wait time.Duration) ([]netip.Prefix, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	delay := 200 * time.Millisecond
	for {
		n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err == nil {
			return parsePodCIDRs(node, n.Spec.PodCIDRs, n.Spec.PodCIDR)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read Node %s: %w", node, err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func parsePodCIDRs(node string, cidrs []string, legacy string) ([]netip.Prefix, error) {
	if len(cidrs) == 0 && legacy != "" {
		cidrs = []string{legacy}
	}
	if len(cidrs) == 0 {
		return nil, fmt.Errorf("Node %s has no spec.podCIDRs (its CNI does not allocate per-node ranges)", node)
	}
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("Node %s: podCIDR %q: %w", node, c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
