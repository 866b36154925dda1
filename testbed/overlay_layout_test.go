package testbed

import (
	"strings"
	"testing"
)

// TestOverlayLayoutFamilies pins, without root, what each overlay builds
// in each family: the devices the CNI would create, their addresses (the
// masquerade source towards other nodes' pods) and underlays, and the
// routes through them.
func TestOverlayLayoutFamilies(t *testing.T) {
	cases := []struct {
		ov    Overlay
		fam   Family
		lines []string
		not   []string
	}{
		{OverlayFlannel, FamilyDual, []string{
			"link add flannel.1 type vxlan id 1 local 192.168.77.11 dev eth0 dstport 8472 nolearning",
			"link add flannel-v6.1 type vxlan id 1 local fd00:77::b dev eth0 dstport 8472 nolearning",
			"addr add 10.244.1.0/32 dev flannel.1",
			"addr add fd00:10:244:1::/128 dev flannel-v6.1 nodad",
			"route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink",
			"route add fd00:10:244:2::/64 via fd00:10:244:2:: dev flannel-v6.1 onlink",
			"neigh add fd00:10:244:2:: lladdr 0e:1b:9a:00:06:02 dev flannel-v6.1 nud permanent",
		}, nil},
		{OverlayFlannel, FamilyIPv6, []string{
			"link add flannel-v6.1 type vxlan id 1 local fd00:77::b dev eth0 dstport 8472 nolearning",
			"route add fd00:10:244:2::/64 via fd00:10:244:2:: dev flannel-v6.1 onlink",
		}, []string{"flannel.1 "}},
		{OverlayCalico, FamilyDual, []string{
			"link add vxlan.calico type vxlan id 4096 local 192.168.77.11",
			"link add vxlan-v6.calico type vxlan id 4096 local fd00:77::b dev eth0 dstport 4789 nolearning",
			"addr add fd00:10:244:1::fa/128 dev vxlan-v6.calico nodad",
			"route add fd00:10:244:2::/64 via fd00:10:244:2::fa dev vxlan-v6.calico onlink",
		}, nil},
		{OverlayCilium, FamilyDual, []string{
			"link add cilium_vxlan type vxlan id 2 local 192.168.77.11 dev eth0 dstport 8472 nolearning",
			"addr add 10.244.1.251/32 dev cilium_vxlan",
			"addr add fd00:10:244:1::fb/128 dev cilium_vxlan nodad",
			"route add fd00:10:244:2::/64 via fd00:10:244:2::fb dev cilium_vxlan onlink",
			"neigh add fd00:10:244:2::fb lladdr 0e:1b:9a:00:00:02 dev cilium_vxlan nud permanent",
		}, nil},
		{OverlayCilium, FamilyIPv6, []string{
			"link add cilium_vxlan type vxlan id 2 local fd00:77::b dev eth0 dstport 8472 nolearning",
		}, []string{"10.244."}},
	}
	for _, tc := range cases {
		t.Run(string(tc.ov)+"/"+string(tc.fam), func(t *testing.T) {
			c := newCluster(Options{Prefix: "x", Nodes: 2, Pods: DefaultPods(), Family: tc.fam, Overlay: tc.ov})
			n := c.Nodes[0]
			if len(n.Tunnels) != len(c.Families()) || n.Tunnel.IP != n.Tunnels[0].IP {
				t.Fatalf("tunnels %+v, want one per family %v, primary first", n.Tunnels, c.Families())
			}
			out := strings.Join(c.overlayNodeCmds(n), "\n")
			wantLines(t, out, tc.lines...)
			for _, l := range tc.not {
				if strings.Contains(out, l) {
					t.Errorf("unexpected %q in:\n%s", l, out)
				}
			}
		})
	}
}
