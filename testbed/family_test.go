package testbed_test

import (
	"net/netip"
	"testing"

	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

func TestTo6(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.1.10": "fd00:10:244:1::a", "10.96.0.10": "fd00:10:96::a", "10.96.0.1": "fd00:10:96::1",
		"192.168.77.11": "fd00:77::b", "203.0.113.10": "2001:db8:113::a", "8.8.8.8": "8.8.8.8",
	} {
		if got := testbed.To6(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("To6(%s) = %v, want %s", in, got, want)
		}
	}
	if !testbed.ServiceCIDR6.Contains(testbed.To6(netip.MustParseAddr("10.96.0.10"))) {
		t.Errorf("web's IPv6 ClusterIP outside %v", testbed.ServiceCIDR6)
	}
}

// TestDualStackPodPlumbing: in IPv6-only and dual-stack clusters every pod
// is reachable in every family of the cluster, on its own node and across
// nodes, and answers from the address it was given (no NAT: the built-in
// writers render IPv4 only, so these clusters run without Service NAT
// until a kube-proxy takes over).
func TestDualStackPodPlumbing(t *testing.T) {
	for _, fam := range []testbed.Family{testbed.FamilyIPv6, testbed.FamilyDual} {
		t.Run(string(fam), func(t *testing.T) {
			c := testbedtest.ForTest(t, testbed.Options{Family: fam})
			want := map[testbed.Family]int{testbed.FamilyIPv6: 1, testbed.FamilyDual: 2}[fam]
			for _, n := range c.Nodes {
				if len(n.IPs) != want || len(n.PodCIDRs) != want {
					t.Fatalf("%s: %d IPs %d pod CIDRs, want %d", n.Name, len(n.IPs), len(n.PodCIDRs), want)
				}
			}
			// A pod added at run time, as the kubelet stand-in adds them.
			added, err := c.AddPodIPs(t.Context(), testbed.PodSpec{Name: "pod-x", Node: 2}, c.PodAddrs(c.Nodes[1], 50)...)
			if err != nil {
				t.Fatal(err)
			}
			if len(added.IPs) != want {
				t.Fatalf("added pod has %v, want %d addresses", added.IPs, want)
			}
			for _, p := range append(c.Pods, added) {
				for _, ip := range p.IPs {
					res := c.Request(t.Context(), c.ClientPod.Netns, netip.AddrPortFrom(ip, p.Port), 10, 10)
					if res.Err != nil {
						t.Errorf("client pod → %s at %v: %v", p.Name, ip, res.Err)
						continue
					}
					src := c.ClientPod.IPIn(ip)
					if res.Pod != p.Name || res.SeenRemote.Addr() != src || res.Local.Addr() != src {
						t.Errorf("client pod → %v: answered by %s, seen from %v, local %v; want %s from %v",
							ip, res.Pod, res.SeenRemote, res.Local, p.Name, src)
					}
				}
			}
		})
	}
}
