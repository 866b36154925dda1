package k8s

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lbpath/lbpath/deploy/images"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/testimages"
)

// Names of the images every real node gets; their refs are
// images.DefaultRegistry/<name>:<chart appVersion>.
var (
	PauseImage     = testimages.Pause.Name
	PodServerImage = testimages.PodServer.Name
)

// CoreDNSImage is the name of the cluster DNS image.
const CoreDNSImage = "coredns"

// PodNameEnv is the web container's variable holding its pod name (from the
// downward API), which the pod server answers with.
const PodNameEnv = "POD_NAME"

// nodeImages are the images the testbed itself runs on real nodes.
func nodeImages(corednsBin string) []images.Image {
	return append(slices.Clone(testimages.All), images.Image{
		Name: CoreDNSImage, Binary: corednsBin,
		Description: "CoreDNS " + CoreDNSVersion + " with only the plugins the testbed's cluster DNS uses (errors, health, ready, kubernetes, cache, chaos)",
	})
}

// CheckRealNodeHost reports what this host lacks to run real nodes, or nil:
// the tools the node processes exec, the CNI plugins, the cgroup controllers
// the kubelet requires, overlayfs for containerd's snapshots, and bridge
// netfilter for kube-proxy's rules to see bridged pod traffic.
func CheckRealNodeHost() error {
	if err := testbed.CheckHost(); err != nil {
		return err
	}
	var missing []string
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, tool := range []string{"runc", "nsenter", "unshare", "mount", "sh", "sleep"} {
		if !onPath(tool, path) {
			missing = append(missing, tool+" (apt-get install runc util-linux)")
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if !isExecutable(filepath.Join(CNIDir, p)) {
			missing = append(missing, filepath.Join(CNIDir, p)+" (apt-get install containernetworking-plugins)")
		}
	}
	have, err := cgroupControllers()
	if err != nil {
		return err
	}
	for _, c := range []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer"} {
		// cgroup v2 has no cpuacct, devices or freezer controllers.
		if !have[c] && !(have["cpu"] && (c == "cpuacct" || c == "devices" || c == "freezer") && v2Only()) {
			missing = append(missing, "cgroup controller "+c)
		}
	}
	if fs, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(fs), "\toverlay\n") {
		missing = append(missing, "overlay filesystem (modprobe overlay)")
	}
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		missing = append(missing, "bridge netfilter (modprobe br_netfilter)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("real testbed nodes need: %s", strings.Join(missing, "; "))
	}
	return nil
}

func onPath(tool, path string) bool {
	for _, d := range filepath.SplitList(path) {
		if isExecutable(filepath.Join(d, tool)) {
			return true
		}
	}
	return false
}

func v2Only() bool {
	hs, err := cgroupHierarchies()
	return err == nil && len(hs) == 1 && hs[0].v2
}

// prepareReal checks the host, finds or builds the node binaries and
// removes a crashed run's nodes, before anything is created.
func prepareReal(ctx context.Context, opt *Options) error {
	if err := CheckRealNodeHost(); err != nil {
		return err
	}
	if m := opt.Binaries.Missing(); len(m) > 0 {
		return fmt.Errorf("real nodes: missing %s", strings.Join(m, ", "))
	}
	if opt.NodeBinaries.Containerd == "" {
		var err error
		if opt.NodeBinaries, err = EnsureNodeBinaries(ctx, opt.Logger); err != nil {
			return err
		}
	} else if m := opt.NodeBinaries.Missing(); len(m) > 0 {
		return fmt.Errorf("real nodes: missing %s", strings.Join(m, ", "))
	}
	if err := cleanupNodes(opt.Prefix); err != nil {
		return fmt.Errorf("remove a previous run's real nodes: %w", err)
	}
	return nil
}

// buildImages builds the testbed's node images and opt.Images as OCI
// archives under the nodes' dir.
func (c *Cluster) buildImages(ctx context.Context) (map[string]images.Built, error) {
	start := time.Now()
	built, err := images.Build(ctx, images.Options{
		OutDir: filepath.Join(nodesDir(c.opt.Prefix), "images"),
		Images: append(nodeImages(c.opt.NodeBinaries.CoreDNS), c.opt.Images...),
	})
	if err != nil {
		return nil, fmt.Errorf("build node images: %w", err)
	}
	out := map[string]images.Built{}
	for _, b := range built {
		out[b.Image.Name] = b
	}
	c.log.Debug("node images built", "images", len(out), "took", time.Since(start).Round(time.Millisecond))
	return out, nil
}

