package kube

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A dual-stack pod and node are named by the addresses of both families,
// and losing one family closes only that family's span.
func TestDualStackPodAndNodeAddresses(t *testing.T) {
	x := NewIndex(IndexConfig{Slack: 500 * time.Millisecond})
	v4, v6 := netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr("fd00:10:244:1::a")
	pod := PodFrom(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1", UID: "u1"},
		Spec:       corev1.PodSpec{NodeName: "node1"},
		Status: corev1.PodStatus{PodIP: v4.String(), PodIPs: []corev1.PodIP{{IP: v4.String()}, {IP: v6.String()}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	})
	x.SetPod(pod, at(0))
	for _, ip := range []netip.Addr{v4, v6} {
		if p, ok := x.PodAt(ip, at(1)); !ok || p.Name != "web-1" {
			t.Errorf("PodAt(%v) = %v, %v; want web-1", ip, p, ok)
		}
	}
	// The pod loses its IPv6 address: only that family stops naming it.
	v4only := *pod
	v4only.IPs = []netip.Addr{v4}
	x.SetPod(&v4only, at(10))
	if _, ok := x.PodAt(v6, at(20)); ok {
		t.Errorf("PodAt(%v) after the pod lost it: still named", v6)
	}
	if p, ok := x.PodAt(v6, at(5)); !ok || p.Name != "web-1" {
		t.Errorf("PodAt(%v) before it was lost = %v, %v", v6, p, ok)
	}
	if p, ok := x.PodAt(v4, at(20)); !ok || p.Name != "web-1" {
		t.Errorf("PodAt(%v) = %v, %v; want web-1", v4, p, ok)
	}

	n4, n6 := netip.MustParseAddr("192.168.77.11"), netip.MustParseAddr("fd00:77::b")
	w := &Watcher{Index: x}
	w.onNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: n4.String()}, {Type: corev1.NodeInternalIP, Address: n6.String()},
		{Type: corev1.NodeHostName, Address: "node1"},
	}}})
	for _, ip := range []netip.Addr{n4, n6} {
		if n, ok := x.NodeAt(ip, time.Now()); !ok || n.Name != "node1" {
			t.Errorf("NodeAt(%v) = %v, %v; want node1", ip, n, ok)
		}
	}
	n, _ := x.NodeByName("node1")
	if n.InternalIP != n4 || !n.HasAddr(n6) || n.AddrFor(n6) != n6 || n.AddrFor(v4) != n4 {
		t.Errorf("node view %+v: want InternalIP %v and both families", n, n4)
	}
	// A NodePort on the node's IPv6 address names the Service.
	x.SetService(&Service{Namespace: "default", Name: "web", Type: "NodePort",
		Ports: []ServicePort{{Port: 80, NodePort: 30080}}}, time.Now())
	if s, e, ok := x.ServiceAt(netip.AddrPortFrom(n6, 30080), time.Now()); !ok || s.Name != "web" || e != EntryNodePort {
		t.Errorf("ServiceAt([%v]:30080) = %v %q %v; want web nodeport", n6, s, e, ok)
	}
}
