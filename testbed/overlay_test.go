package testbed_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestOverlaySNATToTunnel proves the VXLAN overlays do what the agent's
// overlay handling is about: with externalTrafficPolicy Cluster, an
// external connection that the entry node forwards to a pod on another
// node reaches the pod from the entry node's tunnel address (the VXLAN
// device's own address), and one served on the entry node from its LAN
// address; pods on other nodes are reached through the tunnel device.
func TestOverlaySNATToTunnel(t *testing.T) {
	for _, ov := range []testbed.Overlay{testbed.OverlayFlannel, testbed.OverlayCalico, testbed.OverlayCilium} {
		t.Run(string(ov), func(t *testing.T) {
			c := testbedtest.ForTest(t, testbed.Options{Overlay: ov})
			for _, n := range c.Nodes {
				out, err := nsExec(t, n.Netns, "ip", "-o", "addr", "show", "dev", n.Tunnel.Dev)
				if err != nil || !strings.Contains(out, n.Tunnel.IP.String()+"/32") {
					t.Fatalf("%s: %s lacks %s: %v\n%s", n.Name, n.Tunnel.Dev, n.Tunnel.IP, err, out)
				}
			}
			for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
				t.Run(string(mode), func(t *testing.T) {
					if err := c.SetMode(t.Context(), mode); err != nil {
						t.Fatal(err)
					}
					checkOverlaySNAT(t, c)
				})
			}
		})
	}
}

func checkOverlaySNAT(t *testing.T, c *testbed.Cluster) {
	t.Helper()
	web := c.Web()
	for _, n := range c.Nodes {
		seen := map[string]int{}
		for i := range requestsPerCase {
			r := c.Request(t.Context(), c.Client.Netns, web.NodePortAddr(n), i, i)
			if r.Err != nil {
				t.Fatalf("request %d via %s: %v", i, n.Name, r.Err)
			}
			pod := c.Pod(r.Pod)
			if pod == nil {
				t.Fatalf("answered by unknown pod %q", r.Pod)
			}
			want := n.IP
			if pod.Node != n {
				want = n.Tunnel.IP
			}
			if r.SeenRemote.Addr() != want {
				t.Errorf("via %s, pod %s on %s saw %v, want SNAT to %v", n.Name, pod.Name, pod.Node.Name, r.SeenRemote, want)
			}
			seen[fmt.Sprintf("%s@%s", pod.Name, pod.Node.Name)]++
		}
		t.Logf("via %s: %v", n.Name, seen)
	}
	// The pod-to-pod path crosses the tunnel too, keeping the pod source.
	remote := c.Pods[len(c.Pods)-1]
	r := c.Request(t.Context(), c.ClientPod.Netns, netip.AddrPortFrom(remote.IP, remote.Port), 1, 1)
	if r.Err != nil || r.SeenRemote != r.Local {
		t.Errorf("client pod → %s: err %v, pod saw %v, want %v", remote.Name, r.Err, r.SeenRemote, r.Local)
	}
	out, err := nsExec(t, c.ClientPod.Node.Netns, "ip", "route", "get", remote.IP.String())
	if err != nil || !strings.Contains(out, "dev "+c.ClientPod.Node.Tunnel.Dev) {
		t.Errorf("route to %s not via the tunnel: %v\n%s", remote.IP, err, out)
	}
}

// TestOverlayIPv6Families: in IPv6-only and dual-stack clusters every
// overlay carries IPv6 pod traffic between nodes over its VXLAN device
// (flannel-v6.1, vxlan-v6.calico, cilium_vxlan) keeping the pod source, and
// traffic the node itself sends to another node's IPv6 pod leaves from the
// device's IPv6 address: the source the kernel picks for the tunnel device,
// which is what kube-proxy's MASQUERADE picks too (the e2e overlay tests
// check the SNAT through the real kube-proxy; the testbed's own NAT writers
// render IPv4 only).
func TestOverlayIPv6Families(t *testing.T) {
	for _, fam := range []testbed.Family{testbed.FamilyIPv6, testbed.FamilyDual} {
		for _, ov := range []testbed.Overlay{testbed.OverlayFlannel, testbed.OverlayCalico, testbed.OverlayCilium} {
			t.Run(string(fam)+"/"+string(ov), func(t *testing.T) {
				c := testbedtest.ForTest(t, testbed.Options{Overlay: ov, Family: fam})
				for _, n := range c.Nodes {
					for _, tun := range n.Tunnels {
						out, err := nsExec(t, n.Netns, "ip", "-o", "addr", "show", "dev", tun.Dev)
						if err != nil || !strings.Contains(out, netip.PrefixFrom(tun.IP, tun.IP.BitLen()).String()) {
							t.Fatalf("%s: %s lacks %s: %v\n%s", n.Name, tun.Dev, tun.IP, err, out)
						}
					}
				}
				for _, f := range c.Families() {
					checkOverlayFamily(t, c, testbed.FamilyAddr(f))
				}
			})
		}
	}
}

func checkOverlayFamily(t *testing.T, c *testbed.Cluster, like netip.Addr) {
	t.Helper()
	remote := c.Pods[len(c.Pods)-1]
	node := c.ClientPod.Node
	target := netip.AddrPortFrom(remote.IPIn(like), remote.Port)
	r := c.Request(t.Context(), c.ClientPod.Netns, target, 1, 1)
	if r.Err != nil || r.SeenRemote != r.Local {
		t.Errorf("client pod → %v: err %v, pod saw %v, want %v", target, r.Err, r.SeenRemote, r.Local)
	}
	tun := node.TunnelIn(like)
	out, err := nsExec(t, node.Netns, "ip", "route", "get", target.Addr().String())
	if err != nil || !strings.Contains(out, "dev "+tun.Dev) {
		t.Errorf("route to %v not via %s: %v\n%s", target.Addr(), tun.Dev, err, out)
	}
	r = c.Request(t.Context(), node.Netns, target, 1, 1)
	if r.Err != nil || r.SeenRemote.Addr() != tun.IP {
		t.Errorf("%s → %v: err %v, pod saw %v, want the tunnel address %v", node.Name, target, r.Err, r.SeenRemote, tun.IP)
	}
	t.Logf("%v: pod-to-pod via %s, node source %v", target, tun.Dev, r.SeenRemote.Addr())
}