// upReal brings the real nodes up on a running control plane with the Nodes
// and Services created: containerd per node (while the images build), the
// images imported, the kubelets, then kube-proxy, CoreDNS and web.
func (c *Cluster) upReal(ctx context.Context) error {
	type result struct {
		built map[string]images.Built
		err   error
	}
	imgs := make(chan result, 1)
	go func() {
		b, err := c.buildImages(ctx)
		imgs <- result{b, err}
	}()
	// containerd starts while the images build: its config needs only
	// the sandbox image's ref, which the options determine.
	pauseRef, err := imageRef(PauseImage)
	if err == nil {
		err = c.routePodsFromHost(ctx)
	}
	if err != nil {
		<-imgs
		return err
	}
	for _, n := range c.TB.Nodes {
		c.RealNodes = append(c.RealNodes,
			newRealNode(c.opt.Prefix, n, c.CP, c.opt.NodeBinaries, c.opt.Binaries.Kubelet, pauseRef, c.log, c.opt.PodIPsPerNode))
	}
	start := time.Now()
	if err := eachNode(c.RealNodes, func(r *RealNode) error { return r.startRuntime(ctx) }); err != nil {
		<-imgs
		return err
	}
	c.log.Debug("containerd up on every node", "took", time.Since(start).Round(time.Millisecond))
	img := <-imgs
	if img.err != nil {
		return img.err
	}
	c.Images = img.built
	if c.Images[PauseImage].Ref != pauseRef {
		return fmt.Errorf("pause image built as %s, containerd expects %s", c.Images[PauseImage].Ref, pauseRef)
	}
	var archives []string
	for _, b := range c.Images {
		archives = append(archives, b.Archive)
	}
	if err := eachNode(c.RealNodes, func(r *RealNode) error {
		if err := r.ImportImages(ctx, archives...); err != nil {
			return err
		}
		return r.startKubelet()
	}); err != nil {
		return err
	}
	kubelets := time.Now()
	if err := c.waitNodesReady(ctx); err != nil {
		return err
	}
	c.log.Debug("real nodes ready", "took", time.Since(start).Round(time.Millisecond),
		"kubelet_to_ready", time.Since(kubelets).Round(time.Millisecond))
	if err := c.SetMode(ctx, c.opt.Mode); err != nil {
		return err
	}
	if err := createDNS(ctx, c.Client, c.Images[CoreDNSImage].Ref, c.opt.DNSReplicas); err != nil {
		return err
	}
	if err := c.createDeployment(ctx); err != nil {
		return err
	}
	if _, err := c.WaitWebReady(ctx); err != nil {
		return err
	}
	return c.WaitDNSReady(ctx)
}

// imageRef is the ref images.Build gives image name under default options.
func imageRef(name string) (string, error) {
	root, err := images.ModuleRoot()
	if err != nil {
		return "", err
	}
	tag, err := images.ChartAppVersion(root)
	if err != nil {
		return "", err
	}
	return images.Ref(images.Options{Registry: images.DefaultRegistry, Tag: tag}, images.Image{Name: name}), nil
}

// proxied reports whether every node's kube-proxy has written a DNAT to each
// pod: an EndpointSlice reaches the rules a moment after the API, and a
// request in between would only reach the pods that were ready before.
// `nft list ruleset` shows the rules of both modes (iptables is
// iptables-nft here).
func (c *Cluster) proxied(ctx context.Context, pods []WebPod) error {
	eps := make(map[string]netip.AddrPort, len(pods))
	for _, p := range pods {
		eps[p.Name] = netip.AddrPortFrom(p.IP, testbed.PodPort)
	}
	return c.proxiedTo(ctx, eps)
}

// proxiedTo reports whether every node's kube-proxy has written a DNAT to
// each endpoint (named by its pod, for the message).
func (c *Cluster) proxiedTo(ctx context.Context, eps map[string]netip.AddrPort) error {
	for _, n := range c.TB.Nodes {
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+n.Netns, "nft", "list", "ruleset").Output()
		if err != nil {
			return fmt.Errorf("list %s's rules: %w", n.Name, err)
		}
		for pod, ep := range eps {
			// iptables: "dnat to IP:port"; nftables: a map "IP . port".
			iptables := "dnat to " + ep.String()
			nftables := fmt.Sprintf("%s . %d", ep.Addr(), ep.Port())
			if !strings.Contains(string(out), iptables) && !strings.Contains(string(out), nftables) {
				return fmt.Errorf("kube-proxy on %s has no rule for pod %s (%s) yet", n.Name, pod, ep)
			}
		}
	}
	return nil
}

