package kube

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func apiNode(name string, ann map[string]string, cidrs []string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann, Labels: map[string]string{"other": "x"}},
		Spec:       corev1.NodeSpec{PodCIDRs: cidrs},
		Status:     corev1.NodeStatus{Addresses: addrs},
	}
}

func na(ip string, src NodeAddrSource) NodeAddress {
	return NodeAddress{IP: netip.MustParseAddr(ip), Source: src}
}

// TestNodeAddresses: every CNI's way of publishing a node address is read,
// tagged with its source, in a stable order and without repeats.
func TestNodeAddresses(t *testing.T) {
	internal := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.168.77.11"}
	cases := []struct {
		name string
		node *corev1.Node
		want []NodeAddress
	}{
		{"flannel vxlan: public-ip is the InternalIP, tunnel is the pod CIDR's .0",
			apiNode("n1", map[string]string{
				"flannel.alpha.coreos.com/public-ip":           "192.168.77.11",
				"flannel.alpha.coreos.com/backend-type":        "vxlan",
				"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"0e:1b:9a:00:00:01"}`,
				"flannel.alpha.coreos.com/kube-subnet-manager": "true",
			}, []string{"10.244.1.0/24"}, internal,
				corev1.NodeAddress{Type: corev1.NodeHostName, Address: "n1"}),
			[]NodeAddress{na("192.168.77.11", NodeAddrInternalIP), na("10.244.1.0", NodeAddrFlannelTunnel),
				na("10.244.1.1", NodeAddrPodCIDRGateway)}},
		{"flannel host-gw: no tunnel address",
			apiNode("n1", map[string]string{"flannel.alpha.coreos.com/backend-type": "host-gw",
				"flannel.alpha.coreos.com/public-ip": "192.168.78.11"}, []string{"10.244.1.0/24"}, internal),
			[]NodeAddress{na("192.168.77.11", NodeAddrInternalIP), na("192.168.78.11", NodeAddrFlannelPublicIP),
				na("10.244.1.1", NodeAddrPodCIDRGateway)}},
		{"calico vxlan: address with prefix length, tunnel address",
			apiNode("n2", map[string]string{
				"projectcalico.org/IPv4Address":         "192.168.0.63/24",
				"projectcalico.org/IPv4VXLANTunnelAddr": "192.168.25.64",
				"projectcalico.org/IPv6VXLANTunnelAddr": "fd00:25::40",
			}, nil, internal, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.7"}),
			[]NodeAddress{na("192.168.77.11", NodeAddrInternalIP), na("203.0.113.7", NodeAddrExternalIP),
				na("192.168.0.63", NodeAddrCalico), na("192.168.25.64", NodeAddrCalicoTunnel), na("fd00:25::40", NodeAddrCalicoTunnel)}},
		{"cilium: both annotation prefixes, same address once",
			apiNode("n3", map[string]string{
				"network.cilium.io/ipv4-cilium-host": "10.245.2.195",
				"io.cilium.network.ipv4-cilium-host": "10.245.2.195",
				"network.cilium.io/ipv4-health-ip":   "10.245.2.15", // a pod-like endpoint, not the node
			}, []string{"10.245.2.0/24", "fd00:2::/64"}, internal),
			[]NodeAddress{na("192.168.77.11", NodeAddrInternalIP), na("10.245.2.195", NodeAddrCiliumHost),
				na("10.245.2.1", NodeAddrPodCIDRGateway), na("fd00:2::1", NodeAddrPodCIDRGateway)}},
		{"garbage annotations and a /32 pod CIDR are ignored",
			apiNode("n4", map[string]string{"projectcalico.org/IPv4VXLANTunnelAddr": "not-an-ip",
				"network.cilium.io/ipv4-cilium-host": "0.0.0.0"}, []string{"10.9.9.9/32", "bogus"}, internal),
			[]NodeAddress{na("192.168.77.11", NodeAddrInternalIP)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := NodeAddresses(c.node); !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %v\nwant %v", got, c.want)
			}
			// The informer's transform keeps exactly what is needed.
			o, err := strip(c.node)
			if err != nil {
				t.Fatal(err)
			}
			if got := NodeAddresses(o.(*corev1.Node)); !reflect.DeepEqual(got, c.want) {
				t.Errorf("after strip: got %v\nwant %v", got, c.want)
			}
			again, _ := strip(o)
			if !reflect.DeepEqual(again, o) {
				t.Errorf("strip is not idempotent: %+v vs %+v", again, o)
			}
		})
	}
}

