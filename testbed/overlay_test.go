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