// eachNode runs fn for every node concurrently and joins the errors.
func eachNode(nodes []*RealNode, fn func(*RealNode) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, r := range nodes {
		wg.Go(func() { errs[i] = fn(r) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// routePodsFromHost routes every node's pod CIDR from the host over the host
// link, so host processes (a test's sink, Prometheus scraping a pod) reach
// pod IPs and pods' replies to testbed.HostIP come back. The routes live on
// the host link and go with it.
func (c *Cluster) routePodsFromHost(ctx context.Context) error {
	link := testbed.HostLinkName(c.opt.Prefix)
	for _, n := range c.TB.Nodes {
		out, err := exec.CommandContext(ctx, "ip", "route", "replace", n.PodCIDR.String(), "via", n.IP.String(),
			"dev", link).CombinedOutput()
		if err != nil {
			return fmt.Errorf("route %s from the host: %w: %s", n.PodCIDR, err, out)
		}
	}
	return nil
}

// waitNodesReady waits until every real node's kubelet reports Ready.
func (c *Cluster) waitNodesReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var last error
	for {
		last = c.nodesReady(ctx)
		if last == nil {
			return nil
		}
		for _, r := range c.RealNodes {
			if err := r.Failed(); err != nil {
				return fmt.Errorf("node %s: %w", r.Node.Name, err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for real nodes to be Ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) nodesReady(ctx context.Context) error {
	for _, r := range c.RealNodes {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, r.Node.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !nodeReady(n) {
			return fmt.Errorf("node %s not ready: %+v", r.Node.Name, n.Status.Conditions)
		}
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitDNSReady waits until every CoreDNS pod is available, a ready
// endpoint of Service kube-dns, and in every node's kube-proxy rules.
func (c *Cluster) WaitDNSReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		d, err := c.Client.AppsV1().Deployments(DNSNamespace).Get(ctx, DNSDeployment, metav1.GetOptions{})
		switch {
		case err != nil:
			last = err
		case d.Status.AvailableReplicas < *d.Spec.Replicas:
			last = fmt.Errorf("deployment %s: %+v", DNSDeployment, d.Status)
		default:
			last = c.dnsProxied(ctx, int(*d.Spec.Replicas))
			if last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for cluster DNS: %w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// dnsProxied reports whether kube-dns has replicas ready endpoints and
// every node's kube-proxy DNATs to each: Ready in the API is not yet
// reachable, and until every kube-proxy has a pod's DNAT the ClusterIP
// refuses or reaches only the others.
func (c *Cluster) dnsProxied(ctx context.Context, replicas int) error {
	eps, err := c.endpointsIn(ctx, DNSNamespace, DNSService)
	if err != nil {
		return err
	}
	want := map[string]netip.AddrPort{}
	for _, e := range eps {
		if e.Ready {
			want[e.Pod] = netip.AddrPortFrom(e.IP, 53)
		}
	}
	if len(want) < replicas {
		return fmt.Errorf("kube-dns endpoints %+v, want %d ready", eps, replicas)
	}
	return c.proxiedTo(ctx, want)
}

// Resolve looks name up through the cluster DNS Service, from inside the
// network namespace at nsPath (a node's: what a hostNetwork pod sees; or a
// pod's, see PodNetns), over TCP, and returns its IPv4 addresses. The query
// takes the path a pod's would: kube-proxy's DNAT of DNSServiceIP to a
// CoreDNS pod.
func (c *Cluster) Resolve(ctx context.Context, nsPath, name string) ([]netip.Addr, error) {
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			// A stream conn: the resolver frames the query for TCP.
			return testbed.DialFrom(ctx, nsPath, netip.AddrPortFrom(DNSServiceIP, 53))
		},
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return r.LookupNetIP(ctx, "ip4", name)
}

// PodNetns is a path to the network namespace of a running pod on a real
// node (/proc/<pid>/ns/net of one of its processes), for testbed.DialFrom,
// Resolve or netns.Do. It is valid while that process lives.
func (c *Cluster) PodNetns(ctx context.Context, namespace, name string) (string, error) {
	p, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	for _, r := range c.RealNodes {
		if r.Node.Name != p.Spec.NodeName {
			continue
		}
		pid, err := r.podPID(p.UID)
		if err != nil {
			return "", fmt.Errorf("pod %s/%s: %w", namespace, name, err)
		}
		return fmt.Sprintf("/proc/%d/ns/net", pid), nil
	}
	return "", fmt.Errorf("pod %s/%s is on %q, not on a real node", namespace, name, p.Spec.NodeName)
}

// podCgroups lists pod uid's cgroup directories on the node, one per
// hierarchy: the kubelet names a pod's cgroup pod<uid> (cgroupfs driver).
func (r *RealNode) podCgroups(uid types.UID) (map[string]string, error) {
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	want := "pod" + string(uid)
	out := map[string]string{}
	for _, m := range mounts {
		for _, dir := range cgroupTree(m, r.CgroupRoot) {
			if filepath.Base(dir) == want {
				out[m] = dir
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no cgroup named %s under %s", want, r.CgroupRoot)
	}
	return out, nil
}

// podPID finds a process of pod uid in its cgroups.
func (r *RealNode) podPID(uid types.UID) (int, error) {
	dirs, err := r.podCgroups(uid)
	if err != nil {
		return 0, err
	}
	for m, dir := range dirs {
		if pids := cgroupPIDs([]string{m}, strings.TrimPrefix(dir, m)); len(pids) > 0 {
			return pids[0], nil
		}
	}
	return 0, fmt.Errorf("pod %s has no process", uid)
}

// PodStats is a pod's resource use as its cgroups account it (all its
// containers and its sandbox).
type PodStats struct {
	// RSS is anonymous resident memory in bytes (v1 memory.stat
	// total_rss, v2 anon).
	RSS int64
	// CPU is the CPU time used since the pod started.
	CPU time.Duration
}

// PodStats reads the resource use of a running pod on a real node from its
// cgroups, for measurements such as the agent's RSS and CPU.
func (c *Cluster) PodStats(ctx context.Context, namespace, name string) (PodStats, error) {
	p, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return PodStats{}, err
	}
	for _, r := range c.RealNodes {
		if r.Node.Name != p.Spec.NodeName {
			continue
		}
		dirs, err := r.podCgroups(p.UID)
		if err != nil {
			return PodStats{}, fmt.Errorf("pod %s/%s: %w", namespace, name, err)
		}
		return readPodStats(dirs)
	}
	return PodStats{}, fmt.Errorf("pod %s/%s is on %q, not on a real node", namespace, name, p.Spec.NodeName)
}

func readPodStats(dirs map[string]string) (PodStats, error) {
	var st PodStats
	var haveMem, haveCPU bool
	for _, dir := range dirs {
		if b, err := os.ReadFile(filepath.Join(dir, "memory.stat")); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(l, " "); ok && (k == "total_rss" || k == "anon") {
					n, _ := strconv.ParseInt(v, 10, 64)
					st.RSS, haveMem = n, true
				}
			}
		}
		if b, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage")); err == nil {
			n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			st.CPU, haveCPU = time.Duration(n), true
		} else if b, err := os.ReadFile(filepath.Join(dir, "cpu.stat")); err == nil && !haveCPU {
			for _, l := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(l, " "); ok && k == "usage_usec" {
					n, _ := strconv.ParseInt(v, 10, 64)
					st.CPU, haveCPU = time.Duration(n)*time.Microsecond, true
				}
			}
		}
	}
	if !haveMem || !haveCPU {
		return st, fmt.Errorf("pod cgroups %v: memory or CPU accounting missing", dirs)
	}
	return st, nil
}

// stopReal stops every real node (see RealNode.Stop) and removes the image
// archives; the nodes' logs stay until the next Up.
func (c *Cluster) stopReal() error {
	if !c.opt.RealNodes {
		return nil
	}
	err := eachNode(c.RealNodes, (*RealNode).Stop)
	return errors.Join(err, os.RemoveAll(filepath.Join(nodesDir(c.opt.Prefix), "images")))
}

// Cleanup removes everything a crashed run of the cluster with this prefix
// left behind (Up does the same before it starts): the real nodes'
// containers, shims, cgroups and scratch dirs, the control plane's
// processes, and the testbed's namespaces with the host link.
func Cleanup(prefix string) error {
	var errs []error
	if err := cleanupNodes(prefix); err != nil {
		errs = append(errs, err)
	}
	o, err := ControlPlaneOptions{Name: prefix}.withDefaults()
	if err != nil {
		return err
	}
	if _, err := killLeftovers(o.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := testbed.Cleanup(prefix); err != nil {
		errs = append(errs, err)
	}
	// The host link goes with the LAN namespace, but only when the kernel
	// gets round to dismantling it; a snapshot taken right after must not
	// see it.
	if link := testbed.HostLinkName(prefix); linkExists(link) {
		if out, err := exec.Command("ip", "link", "del", link).CombinedOutput(); err != nil && linkExists(link) {
			errs = append(errs, fmt.Errorf("delete host link %s: %w: %s", link, err, out))
		}
	}
	return errors.Join(errs...)
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}