// TestIndexNodeAddresses: the index names a node by every address, says
// how, yields a derived address to a pod holding it, and forgets addresses
// a node lost (keeping their history).
func TestIndexNodeAddresses(t *testing.T) {
	x := NewIndex(IndexConfig{Slack: time.Millisecond})
	t0 := time.Unix(1000, 0)
	v := apiNode("node1", map[string]string{"flannel.alpha.coreos.com/backend-type": "vxlan"},
		[]string{"10.244.1.0/24"}, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.168.77.11"})
	n := &Node{Name: "node1", InternalIP: netip.MustParseAddr("192.168.77.11"), Addresses: NodeAddresses(v)}
	x.SetNode(n, t0)
	at := t0.Add(time.Second)
	for ip, want := range map[string]NodeAddrSource{
		"192.168.77.11": NodeAddrInternalIP, "10.244.1.0": NodeAddrFlannelTunnel, "10.244.1.1": NodeAddrPodCIDRGateway,
	} {
		got, src, ok := x.NodeAddrAt(netip.MustParseAddr(ip), at)
		if !ok || got.Name != "node1" || src != want {
			t.Errorf("%s: node %v source %q ok %v, want node1 %q", ip, got, src, ok, want)
		}
		if _, ok := x.NodeAt(netip.MustParseAddr(ip), at); !ok {
			t.Errorf("NodeAt(%s) misses", ip)
		}
	}
	// A pod that holds the gateway address (a CNI that gives it to pods)
	// wins over the convention.
	x.SetPod(&Pod{Namespace: "ns", Name: "p", UID: "u", Node: "node1", IP: netip.MustParseAddr("10.244.1.1"), Ready: true}, t0)
	if n, _, ok := x.NodeAddrAt(netip.MustParseAddr("10.244.1.1"), at); ok {
		t.Errorf("10.244.1.1 held by a pod named as node %s", n.Name)
	}
	// The node switches to host-gw: the tunnel address is gone from then
	// on, still known before.
	t1 := t0.Add(10 * time.Second)
	v.Annotations = map[string]string{"flannel.alpha.coreos.com/backend-type": "host-gw"}
	x.SetNode(&Node{Name: "node1", InternalIP: n.InternalIP, Addresses: NodeAddresses(v)}, t1)
	tun := netip.MustParseAddr("10.244.1.0")
	if _, _, ok := x.NodeAddrAt(tun, t1.Add(time.Second)); ok {
		t.Error("tunnel address still a node's after the backend changed")
	}
	if _, src, ok := x.NodeAddrAt(tun, at); !ok || src != NodeAddrFlannelTunnel {
		t.Errorf("tunnel address before the change: %q %v", src, ok)
	}
	x.DeleteNode("node1", t1.Add(2*time.Second))
	for _, ip := range []string{"192.168.77.11", "10.244.1.0"} {
		if _, _, ok := x.NodeAddrAt(netip.MustParseAddr(ip), t1.Add(3*time.Second)); ok {
			t.Errorf("deleted node still named by %s", ip)
		}
	}
}

// TestNodeAddressesIPv6Overlays: in IPv6-only and dual-stack clusters each
// CNI's IPv6 tunnel or router address is learnt with its source, as the
// IPv4 one is: flannel's flannel-v6.1 holds the network address of the
// IPv6 pod CIDR (derived, backend-v6-data names no address), Calico
// annotates vxlan-v6.calico's address, Cilium its IPv6 router IP. Values are
// what the testbed's overlays write (testbed/k8s OverlayAnnotations).
func TestNodeAddressesIPv6Overlays(t *testing.T) {
	in4 := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.168.77.11"}
	in6 := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00:77::b"}
	dual := []string{"10.244.1.0/24", "fd00:10:244:1::/64"}
	only6 := []string{"fd00:10:244:1::/64"}
	cases := []struct {
		name string
		node *corev1.Node
		want []NodeAddress
	}{
		{"flannel dual-stack: flannel.1 and flannel-v6.1 hold each pod CIDR's network address",
			apiNode("n1", map[string]string{
				"flannel.alpha.coreos.com/backend-type":    "vxlan",
				"flannel.alpha.coreos.com/backend-data":    `{"VNI":1,"VtepMAC":"0e:1b:9a:00:00:01"}`,
				"flannel.alpha.coreos.com/backend-v6-data": `{"VNI":1,"VtepMAC":"0e:1b:9a:00:06:01"}`,
				"flannel.alpha.coreos.com/public-ip":       "192.168.77.11",
				"flannel.alpha.coreos.com/public-ipv6":     "fd00:77::b",
			}, dual, in4, in6),
			[]NodeAddress{na("192.168.77.11", NodeAddrInternalIP), na("fd00:77::b", NodeAddrInternalIP),
				na("10.244.1.0", NodeAddrFlannelTunnel), na("fd00:10:244:1::", NodeAddrFlannelTunnel),
				na("10.244.1.1", NodeAddrPodCIDRGateway), na("fd00:10:244:1::1", NodeAddrPodCIDRGateway)}},
		{"flannel IPv6-only: no IPv4 annotations, the IPv6 network address",
			apiNode("n1", map[string]string{
				"flannel.alpha.coreos.com/backend-type":    "vxlan",
				"flannel.alpha.coreos.com/backend-v6-data": `{"VNI":1,"VtepMAC":"0e:1b:9a:00:06:01"}`,
				"flannel.alpha.coreos.com/public-ipv6":     "fd00:78::b",
			}, only6, in6),
			[]NodeAddress{na("fd00:77::b", NodeAddrInternalIP), na("fd00:78::b", NodeAddrFlannelPublicIP),
				na("fd00:10:244:1::", NodeAddrFlannelTunnel), na("fd00:10:244:1::1", NodeAddrPodCIDRGateway)}},
		{"calico IPv6-only: IPv6Address and vxlan-v6.calico's address",
			apiNode("n1", map[string]string{
				"projectcalico.org/IPv6Address":          "fd00:77::b/64",
				"projectcalico.org/IPv6VXLANTunnelAddr":  "fd00:10:244:1::fa",
				"projectcalico.org/VXLANTunnelMACAddrV6": "0e:1b:9a:00:06:01",
			}, only6, in6),
			[]NodeAddress{na("fd00:77::b", NodeAddrInternalIP), na("fd00:10:244:1::fa", NodeAddrCalicoTunnel),
				na("fd00:10:244:1::1", NodeAddrPodCIDRGateway)}},
		{"calico dual-stack: both tunnel addresses",
			apiNode("n1", map[string]string{
				"projectcalico.org/IPv4Address":         "192.168.77.11/24",
				"projectcalico.org/IPv6Address":         "fd00:77::b/64",
				"projectcalico.org/IPv4VXLANTunnelAddr": "10.244.1.250",
				"projectcalico.org/IPv6VXLANTunnelAddr": "fd00:10:244:1::fa",
			}, dual, in4, in6),
			[]NodeAddress{na("192.168.77.11", NodeAddrInternalIP), na("fd00:77::b", NodeAddrInternalIP),
				na("10.244.1.250", NodeAddrCalicoTunnel), na("fd00:10:244:1::fa", NodeAddrCalicoTunnel),
				na("10.244.1.1", NodeAddrPodCIDRGateway), na("fd00:10:244:1::1", NodeAddrPodCIDRGateway)}},
		{"cilium dual-stack: both router IPs, either prefix",
			apiNode("n1", map[string]string{
				"network.cilium.io/ipv4-cilium-host": "10.244.1.251",
				"network.cilium.io/ipv4-pod-cidr":    "10.244.1.0/24",
				"io.cilium.network.ipv6-cilium-host": "fd00:10:244:1::fb",
				"network.cilium.io/ipv6-pod-cidr":    "fd00:10:244:1::/64",
			}, dual, in4, in6),
			[]NodeAddress{na("192.168.77.11", NodeAddrInternalIP), na("fd00:77::b", NodeAddrInternalIP),
				na("fd00:10:244:1::fb", NodeAddrCiliumHost), na("10.244.1.251", NodeAddrCiliumHost),
				na("10.244.1.1", NodeAddrPodCIDRGateway), na("fd00:10:244:1::1", NodeAddrPodCIDRGateway)}},
		{"cilium IPv6-only: the IPv6 router IP",
			apiNode("n1", map[string]string{"network.cilium.io/ipv6-cilium-host": "fd00:10:244:1::fb"}, only6, in6),
			[]NodeAddress{na("fd00:77::b", NodeAddrInternalIP), na("fd00:10:244:1::fb", NodeAddrCiliumHost),
				na("fd00:10:244:1::1", NodeAddrPodCIDRGateway)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := NodeAddresses(c.node); !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %v\nwant %v", got, c.want)
			}
			o, err := strip(c.node)
			if err != nil {
				t.Fatal(err)
			}
			if got := NodeAddresses(o.(*corev1.Node)); !reflect.DeepEqual(got, c.want) {
				t.Errorf("after strip: got %v\nwant %v", got, c.want)
			}
		})
	}
}

