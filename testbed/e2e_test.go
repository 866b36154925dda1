package testbed_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

const requestsPerCase = 30

// entry is one way into service web, with what the pods must observe.
type entry struct {
	name   string
	from   string // netns path of the client
	target netip.AddrPort
	lbVia  int // >0: route the LB IP via this node first
	// pods that may answer.
	pods []string
	// snatTo is the address the pod must see; invalid means "no SNAT",
	// i.e. the pod sees the client socket's own address and port.
	snatTo netip.Addr
}

func podsOn(c *testbed.Cluster, n *testbed.Node) []string {
	var out []string
	for _, p := range c.Pods {
		if p.Node == n {
			out = append(out, p.Name)
		}
	}
	return out
}

func allPods(c *testbed.Cluster) []string {
	var out []string
	for _, p := range c.Pods {
		out = append(out, p.Name)
	}
	return out
}

func entries(c *testbed.Cluster, policy testbed.Policy) []entry {
	web := c.Web()
	es := []entry{{
		name: "ClusterIP", from: c.ClientPod.Netns, target: web.ClusterAddr(),
		pods: allPods(c), // internalTrafficPolicy stays Cluster
	}}
	for _, n := range c.Nodes {
		e := entry{from: c.Client.Netns, pods: allPods(c), snatTo: n.IP}
		if policy == testbed.PolicyLocal {
			e.pods, e.snatTo = podsOn(c, n), netip.Addr{}
		}
		np, lb := e, e
		np.name, np.target = "NodePort/"+n.Name, web.NodePortAddr(n)
		lb.name, lb.target, lb.lbVia = "LB/via-"+n.Name, web.LoadBalancerAddr(), n.Index
		es = append(es, np, lb)
	}
	return es
}

func checkEntry(t *testing.T, c *testbed.Cluster, e entry) {
	t.Helper()
	if e.lbVia > 0 {
		if err := c.RouteLB(e.lbVia); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	remapped := 0
	for i := range requestsPerCase {
		r := c.Request(t.Context(), e.from, e.target, i*10, i*100)
		if r.Err != nil {
			t.Fatalf("request %d to %s: %v", i, e.target, r.Err)
		}
		seen[r.Pod]++
		if !slices.Contains(e.pods, r.Pod) {
			t.Errorf("request %d answered by %q, want one of %v", i, r.Pod, e.pods)
		}
		if r.Remote != e.target {
			t.Errorf("client socket remote %s, want %s", r.Remote, e.target)
		}
		if e.snatTo.IsValid() {
			if r.SeenRemote.Addr() != e.snatTo {
				t.Errorf("pod %s saw %s, want SNAT to %s", r.Pod, r.SeenRemote, e.snatTo)
			}
		} else if r.SeenRemote.Addr() != r.Local.Addr() {
			t.Errorf("pod %s saw %s, want the unNATed client %s", r.Pod, r.SeenRemote, r.Local)
		} else if r.SeenRemote != r.Local {
			// Same client address, other port: conntrack remaps the source
			// port when the translated tuple would clash with an entry an
			// earlier case left behind (the client reuses ephemeral
			// ports). Rare, and not SNAT; more than a few would be.
			remapped++
			t.Logf("pod %s saw %s for client %s: source port remapped by conntrack (tuple clash)", r.Pod, r.SeenRemote, r.Local)
		}
		// Request line + headers + body one way, status + headers +
		// name + padding the other.
		if r.Sent < int64(i*10)+40 || r.Received < int64(i*100+len(r.Pod)+1)+60 {
			t.Errorf("byte counts sent=%d received=%d too small for body=%d pad=%d", r.Sent, r.Received, i*10, i*100)
		}
	}
	if remapped*10 > requestsPerCase {
		t.Errorf("%d of %d requests had their source port remapped: more than tuple clashes explain", remapped, requestsPerCase)
	}
	if len(e.pods) > 1 && len(seen) < 2 {
		t.Errorf("all %d requests went to %v; want a spread over %v", requestsPerCase, seen, e.pods)
	}
	t.Logf("distribution %v", seen)
}

// TestServicePaths is the mode × policy × entry matrix on one cluster,
// switching mode and policy at run time as kube-proxy would.
func TestServicePaths(t *testing.T) {
	c := testbedtest.ForTest(t, testbed.Options{})
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		for _, policy := range []testbed.Policy{testbed.PolicyCluster, testbed.PolicyLocal} {
			t.Run(fmt.Sprintf("%s/%s", mode, policy), func(t *testing.T) {
				if err := c.SetMode(t.Context(), mode); err != nil {
					t.Fatal(err)
				}
				if err := c.SetPolicy(t.Context(), policy); err != nil {
					t.Fatal(err)
				}
				for _, e := range entries(c, policy) {
					t.Run(e.name, func(t *testing.T) { checkEntry(t, c, e) })
				}
			})
		}
	}
}

// nsExec runs a command in a named namespace, for checks independent of
// the package's own plumbing.
func nsExec(t *testing.T, nsPath string, args ...string) (string, error) {
	t.Helper()
	name := nsPath[strings.LastIndex(nsPath, "/")+1:]
	out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput()
	return string(out), err
}

