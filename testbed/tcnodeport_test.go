package testbed_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestTCNodePortTranslates proves the TC NodePort load balancer is the
// datapath issue 12 means: the external client's connections to every
// node's NodePort are answered by the pods (at random, on both nodes), each
// pod sees the client's own address (no SNAT), the program counted exactly
// these connections, and no node's conntrack holds a translation for them
// (kube-proxy's NodePort rules, still present, never matched).
func TestTCNodePortTranslates(t *testing.T) {
	c := testbedtest.ForTest(t, testbed.Options{})
	var backends []netip.AddrPort
	for _, p := range c.Pods {
		backends = append(backends, netip.AddrPortFrom(p.IP, p.Port))
	}
	lb, err := c.AttachTCNodePort(testbed.ServiceWeb, backends)
	if err != nil {
		t.Fatal(err)
	}
	web := c.Web()
	const perNode = 12
	seen := map[string]int{}
	for _, n := range c.Nodes {
		for i := range perNode {
			r := c.Request(t.Context(), c.Client.Netns, web.NodePortAddr(n), 10+i, 100*i)
			if r.Err != nil {
				t.Fatalf("request %d via %s: %v", i, n.Name, r.Err)
			}
			if r.SeenRemote != r.Local {
				t.Errorf("via %s: pod %s saw %v, the client is %v: want no SNAT", n.Name, r.Pod, r.SeenRemote, r.Local)
			}
			seen[r.Pod]++
		}
	}
	if len(seen) != len(c.Pods) {
		t.Errorf("answered by %v: want all %d pods", seen, len(c.Pods))
	}
	cnt, err := lb.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(perNode * len(c.Nodes)); cnt.Connections != want || cnt.Out == 0 {
		t.Errorf("program counted %+v, want %d connections and reverse translations", cnt, want)
	}
	for _, n := range c.Nodes {
		out, err := nsExec(t, n.Netns, "conntrack", "-L", "-p", "tcp", "--dport", "30080")
		if err != nil && !strings.Contains(out, "0 flow entries") {
			t.Fatalf("conntrack on %s: %v\n%s", n.Name, err, out)
		}
		if strings.Contains(out, "dport=30080") {
			t.Errorf("%s's conntrack has a NodePort entry: kube-proxy, not the program, translated\n%s", n.Name, out)
		}
	}
	t.Logf("answered by %v; program counters %+v", seen, cnt)
}
