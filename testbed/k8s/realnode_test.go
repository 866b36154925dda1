package k8s_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// realBinaries returns every binary a cluster with real nodes runs. Missing
// ones are built under LBPATH_REQUIRE_E2E=1 (CI), else the test skips.
func realBinaries(t *testing.T) (k8s.Binaries, k8s.NodeBinaries) {
	t.Helper()
	if err := k8s.CheckRealNodeHost(); err != nil {
		testenv.Unavailable(t, err.Error())
	}
	bins, err := k8s.FindBinaries()
	nodeBins, nerr := k8s.FindNodeBinaries()
	if err == nil && nerr == nil {
		return bins, nodeBins
	}
	if !testbedtest.Required() {
		testenv.Unavailable(t, fmt.Sprint(err, nerr))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	if bins, err = k8s.EnsureBinaries(ctx, slog.Default()); err != nil {
		t.Fatal(err)
	}
	if nodeBins, err = k8s.EnsureNodeBinaries(ctx, slog.Default()); err != nil {
		t.Fatal(err)
	}
	return bins, nodeBins
}

// TestRealNodes brings up two real kubelet + containerd nodes and checks them
// against the API and the kernel: the nodes are Ready, web's pods became
// Ready through their readiness probes and are the ready endpoints of web,
// the external client's requests through the LB IP (entering at either node)
// are answered by every pod and only by them, CoreDNS answers Service names
// from a node's and a pod's network namespace, and Down leaves the host as
// it was.
func TestRealNodes(t *testing.T) {
	testbedtest.Require(t)
	bins, nodeBins := realBinaries(t)
	prefix := testbedtest.DefaultPrefix()
	before, err := k8s.TakeHostSnapshot(prefix)
	if err != nil {
		t.Fatal(err)
	}
	opt := k8s.Options{Prefix: prefix, RealNodes: true, Binaries: bins, NodeBinaries: nodeBins}
	if testing.Verbose() {
		opt.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := k8s.Up(ctx, opt)
	if err != nil {
		t.Fatalf("k8s testbed with real nodes up: %v", err)
	}
	t.Logf("up in %v (kubeconfig %s)", time.Since(start).Round(time.Millisecond), c.Kubeconfig())
	down := func() {
		if c == nil {
			return
		}
		err := c.Down()
		c = nil
		if err != nil {
			t.Errorf("down: %v", err)
		}
	}
	defer down()

	t.Run("nodes", func(t *testing.T) { checkRealNodes(t, ctx, c) })
	pods := checkWebPods(t, ctx, c)
	t.Run("lb", func(t *testing.T) { checkLBTraffic(t, ctx, c, pods, testbed.PolicyCluster) })
	t.Run("dns", func(t *testing.T) { checkDNS(t, ctx, c, pods) })
	t.Run("nftables-local", func(t *testing.T) {
		// kube-proxy's other mode writes other rules (a verdict map in
		// nftables), and Local keeps traffic on the entry node.
		if err := c.SetMode(ctx, testbed.ModeNFTables); err != nil {
			t.Fatal(err)
		}
		if err := c.SetPolicy(ctx, testbed.PolicyLocal); err != nil {
			t.Fatal(err)
		}
		pods, err := c.WaitWebReady(ctx)
		if err != nil {
			t.Fatal(err)
		}
		checkLBTraffic(t, ctx, c, pods, testbed.PolicyLocal)
	})
	logNodeMemory(t, c)
	for _, p := range pods {
		st, err := c.PodStats(ctx, k8s.Namespace, p.Name)
		if err != nil || st.RSS <= 0 || st.CPU <= 0 {
			t.Errorf("pod %s stats %+v, %v: want its cgroups' memory and CPU", p.Name, st, err)
		}
		t.Logf("pod %s: RSS %d KiB, CPU %v", p.Name, st.RSS>>10, st.CPU)
	}

	down()
	after, err := k8s.TakeHostSnapshot(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(after); len(d) > 0 {
		t.Errorf("the host differs after Down:\n%s", strings.Join(d, "\n"))
	}
}

func checkRealNodes(t *testing.T, ctx context.Context, c *k8s.Cluster) {
	for _, r := range c.RealNodes {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, r.Node.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		info := n.Status.NodeInfo
		if info.KubeletVersion != k8s.KubernetesVersion {
			t.Errorf("%s: kubelet version %q, want %s", n.Name, info.KubeletVersion, k8s.KubernetesVersion)
		}
		if want := "containerd://" + strings.TrimPrefix(k8s.ContainerdVersion, "v"); !strings.HasPrefix(info.ContainerRuntimeVersion, want) {
			t.Errorf("%s: runtime %q, want %s", n.Name, info.ContainerRuntimeVersion, want)
		}
		var internal string
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = a.Address
			}
		}
		if internal != r.Node.IP.String() {
			t.Errorf("%s: InternalIP %q, want %s", n.Name, internal, r.Node.IP)
		}
		ready := false
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				ready = cond.Status == corev1.ConditionTrue && cond.Reason == "KubeletReady"
			}
		}
		if !ready {
			t.Errorf("%s: not Ready by its kubelet: %+v", n.Name, n.Status.Conditions)
		}
		if len(n.Spec.Taints) > 0 {
			t.Errorf("%s: taints %+v remain", n.Name, n.Spec.Taints)
		}
	}
}