// TestModeSwitchRemovesOtherMode checks iptables-nft and nft rules never
// coexist on a node after a switch.
func TestModeSwitchRemovesOtherMode(t *testing.T) {
	c := testbedtest.ForTest(t, testbed.Options{Mode: testbed.ModeIPTables})
	n := c.Nodes[0]
	if out, _ := nsExec(t, n.Netns, "iptables-save", "-t", "nat"); !strings.Contains(out, "KUBE-SVC-") {
		t.Fatalf("iptables mode: no KUBE-SVC chain in nat table:\n%s", out)
	}
	if err := c.SetMode(t.Context(), testbed.ModeNFTables); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"nat", "filter"} {
		if out, _ := nsExec(t, n.Netns, "iptables-save", "-t", table); strings.Contains(out, "KUBE-") {
			t.Errorf("nftables mode: iptables %s table still has KUBE- rules:\n%s", table, out)
		}
	}
	if out, err := nsExec(t, n.Netns, "nft", "list", "table", "ip", "kube-proxy"); err != nil || !strings.Contains(out, "numgen random mod 3") {
		t.Errorf("nftables mode: table ip kube-proxy missing or without 3-way numgen (%v):\n%s", err, out)
	}
	if err := c.SetMode(t.Context(), testbed.ModeIPTables); err != nil {
		t.Fatal(err)
	}
	if out, err := nsExec(t, n.Netns, "nft", "list", "table", "ip", "kube-proxy"); err == nil {
		t.Errorf("iptables mode: table ip kube-proxy still present:\n%s", out)
	}
}

// TestNoEndpointsRejected checks kube-proxy's REJECT for a service without
// endpoints: a refusal, not a hang, on every entry.
func TestNoEndpointsRejected(t *testing.T) {
	c := testbedtest.ForTest(t, testbed.Options{})
	empty := c.Empty()
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			if err := c.SetMode(t.Context(), mode); err != nil {
				t.Fatal(err)
			}
			targets := map[string]struct {
				from string
				to   netip.AddrPort
			}{"ClusterIP": {c.ClientPod.Netns, empty.ClusterAddr()}}
			for _, n := range c.Nodes {
				targets["NodePort/"+n.Name] = struct {
					from string
					to   netip.AddrPort
				}{c.Client.Netns, empty.NodePortAddr(n)}
			}
			for name, tg := range targets {
				for range 10 {
					r := c.Request(t.Context(), tg.from, tg.to, 0, 0)
					if !testbed.IsRefused(r.Err) {
						t.Fatalf("%s %s: err %v, want connection refused", name, tg.to, r.Err)
					}
					if d := r.End.Sub(r.Start); d > 500*time.Millisecond {
						t.Errorf("%s: refusal took %v; a SYN was dropped", name, d)
					}
				}
			}
			for _, n := range c.Nodes {
				if err := c.RouteLB(n.Index); err != nil {
					t.Fatal(err)
				}
				if r := c.Request(t.Context(), c.Client.Netns, empty.LoadBalancerAddr(), 0, 0); !testbed.IsRefused(r.Err) {
					t.Errorf("LB via %s: err %v, want connection refused", n.Name, r.Err)
				}
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestLocalWithoutLocalEndpoints uses a third node without pods: under
// Local its NodePort and LB entry must drop (kube-proxy's filter DROP), under
// Cluster it must forward to the other nodes' pods.
func TestLocalWithoutLocalEndpoints(t *testing.T) {
	c := testbedtest.ForTest(t, testbed.Options{Nodes: 3, Policy: testbed.PolicyLocal})
	n3 := c.Nodes[2]
	web := c.Web()
	if err := c.RouteLB(3); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			if err := c.SetMode(t.Context(), mode); err != nil {
				t.Fatal(err)
			}
			if err := c.SetPolicy(t.Context(), testbed.PolicyLocal); err != nil {
				t.Fatal(err)
			}
			for _, to := range []netip.AddrPort{web.NodePortAddr(n3), web.LoadBalancerAddr()} {
				ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
				r := c.Request(ctx, c.Client.Netns, to, 0, 0)
				cancel()
				if !isTimeout(r.Err) {
					t.Errorf("Local, %s on node3 without endpoints: err %v, want a timeout (drop)", to, r.Err)
				}
			}
			// Pods keep cluster-wide balancing for the LB IP even
			// under Local.
			r := c.Request(t.Context(), c.ClientPod.Netns, web.LoadBalancerAddr(), 0, 0)
			if r.Err != nil || r.SeenRemote != r.Local {
				t.Errorf("Local, pod to LB IP: %+v, want success without SNAT", r)
			}
			if err := c.SetPolicy(t.Context(), testbed.PolicyCluster); err != nil {
				t.Fatal(err)
			}
			checkEntry(t, c, entry{from: c.Client.Netns, target: web.NodePortAddr(n3), pods: allPods(c), snatTo: n3.IP})
		})
	}
}