// TestIndexIPv6TunnelAddresses: the index names a dual-stack flannel node
// by its IPv6 tunnel address with the derived source, and a pod holding
// that address (an IPAM that hands out the network address) wins over the
// convention, as for IPv4.
func TestIndexIPv6TunnelAddresses(t *testing.T) {
	x := NewIndex(IndexConfig{Slack: time.Millisecond})
	t0 := time.Unix(1000, 0)
	v := apiNode("node1", map[string]string{"flannel.alpha.coreos.com/backend-type": "vxlan"},
		[]string{"10.244.1.0/24", "fd00:10:244:1::/64"},
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.168.77.11"},
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00:77::b"})
	x.SetNode(&Node{Name: "node1", InternalIP: netip.MustParseAddr("192.168.77.11"), Addresses: NodeAddresses(v)}, t0)
	v2 := apiNode("node2", map[string]string{"projectcalico.org/IPv6VXLANTunnelAddr": "fd00:10:244:2::fa"},
		[]string{"fd00:10:244:2::/64"}, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00:77::c"})
	x.SetNode(&Node{Name: "node2", InternalIP: netip.MustParseAddr("fd00:77::c"), Addresses: NodeAddresses(v2)}, t0)
	at := t0.Add(time.Second)
	for ip, want := range map[string]struct {
		node string
		src  NodeAddrSource
	}{
		"fd00:77::b": {"node1", NodeAddrInternalIP}, "fd00:10:244:1::": {"node1", NodeAddrFlannelTunnel},
		"10.244.1.0": {"node1", NodeAddrFlannelTunnel}, "fd00:10:244:2::fa": {"node2", NodeAddrCalicoTunnel},
		"fd00:77::c": {"node2", NodeAddrInternalIP},
	} {
		got, src, ok := x.NodeAddrAt(netip.MustParseAddr(ip), at)
		if !ok || got.Name != want.node || src != want.src {
			t.Errorf("%s: node %v source %q ok %v, want %s %q", ip, got, src, ok, want.node, want.src)
		}
	}
	x.SetPod(&Pod{Namespace: "ns", Name: "p", UID: "u", Node: "node1", IP: netip.MustParseAddr("fd00:10:244:1::"), Ready: true}, t0)
	if n, _, ok := x.NodeAddrAt(netip.MustParseAddr("fd00:10:244:1::"), at); ok {
		t.Errorf("fd00:10:244:1:: held by a pod named as node %s", n.Name)
	}
	if _, src, ok := x.NodeAddrAt(netip.MustParseAddr("fd00:10:244:2::fa"), at); !ok || src != NodeAddrCalicoTunnel {
		t.Errorf("annotated IPv6 tunnel address lost: %q %v", src, ok)
	}
}
