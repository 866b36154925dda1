package kube

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestServiceFromLBStatus: ingress hostnames are kept (and survive the
// informer transform), externalIPs are their own list and entry kind, and
// only a LoadBalancer with no address of any kind is pending.
func TestServiceFromLBStatus(t *testing.T) {
	v := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10",
			ExternalIPs: []string{"198.51.100.7"}, Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{
			{Hostname: "a1b2.elb.us-east-1.amazonaws.com"}}}},
	}
	o, err := strip(v)
	if err != nil {
		t.Fatal(err)
	}
	s := ServiceFrom(o.(*corev1.Service))
	if !slices.Equal(s.LBHostnames, []string{"a1b2.elb.us-east-1.amazonaws.com"}) || len(s.LBIngress) != 0 {
		t.Errorf("hostnames %v ingress %v", s.LBHostnames, s.LBIngress)
	}
	ext := netip.MustParseAddr("198.51.100.7")
	if !slices.Equal(s.ExternalIPs, []netip.Addr{ext}) || s.LBPending() {
		t.Errorf("external IPs %v pending %v", s.ExternalIPs, s.LBPending())
	}
	x := NewIndex(IndexConfig{})
	x.SetService(s, time.Unix(100, 0))
	if _, e, ok := x.ServiceAt(netip.AddrPortFrom(ext, 80), time.Unix(101, 0)); !ok || e != EntryExternalIP {
		t.Errorf("external IP entry %q %v", e, ok)
	}
	if got, _ := x.Service("shop", "web"); !got.LBPendingSince.IsZero() {
		t.Errorf("hostname LB marked pending since %v", got.LBPendingSince)
	}
	v.Status.LoadBalancer.Ingress, v.Spec.ExternalIPs = nil, nil
	if p := ServiceFrom(v); !p.LBPending() {
		t.Error("LoadBalancer without any address not pending")
	}
}
