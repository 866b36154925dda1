package k8s_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// upForTest brings up a cluster for t, or skips t when the host or the
// binaries are missing. Under LBPATH_REQUIRE_E2E=1 missing binaries are
// built instead (minutes), so CI cannot pass by skipping.
func upForTest(t *testing.T, opt k8s.Options) *k8s.Cluster {
	t.Helper()
	testbedtest.Require(t)
	bins, err := k8s.FindBinaries()
	if err != nil {
		if !testbedtest.Required() {
			testbedtest.Unavailable(t, err.Error())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		if bins, err = k8s.EnsureBinaries(ctx, slog.Default()); err != nil {
			t.Fatal(err)
		}
	}
	if opt.Prefix == "" {
		opt.Prefix = testbedtest.DefaultPrefix()
	}
	opt.Binaries = bins
	if testing.Verbose() {
		opt.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := k8s.Up(ctx, opt)
	if err != nil {
		t.Fatalf("k8s testbed up: %v", err)
	}
	t.Logf("up in %v (kubeconfig %s)", time.Since(start).Round(time.Millisecond), c.Kubeconfig())
	t.Cleanup(func() {
		if err := c.Down(); err != nil {
			t.Errorf("k8s testbed down: %v", err)
		}
	})
	return c
}

func podNames(pods []k8s.WebPod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

func podsOnNode(pods []k8s.WebPod, node string) []string {
	var out []string
	for _, p := range pods {
		if p.Node == node {
			out = append(out, p.Name)
		}
	}
	return out
}

// path is one way into a service and what must come out of it.
type path struct {
	name   string
	from   string
	target netip.AddrPort
	lbVia  int
	// pods that may answer; empty means the connection must be refused,
	// nil with drop means it must time out.
	pods   []string
	snatTo netip.Addr // invalid: the pod sees the client unNATed
}

func webPaths(c *k8s.Cluster, pods []k8s.WebPod, policy testbed.Policy) []path {
	web := c.TB.Web()
	out := []path{{name: "ClusterIP", from: c.TB.ClientPod.Netns, target: web.ClusterAddr(), pods: podNames(pods)}}
	for _, n := range c.TB.Nodes {
		p := path{from: c.TB.Client.Netns, pods: podNames(pods), snatTo: n.IP}
		if policy == testbed.PolicyLocal {
			p.pods, p.snatTo = podsOnNode(pods, n.Name), netip.Addr{}
		}
		np, lb := p, p
		np.name, np.target = "NodePort/"+n.Name, web.NodePortAddr(n)
		lb.name, lb.target, lb.lbVia = "LB/via-"+n.Name, web.LoadBalancerAddr(), n.Index
		out = append(out, np, lb)
	}
	return out
}

// check sends n requests along p and returns the first violation.
func check(ctx context.Context, c *k8s.Cluster, p path, n int) (map[string]int, error) {
	if p.lbVia > 0 {
		if err := c.TB.RouteLB(p.lbVia); err != nil {
			return nil, err
		}
	}
	seen := map[string]int{}
	for i := range n {
		r := c.TB.Request(ctx, p.from, p.target, 0, 0)
		if r.Err != nil {
			return seen, fmt.Errorf("request %d to %s: %w", i, p.target, r.Err)
		}
		seen[r.Pod]++
		if !slices.Contains(p.pods, r.Pod) {
			return seen, fmt.Errorf("request %d answered by %q, want one of %v", i, r.Pod, p.pods)
		}
		if p.snatTo.IsValid() && r.SeenRemote.Addr() != p.snatTo {
			return seen, fmt.Errorf("pod %s saw %s, want SNAT to %s", r.Pod, r.SeenRemote, p.snatTo)
		}
		if !p.snatTo.IsValid() && r.SeenRemote != r.Local {
			return seen, fmt.Errorf("pod %s saw %s, want the client %s unNATed", r.Pod, r.SeenRemote, r.Local)
		}
	}
	if len(p.pods) > 1 && len(seen) < 2 {
		return seen, fmt.Errorf("all %d requests went to %v, want a spread over %v", n, seen, p.pods)
	}
	return seen, nil
}

// eventually retries fn until it succeeds: kube-proxy applies API changes
// asynchronously (~0.2 s).
func eventually(t *testing.T, what string, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func checkEndpointSlices(t *testing.T, c *k8s.Cluster, pods []k8s.WebPod) {
	t.Helper()
	eps, err := c.WebEndpoints(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != len(pods) {
		t.Fatalf("EndpointSlices of web: %+v, want %d endpoints", eps, len(pods))
	}
	for _, p := range pods {
		i := slices.IndexFunc(eps, func(e k8s.Endpoint) bool { return e.Pod == p.Name })
		if i < 0 {
			t.Errorf("pod %s missing from EndpointSlices %+v", p.Name, eps)
			continue
		}
		if e := eps[i]; e.IP != p.IP || e.Node != p.Node || !e.Ready {
			t.Errorf("endpoint %+v, want IP %s node %s ready", e, p.IP, p.Node)
		}
		i = slices.IndexFunc(c.TB.Nodes, func(n *testbed.Node) bool { return n.Name == p.Node })
		if i < 0 {
			t.Errorf("pod %s on unknown node %q", p.Name, p.Node)
			continue
		}
		if node := c.TB.Nodes[i]; !node.PodCIDR.Contains(p.IP) {
			t.Errorf("pod %s on %s has IP %s outside %s", p.Name, p.Node, p.IP, node.PodCIDR)
		}
		if tp := c.TB.Pod(p.Name); tp == nil || tp.IP != p.IP || tp.Node.Name != p.Node {
			t.Errorf("testbed pod for %+v: %+v", p, tp)
		}
	}
	empty, err := c.Endpoints(t.Context(), testbed.ServiceEmpty)
	if err != nil {
		t.Fatal(err)
	}
	if len(empty) != 0 {
		t.Errorf("Service empty has endpoints %+v", empty)
	}
}

func checkEmptyRefused(t *testing.T, c *k8s.Cluster) {
	t.Helper()
	empty := c.TB.Empty()
	targets := []path{{name: "ClusterIP", from: c.TB.ClientPod.Netns, target: empty.ClusterAddr()}}
	for _, n := range c.TB.Nodes {
		targets = append(targets,
			path{name: "NodePort/" + n.Name, from: c.TB.Client.Netns, target: empty.NodePortAddr(n)},
			path{name: "LB/via-" + n.Name, from: c.TB.Client.Netns, target: empty.LoadBalancerAddr(), lbVia: n.Index})
	}
	for _, p := range targets {
		if p.lbVia > 0 {
			if err := c.TB.RouteLB(p.lbVia); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "empty "+p.name, 5*time.Second, func() error {
			r := c.TB.Request(t.Context(), p.from, p.target, 0, 0)
			if !testbed.IsRefused(r.Err) {
				return fmt.Errorf("%s: err %v, want connection refused", p.target, r.Err)
			}
			return nil
		})
	}
}

// TestKubeProxyModes runs the mode × policy × entry matrix against the real
// kube-proxy, switching mode by restarting kube-proxy as a node upgrade would.
func TestKubeProxyModes(t *testing.T) {
	c := upForTest(t, k8s.Options{})
	pods, err := c.WaitWebReady(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("web pods %+v", pods)
	checkEndpointSlices(t, c, pods)
	checkKubectl(t, c, pods)
	for _, n := range c.TB.Nodes {
		if len(podsOnNode(pods, n.Name)) == 0 {
			t.Fatalf("no web pod on %s: %+v; Local policy paths need one per node", n.Name, pods)
		}
	}
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			start := time.Now()
			if err := c.SetMode(t.Context(), mode); err != nil {
				t.Fatal(err)
			}
			t.Logf("kube-proxy (re)started and synced on %d nodes in %v", len(c.TB.Nodes), time.Since(start).Round(time.Millisecond))
			checkRules(t, c, mode)
			for _, policy := range []testbed.Policy{testbed.PolicyCluster, testbed.PolicyLocal} {
				t.Run(string(policy), func(t *testing.T) {
					if err := c.SetPolicy(t.Context(), policy); err != nil {
						t.Fatal(err)
					}
					for _, p := range webPaths(c, pods, policy) {
						t.Run(p.name, func(t *testing.T) {
							var seen map[string]int
							eventually(t, p.name, 10*time.Second, func() (err error) {
								seen, err = check(t.Context(), c, p, 20)
								return err
							})
							t.Logf("distribution %v", seen)
						})
					}
				})
			}
			t.Run("empty", func(t *testing.T) { checkEmptyRefused(t, c) })
		})
	}
	logProcesses(t, c)
}

// checkKubectl points the kubectl on PATH, if any, at the admin kubeconfig.
func checkKubectl(t *testing.T, c *k8s.Cluster, pods []k8s.WebPod) {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Log("no kubectl on PATH; kubeconfig not checked with it")
		return
	}
	out, err := exec.Command(kubectl, "--kubeconfig", c.Kubeconfig(), "get", "nodes,pods,svc,endpointslices", "-o", "wide").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get: %v\n%s", err, out)
	}
	for _, want := range append(podNames(pods), "node1", "node2", "203.0.113.10", "10.96.0.10", "80:30080/TCP") {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl get output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("kubectl get:\n%s", out)
}

// checkRules looks at the kernel: the mode's kube-proxy rules exist on every
// node, the other mode's do not.
func checkRules(t *testing.T, c *k8s.Cluster, mode testbed.ProxyMode) {
	t.Helper()
	for _, n := range c.TB.Nodes {
		ns := n.Netns[strings.LastIndex(n.Netns, "/")+1:]
		ipt, _ := exec.Command("ip", "netns", "exec", ns, "iptables-save", "-t", "nat").CombinedOutput()
		nft, nftErr := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip", "kube-proxy").CombinedOutput()
		hasIPT := strings.Contains(string(ipt), "KUBE-SVC-")
		hasNFT := nftErr == nil && strings.Contains(string(nft), "service-")
		if mode == testbed.ModeIPTables && (!hasIPT || hasNFT) {
			t.Errorf("%s in iptables mode: KUBE-SVC chains %v, nft table %v", n.Name, hasIPT, hasNFT)
		}
		if mode == testbed.ModeNFTables && (hasIPT || !hasNFT) {
			t.Errorf("%s in nftables mode: KUBE-SVC chains %v, nft table %v (%v)\n%s\n%s", n.Name, hasIPT, hasNFT, nftErr, nft, ipt)
		}
	}
}

func logProcesses(t *testing.T, c *k8s.Cluster) {
	t.Helper()
	for _, p := range c.CP.Processes() {
		if p.Exited {
			t.Errorf("%s (pid %d) exited; see %s", p.Name, p.PID, p.Log)
		}
		t.Logf("process %-24s pid %-7d RSS %4d MiB", p.Name, p.PID, p.RSS>>20)
	}
}

// TestRollout changes the pod template: every pod is replaced, a freed IP is
// handed to a new pod, the EndpointSlices follow, and traffic reaches only
// the new, slower version afterwards.
func TestRollout(t *testing.T) {
	for _, grace := range []time.Duration{0, time.Second} {
		t.Run("grace="+grace.String(), func(t *testing.T) { testRollout(t, grace) })
	}
}

func testRollout(t *testing.T, grace time.Duration) {
	c := upForTest(t, k8s.Options{Mode: testbed.ModeNFTables, TerminationGrace: grace})
	old, err := c.WaitWebReady(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	const delay = 50 * time.Millisecond
	// Traffic through the rollout. Without a grace period pods go away
	// before kube-proxy has dropped them (~0.2 s), so some requests fail;
	// with one, none may.
	stopLoad := make(chan struct{})
	loadDone := make(chan [2]int)
	errKinds := map[string]int{}
	go func() {
		var ok, failed int
		for {
			select {
			case <-stopLoad:
				loadDone <- [2]int{ok, failed}
				return
			default:
			}
			if r := c.TB.Request(t.Context(), c.TB.ClientPod.Netns, c.TB.Web().ClusterAddr(), 0, 0); r.Err != nil {
				failed++
				errKinds[errKind(r.Err)]++
			} else {
				ok++
			}
		}
	}()
	start := time.Now()
	if err := c.SetWebDelay(t.Context(), delay); err != nil {
		t.Fatal(err)
	}
	pods, err := c.WaitWebReady(t.Context())
	close(stopLoad)
	load := <-loadDone
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("requests during the rollout: %d ok, %d failed %v", load[0], load[1], errKinds)
	if load[0] == 0 {
		t.Error("no request succeeded during the rollout")
	}
	if grace >= time.Second && load[1] > 0 {
		t.Errorf("%d requests failed during a rollout with %v termination grace", load[1], grace)
	}
	t.Logf("rollout took %v: %v → %v", time.Since(start).Round(time.Millisecond), podNames(old), podNames(pods))
	for _, p := range pods {
		if slices.ContainsFunc(old, func(o k8s.WebPod) bool { return o.Name == p.Name || o.UID == p.UID }) {
			t.Errorf("pod %s survived the rollout", p.Name)
		}
	}
	checkEndpointSlices(t, c, pods)

	// An IP reused means one IP assigned to two pods over time.
	byIP := map[netip.Addr][]string{}
	for _, a := range c.Kubelet.Assignments() {
		byIP[a.IP] = append(byIP[a.IP], a.Pod)
	}
	reused := 0
	for ip, ps := range byIP {
		if len(ps) > 1 {
			reused++
			t.Logf("IP %s reused by %v", ip, ps)
		}
	}
	// Without grace an old pod's IP is free before the next new pod
	// starts; with grace the old pods hold theirs until the rollout is
	// over, as on real nodes.
	if reused == 0 && grace == 0 {
		t.Errorf("no IP reused during the rollout: %v", byIP)
	}
	if added := c.TB.AddedPods(); len(added) != len(pods) {
		t.Errorf("testbed has %d pod namespaces after the rollout, want %d", len(added), len(pods))
	}

	web := c.TB.Web()
	eventually(t, "ClusterIP after rollout", 10*time.Second, func() error {
		_, err := check(t.Context(), c, path{from: c.TB.ClientPod.Netns, target: web.ClusterAddr(), pods: podNames(pods)}, 20)
		return err
	})
	for _, n := range c.TB.Nodes {
		if _, err := check(t.Context(), c, path{from: c.TB.Client.Netns, target: web.NodePortAddr(n), pods: podNames(pods), snatTo: n.IP}, 10); err != nil {
			t.Errorf("NodePort on %s after rollout: %v", n.Name, err)
		}
	}
	r := c.TB.Request(t.Context(), c.TB.Client.Netns, web.LoadBalancerAddr(), 0, 0)
	if r.Err != nil {
		t.Fatalf("LB after rollout: %v", r.Err)
	}
	if d := r.End.Sub(r.Start); d < delay {
		t.Errorf("new version answered in %v, want at least %v", d, delay)
	}
	checkEmptyRefused(t, c)
}

// TestStopLeavesNothing checks that Down kills every process and removes
// every namespace and the host link.
func TestStopLeavesNothing(t *testing.T) {
	const prefix = "lbpk8sstop"
	c := upForTest(t, k8s.Options{Prefix: prefix, Nodes: 2, Replicas: 2, Mode: testbed.ModeNFTables})
	procs := c.CP.Processes()
	if len(procs) != 3+2 { // etcd, apiserver, controller-manager, 2 kube-proxies
		t.Errorf("processes %+v, want 5", procs)
	}
	logProcesses(t, c)
	start := time.Now()
	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Down took %v", time.Since(start).Round(time.Millisecond))
	for _, p := range procs {
		if err := syscall.Kill(p.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still exists after Down: %v", p.Name, p.PID, err)
		}
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, prefix+"-") {
			t.Errorf("namespace left after Down: %s", l)
		}
	}
	if _, err := net.InterfaceByName(testbed.HostLinkName(prefix)); err == nil {
		t.Errorf("host link %s left after Down", testbed.HostLinkName(prefix))
	}
	if err := c.Down(); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// errKind reduces a request error to its cause, for a histogram.
func errKind(err error) string {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return "timeout"
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestStartKillsLeftovers starts a control plane over the state dir of one
// that was never stopped, as after a crash, and checks the first one's
// processes are gone. It needs no testbed: the apiserver binds loopback.
func TestStartKillsLeftovers(t *testing.T) {
	bins, err := k8s.FindBinaries()
	if err != nil {
		testbedtest.Unavailable(t, err.Error())
	}
	opt := k8s.ControlPlaneOptions{Binaries: bins, Name: "lbpk8sleftover"}
	first, err := k8s.Start(t.Context(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Stop() })
	stale := first.Processes()
	second, err := k8s.Start(t.Context(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = second.Stop() })
	for _, p := range stale {
		// Killed children of ours linger as zombies until reaped.
		deadline := time.Now().Add(2 * time.Second)
		for syscall.Kill(p.PID, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if err := syscall.Kill(p.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("leftover %s (pid %d) survived the next Start: %v", p.Name, p.PID, err)
		}
	}
	if _, err := second.Client.CoreV1().Namespaces().Get(t.Context(), "default", metav1.GetOptions{}); err != nil {
		t.Errorf("second control plane: %v", err)
	}
}
