package kube

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestServicePortsByProtocol: kube-dns's shape (UDP 53 and TCP 53 on one
// ClusterIP, different target ports here so the endpoints tell them apart)
// next to a UDP-only Service whose NodePort number a TCP flow must not
// find. A UDP flow is named by UDP ports only, a TCP one by TCP ports,
// SCTP ports are not indexed. (The informer handlers stamp objects with
// time.Now, so lookups are at now.)
func TestServicePortsByProtocol(t *testing.T) {
	x := NewIndex(IndexConfig{})
	w := &Watcher{Index: x}
	x.SetNode(&Node{Name: "node1", InternalIP: netip.MustParseAddr("192.168.77.11")}, time.Now().Add(-time.Minute))
	udp, tcp, sctp := corev1.ProtocolUDP, corev1.ProtocolTCP, corev1.ProtocolSCTP
	w.onService(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"},
		Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.10"}, Ports: []corev1.ServicePort{
			{Name: "dns", Protocol: udp, Port: 53, TargetPort: intstr.FromInt32(5353)},
			{Name: "dns-tcp", Protocol: tcp, Port: 53, TargetPort: intstr.FromInt32(53)},
			{Name: "sctp", Protocol: sctp, Port: 9, TargetPort: intstr.FromInt32(9)},
		}}})
	w.onService(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "dns"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.53"}, Ports: []corev1.ServicePort{
			{Protocol: udp, Port: 53, NodePort: 30053, TargetPort: intstr.FromInt32(8053)},
		}}})
	p53, p5353 := int32(53), int32(5353)
	w.onSlice(&discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns-x", Labels: map[string]string{discoveryv1.LabelServiceName: "kube-dns"}},
		Ports:      []discoveryv1.EndpointPort{{Protocol: &udp, Port: &p5353}, {Protocol: &tcp, Port: &p53}},
		Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}}},
	})
	cases := []struct {
		addr  string
		proto Protocol
		svc   string
		entry Entry
	}{
		{"10.96.0.10:53", ProtocolUDP, "kube-dns", EntryClusterIP},
		{"10.96.0.10:53", ProtocolTCP, "kube-dns", EntryClusterIP},
		{"10.96.0.10:53", "", "kube-dns", EntryClusterIP}, // "" is TCP
		{"10.96.0.10:9", ProtocolTCP, "", ""},
		{"10.96.0.53:53", ProtocolUDP, "dns", EntryClusterIP},
		{"10.96.0.53:53", ProtocolTCP, "", ""},
		{"192.168.77.11:30053", ProtocolUDP, "dns", EntryNodePort},
		{"192.168.77.11:30053", ProtocolTCP, "", ""},
	}
	for _, c := range cases {
		s, e, ok := x.ServiceAtProto(netip.MustParseAddrPort(c.addr), c.proto, time.Now())
		if ok != (c.svc != "") || e != c.entry || (ok && s.Name != c.svc) {
			t.Errorf("%s/%s: %v %q %v, want %q %q", c.addr, c.proto, s, e, ok, c.svc, c.entry)
		}
	}
	if _, _, ok := x.ServiceAt(netip.MustParseAddrPort("10.96.0.53:53"), time.Now()); ok {
		t.Error("ServiceAt (TCP) named the UDP-only Service")
	}
	for _, c := range []struct {
		addr  string
		proto Protocol
		ok    bool
	}{
		{"10.244.1.5:5353", ProtocolUDP, true}, {"10.244.1.5:5353", ProtocolTCP, false},
		{"10.244.1.5:53", ProtocolTCP, true}, {"10.244.1.5:53", ProtocolUDP, false},
	} {
		svc, _, ok := x.EndpointAtProto(netip.MustParseAddrPort(c.addr), c.proto, time.Now())
		if ok != c.ok || (ok && svc != "kube-system/kube-dns") {
			t.Errorf("endpoint %s/%s: %q %v, want %v", c.addr, c.proto, svc, ok, c.ok)
		}
	}
}