// TestSetEndpoints changes the endpoint set at run time, as a rollout does.
func TestSetEndpoints(t *testing.T) {
	c := testbedtest.ForTest(t, testbed.Options{Mode: testbed.ModeNFTables})
	web := c.Web()
	if err := c.SetEndpoints(t.Context(), testbed.ServiceWeb, "pod-c"); err != nil {
		t.Fatal(err)
	}
	checkEntry(t, c, entry{from: c.ClientPod.Netns, target: web.ClusterAddr(), pods: []string{"pod-c"}})
	if err := c.SetEndpoints(t.Context(), testbed.ServiceWeb); err != nil {
		t.Fatal(err)
	}
	if r := c.Request(t.Context(), c.ClientPod.Netns, web.ClusterAddr(), 0, 0); !testbed.IsRefused(r.Err) {
		t.Errorf("no endpoints: err %v, want refused", r.Err)
	}
	if err := c.SetEndpoints(t.Context(), testbed.ServiceWeb, "pod-a", "pod-b", "pod-c"); err != nil {
		t.Fatal(err)
	}
	checkEntry(t, c, entry{from: c.ClientPod.Netns, target: web.ClusterAddr(), pods: allPods(c)})
	if err := c.SetEndpoints(t.Context(), testbed.ServiceWeb, "cpod"); err == nil {
		t.Error("client pod accepted as an endpoint")
	}
}

// TestHTTPClientKeepAlive checks that the keep-alive client reuses one
// connection (one pod, one source port) and the other does not. Whether a
// request reused a connection is the transport's own report (httptrace):
// source tuples cannot tell, because a closed connection's port may be
// chosen again for the next one (a CI run saw 19 tuples for 20 fresh
// connections).
func TestHTTPClientKeepAlive(t *testing.T) {
	c := testbedtest.ForTest(t, testbed.Options{})
	url := "http://" + c.Web().LoadBalancerAddr().String() + "/"
	for _, keep := range []bool{true, false} {
		hc := c.HTTPClient(c.Client.Netns, keep)
		remotes := map[string]bool{}
		pods := map[string]bool{}
		reused := 0
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			if i.Reused {
				reused++
			}
		}}
		for range 20 {
			req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), http.MethodGet, url, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s", resp.Status)
			}
			remotes[resp.Header.Get(testbed.HeaderRemoteAddr)] = true
			pods[resp.Header.Get(testbed.HeaderPod)] = true
		}
		if keep && (reused != 19 || len(remotes) != 1 || len(pods) != 1) {
			t.Errorf("keep-alive: %d of 20 requests reused a connection, %d source tuples, %d pods; want 19, 1 and 1", reused, len(remotes), len(pods))
		}
		if !keep && reused != 0 {
			t.Errorf("no keep-alive: %d of 20 requests reused a connection", reused)
		}
	}
}

func netnsWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var found []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			found = append(found, f[0])
		}
	}
	return found
}

// TestLifecycle checks teardown leaves nothing behind, Down is idempotent,
// Up cleans a crashed run's leftovers, and a stale cluster's Down does not
// destroy a newer cluster with the same prefix.
func TestLifecycle(t *testing.T) {
	testbedtest.Require(t)
	const prefix = "lbplife"
	ctx := t.Context()
	baseline := runtime.NumGoroutine()

	// A crashed run's leftover.
	if out, err := exec.Command("ip", "netns", "add", prefix+"-junk").CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	start := time.Now()
	first, err := testbed.Up(ctx, testbed.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Down() })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Up took %v, want < 2s", d)
	}
	got := netnsWithPrefix(t, prefix)
	if slices.Contains(got, prefix+"-junk") {
		t.Errorf("Up did not remove leftover %s-junk", prefix)
	}
	if len(got) != 2+2+4 { // lan, client, 2 nodes, 3 pods + cpod
		t.Errorf("namespaces after Up: %v", got)
	}

	// Up again without Down: the first cluster's names are taken over.
	second, err := testbed.Up(ctx, testbed.Options{Prefix: prefix, Mode: testbed.ModeNFTables})
	if err != nil {
		t.Fatalf("second Up: %v", err)
	}
	t.Cleanup(func() { _ = second.Down() })
	if err := first.Down(); err != nil {
		t.Errorf("stale Down: %v", err)
	}
	if got := netnsWithPrefix(t, prefix); len(got) != 8 {
		t.Errorf("stale Down removed the newer cluster's namespaces: %v", got)
	}
	if r := second.Request(ctx, second.ClientPod.Netns, second.Web().ClusterAddr(), 0, 0); r.Err != nil {
		t.Errorf("second cluster after stale Down: %v", r.Err)
	}
	_ = second.HTTPClient(second.Client.Netns, true)

	start = time.Now()
	if err := second.Down(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Down took %v", time.Since(start))
	if err := second.Down(); err != nil {
		t.Errorf("second Down: %v", err)
	}
	if got := netnsWithPrefix(t, prefix); len(got) != 0 {
		t.Errorf("namespaces left after Down: %v", got)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Down, %d before Up:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
	if err := testbed.Cleanup(prefix); err != nil {
		t.Errorf("Cleanup with nothing left: %v", err)
	}
}
