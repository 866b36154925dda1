package k8s

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpath/lbpath/testbed/socketlb"
)

// TestDesiredBackends: each ClusterIP of a dual-stack Service maps, per
// TCP and UDP port, to the ready endpoints of the slices of its own
// family on the port of the same name; not-ready endpoints, other
// Services' slices, headless Services and SCTP are left out.
func TestDesiredBackends(t *testing.T) {
	ready, notReady := true, false
	port := func(name string, proto corev1.Protocol, p int32) discoveryv1.EndpointPort {
		return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &p}
	}
	slice := func(svc string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: svc + string(at),
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: at, Ports: ports, Endpoints: eps}
	}
	ep := func(r *bool, a string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: r}}
	}
	web := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"}, Spec: corev1.ServiceSpec{
		ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
		Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}, {Name: "s", Protocol: corev1.ProtocolSCTP, Port: 9}}}}
	headless := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "h"}, Spec: corev1.ServiceSpec{
		ClusterIPs: []string{"None"}, Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}}}
	ports := []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080), port("dns", corev1.ProtocolUDP, 5353)}
	eps := []*discoveryv1.EndpointSlice{
		slice("web", discoveryv1.AddressTypeIPv4, ports, ep(&ready, "10.244.1.2"), ep(nil, "10.244.2.2"), ep(&notReady, "10.244.1.3")),
		slice("web", discoveryv1.AddressTypeIPv6, ports, ep(&ready, "fd00:244::2")),
		slice("other", discoveryv1.AddressTypeIPv4, ports, ep(&ready, "10.244.9.9")),
	}
	got := desiredBackends([]*corev1.Service{web, headless}, eps)
	ap := netip.MustParseAddrPort
	want := map[slbKey][]netip.AddrPort{
		{socketlb.TCP, ap("10.96.0.10:80")}:    {ap("10.244.1.2:8080"), ap("10.244.2.2:8080")},
		{socketlb.UDP, ap("10.96.0.10:53")}:    {ap("10.244.1.2:5353"), ap("10.244.2.2:5353")},
		{socketlb.TCP, ap("[fd00:96::10]:80")}: {ap("[fd00:244::2]:8080")},
		{socketlb.UDP, ap("[fd00:96::10]:53")}: {ap("[fd00:244::2]:5353")},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("%s %v: %v, want %v", k.proto, k.vip, got[k], w)
		}
	}
}
