package kube

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The client is client-go's fake clientset: this tests the reading of a Node
// object, not the API server (the e2e TestRealNode runs it against one).
func TestNodePodCIDRs(t *testing.T) {
	cs := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "dual"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "legacy"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.2.0/24"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "none"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bad"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.3.0"}}},
	)
	ctx := context.Background()
	for node, want := range map[string][]netip.Prefix{
		"dual":   {netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
		"legacy": {netip.MustParsePrefix("10.244.2.0/24")},
	} {
		got, err := NodePodCIDRs(ctx, cs, node, time.Second)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: %v, %v; want %v", node, got, err, want)
		}
	}
	for _, node := range []string{"none", "bad", "missing"} {
		if got, err := NodePodCIDRs(ctx, cs, node, 300*time.Millisecond); err == nil {
			t.Errorf("%s: %v, want an error", node, got)
		}
	}
}
