package testbed_test

import (
	"net/netip"
	"testing"

	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestPodUDPServer: a pod added with PodSpec.UDP answers UDP exchanges on
// UDPPort at each of its addresses (one socket for both families, as
// CoreDNS listens), with its name, the client as it saw it (an IPv4 peer
// unmapped) and the response size asked for.
func TestPodUDPServer(t *testing.T) {
	for _, fam := range []testbed.Family{testbed.FamilyIPv4, testbed.FamilyIPv6, testbed.FamilyDual} {
		t.Run(string(fam), func(t *testing.T) {
			c := testbedtest.ForTest(t, testbed.Options{Family: fam, NoStaticPods: true})
			p, err := c.AddPodIPs(t.Context(), testbed.PodSpec{Name: "udp-a", Node: 2, UDP: true}, c.PodAddrs(c.Nodes[1], 50)...)
			if err != nil {
				t.Fatal(err)
			}
			for _, ip := range p.IPs {
				res := testbed.UDPExchange(t.Context(), c.ClientPod.Netns, netip.AddrPortFrom(ip, testbed.UDPPort), 30, 90)
				src := c.ClientPod.IPIn(ip)
				if res.Err != nil || res.Pod != "udp-a" || res.SeenRemote != res.Local || res.Local.Addr() != src ||
					res.Sent != 30 || res.Received != 90 {
					t.Errorf("→ %v: %+v; want pod udp-a seeing %v, 30 bytes sent, 90 received", ip, res, src)
				}
			}
			if err := c.RemovePod("udp-a"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