// checkWebPods checks that web's pods run in containerd on the real nodes,
// got their IPs from the node's CNI range, and were marked Ready by the
// kubelet after their readiness probe passed; WaitWebReady (in Up) already
// checked that exactly these pods are web's ready endpoints.
func checkWebPods(t *testing.T, ctx context.Context, c *k8s.Cluster) []k8s.WebPod {
	pods, err := c.WaitWebReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 3 {
		t.Fatalf("%d web pods, want 3", len(pods))
	}
	for _, wp := range pods {
		p, err := c.Client.CoreV1().Pods(k8s.Namespace).Get(ctx, wp.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node := c.TB.Nodes[slices.IndexFunc(c.TB.Nodes, func(n *testbed.Node) bool { return n.Name == wp.Node })]
		if !node.PodCIDR.Contains(wp.IP) {
			t.Errorf("pod %s on %s has IP %s outside the node's pod CIDR %s", wp.Name, wp.Node, wp.IP, node.PodCIDR)
		}
		cs := p.Status.ContainerStatuses
		if len(cs) != 1 || !cs[0].Ready || !strings.HasPrefix(cs[0].ContainerID, "containerd://") || cs[0].State.Running == nil {
			t.Errorf("pod %s: container status %+v, want one running, ready containerd container", wp.Name, cs)
		}
		if p.Spec.Containers[0].ReadinessProbe == nil {
			t.Errorf("pod %s has no readiness probe", wp.Name)
		}
	}
	return pods
}

// checkLBTraffic sends requests from the external client to web's LB IP,
// entering at each node in turn, until every pod that may answer has: all
// of them under policy Cluster, the entry node's own under Local, where the
// pod must also see the client's address. An answer from any other pod
// fails.
func checkLBTraffic(t *testing.T, ctx context.Context, c *k8s.Cluster, pods []k8s.WebPod, policy testbed.Policy) {
	web := c.TB.Web()
	target := netip.AddrPortFrom(web.LoadBalancerIP, web.Port)
	for _, n := range c.TB.Nodes {
		if err := c.TB.RouteLB(n.Index); err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{}
		for _, p := range pods {
			if policy == testbed.PolicyCluster || p.Node == n.Name {
				want[p.Name] = true
			}
		}
		if len(want) == 0 {
			// Local without a local endpoint: kube-proxy drops.
			if res := c.TB.Request(ctx, c.TB.Client.Netns, target, 0, 0); res.Err == nil {
				t.Errorf("via %s (policy %s, no pod there) answered by %q, want no answer", n.Name, policy, res.Pod)
			}
			continue
		}
		seen := map[string]int{}
		for i := 0; i < 200 && len(seen) < len(want); i++ {
			res := c.TB.Request(ctx, c.TB.Client.Netns, target, 0, 0)
			if res.Err != nil {
				t.Fatalf("request %d via %s: %v", i, n.Name, res.Err)
			}
			if !want[res.Pod] {
				t.Fatalf("request %d via %s (policy %s) answered by %q, want one of %v", i, n.Name, policy, res.Pod, want)
			}
			if policy == testbed.PolicyLocal && res.SeenRemote.Addr() != testbed.ClientIP {
				t.Errorf("request %d via %s (policy Local): pod saw %s, want the client %s", i, n.Name, res.SeenRemote, testbed.ClientIP)
			}
			seen[res.Pod]++
		}
		if len(seen) != len(want) {
			t.Errorf("via %s only %v answered, want all of %v", n.Name, seen, want)
		}
		t.Logf("policy %s via %s: %v", policy, n.Name, seen)
	}
}

// checkDNS resolves Service names through kube-dns from a node's network
// namespace (a hostNetwork pod's view) and from inside a web pod.
func checkDNS(t *testing.T, ctx context.Context, c *k8s.Cluster, pods []k8s.WebPod) {
	web := c.TB.Web()
	podNetns, err := c.PodNetns(ctx, k8s.Namespace, pods[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range []struct{ what, netns string }{
		{"node1", c.TB.Nodes[0].Netns},
		{"node2", c.TB.Nodes[1].Netns},
		{"pod " + pods[0].Name, podNetns},
	} {
		for name, want := range map[string]netip.Addr{
			"web.default.svc.cluster.local":          web.ClusterIP,
			"kube-dns.kube-system.svc.cluster.local": k8s.DNSServiceIP,
		} {
			got, err := c.Resolve(ctx, from.netns, name)
			if err != nil {
				t.Errorf("resolve %s from %s: %v", name, from.what, err)
				continue
			}
			if len(got) != 1 || got[0] != want {
				t.Errorf("resolve %s from %s: %v, want %s", name, from.what, got, want)
			}
		}
		if got, err := c.Resolve(ctx, from.netns, "nothing.default.svc.cluster.local"); err == nil {
			t.Errorf("resolve a Service that does not exist from %s: %v, want NXDOMAIN", from.what, got)
		}
	}
}

func logNodeMemory(t *testing.T, c *k8s.Cluster) {
	for _, r := range c.RealNodes {
		for _, p := range r.Processes() {
			t.Logf("%s %s: RSS %d MiB", r.Node.Name, p.Name, p.RSS>>20)
		}
	}
}

// crashChildEnv makes the test binary, started by TestRealNodesCrashCleanup,
// bring up a cluster with real nodes under the prefix it names, print
// "up", and wait to be killed.
const crashChildEnv = "LBPATH_TEST_REALNODE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if prefix := os.Getenv(crashChildEnv); prefix != "" {
		os.Exit(crashChild(prefix))
	}
	os.Exit(m.Run())
}

func crashChild(prefix string) int {
	bins, err := k8s.FindBinaries()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	nodeBins, err := k8s.FindNodeBinaries()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := k8s.Up(ctx, k8s.Options{Prefix: prefix, RealNodes: true, Binaries: bins, NodeBinaries: nodeBins}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("up")
	select {}
}

// TestRealNodesCrashCleanup kills a process that brought up real nodes, as a
// crash or `go test -timeout` would, and checks that Cleanup (which Up runs
// first) removes everything it left: containerd's shims and the containers
// outlive their parent, so this is more than the kernel killing our
// children.
func TestRealNodesCrashCleanup(t *testing.T) {
	testbedtest.Require(t)
	realBinaries(t)
	prefix := testbedtest.DefaultPrefix()
	before, err := k8s.TakeHostSnapshot(prefix)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+prefix)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	up := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "up\n" {
			err = fmt.Errorf("child said %q", line)
		}
		up <- err
	}()
	select {
	case err := <-up:
		if err != nil {
			t.Fatalf("child did not come up: %v", err)
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("child did not come up in 5 minutes")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	// What a crash leaves: at least the shims and containers, which are
	// not our children.
	time.Sleep(500 * time.Millisecond)
	crashed, err := k8s.TakeHostSnapshot(prefix)
	if err != nil {
		t.Fatal(err)
	}
	left := before.Diff(crashed)
	if !slices.ContainsFunc(left, func(l string) bool { return strings.Contains(l, "containerd-shim") }) {
		t.Errorf("no containerd shim survived the crash; the test proves less than it claims:\n%s", strings.Join(left, "\n"))
	}
	t.Logf("a crash left %d differences, e.g. %v", len(left), left[:min(len(left), 8)])

	if err := k8s.Cleanup(prefix); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	after, err := k8s.TakeHostSnapshot(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(after); len(d) > 0 {
		t.Errorf("the host differs after Cleanup:\n%s", strings.Join(d, "\n"))
	}
}
