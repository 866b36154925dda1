package k8s

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/testbed"
)

// DNSServiceIP is the ClusterIP of Service kube-system/kube-dns, the
// kubelets' clusterDNS. Clusters usually take .10 of the Service range, which
// the testbed gives Service web.
var DNSServiceIP = netip.MustParseAddr("10.96.0.53")

// ClusterDomain is the kubelets' clusterDomain and CoreDNS's zone.
const ClusterDomain = "cluster.local"

// CNIDir is where Debian's containernetworking-plugins installs the plugins.
const CNIDir = "/usr/lib/cni"

// nodePath is the PATH of containerd and kubelet: containerd finds its shim
// (next to it) and runc there, the kubelet mount and umount.
func nodePath(b NodeBinaries) string {
	return b.ContainerdDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

// kubeletSysctls are the host-wide sysctls the kubelet sets to these values
// when they differ (setupKernelTunables). They are not per network
// namespace, so the node's mount namespace shows the kubelet files that
// already hold them, and the host's stay as they were.
var kubeletSysctls = [][2]string{
	{"vm/overcommit_memory", "1"},
	{"vm/panic_on_oom", "0"},
	{"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"},
	{"kernel/keys/root_maxbytes", "25000000"},
}

// RealNode is a testbed node that runs the real containerd and kubelet in
// its network namespace. Both share a private mount namespace (held by a
// "holder" process) in which /run, /var/lib and /var/log are the node's own
// scratch directories: kubelet, containerd and the CNI plugins write fixed
// paths there even with custom root dirs, and two nodes on one host would
// otherwise share them. Its pods' cgroups live under CgroupRoot.
type RealNode struct {
	// Node is the testbed node: namespace, LAN address, pod CIDR.
	Node *testbed.Node
	// Dir is the node's scratch dir; the logs (holder.log,
	// containerd.log, kubelet.log) stay there after Stop.
	Dir string
	// CgroupRoot is the kubelet's cgroupRoot, present in every cgroup
	// hierarchy while the node runs.
	CgroupRoot string
	// ContainerdSocket is containerd's gRPC socket, for `ctr --address`.
	ContainerdSocket string
	// PodIPs is the size of the host-local range; 0: .2 to .199.
	PodIPs int

	bins     NodeBinaries
	kubelet  string
	cp       *ControlPlane
	log      *slog.Logger
	st       *stateDir
	pauseRef string

	mu      sync.Mutex
	procs   []*process // holder, containerd, kubelet
	stopped bool
}

// nodesDir is where a cluster's real nodes keep their scratch dirs; Up
// removes a crashed run's first.
func nodesDir(prefix string) string {
	return filepath.Join(os.TempDir(), "lbpath-nodes-"+prefix)
}

// cgroupRootOf is a node's cgroupRoot; cleanupNodes finds a crashed run's by
// the prefix.
func cgroupRootOf(prefix, node string) string {
	return "/lbpath-" + prefix + "-" + node
}

func newRealNode(prefix string, n *testbed.Node, cp *ControlPlane, bins NodeBinaries, kubelet, pauseRef string, log *slog.Logger, podIPs int) *RealNode {
	dir := filepath.Join(nodesDir(prefix), n.Name)
	return &RealNode{
		Node: n, Dir: dir, CgroupRoot: cgroupRootOf(prefix, n.Name),
		ContainerdSocket: filepath.Join(dir, "containerd.sock"),
		bins:             bins, kubelet: kubelet, cp: cp, log: log.With("node", n.Name),
		st: &stateDir{dir: dir}, pauseRef: pauseRef, PodIPs: podIPs,
	}
}

func (r *RealNode) path(elem ...string) string {
	return filepath.Join(append([]string{r.Dir}, elem...)...)
}

// startRuntime prepares the node's directories, configs and cgroupRoot, and
// starts the mount-namespace holder and containerd; it returns once
// containerd answers. Images are imported next, then StartKubelet.
func (r *RealNode) startRuntime(ctx context.Context) error {
	if err := r.writeFiles(); err != nil {
		return err
	}
	if err := createCgroup(r.CgroupRoot); err != nil {
		return err
	}
	holder, err := r.start("holder", nil, "unshare", "--mount", "--propagation", "private",
		"nsenter", "--net="+r.Node.Netns, "sh", "-c", holderScript, "sh", r.Dir+"/")
	if err != nil {
		return err
	}
	if err := r.waitFor(ctx, "mount namespace", 10*time.Second, func() bool {
		_, err := os.Stat(r.path("ready"))
		return err == nil
	}); err != nil {
		return err
	}
	pid := strconv.Itoa(holder.cmd.Process.Pid)
	env := []string{"PATH=" + nodePath(r.bins), "TMPDIR=" + r.path("containerd", "tmp")}
	if _, err := r.start("containerd", env, "nsenter", "--target", pid, "--mount", "--net", "--",
		r.bins.Containerd, "--config", r.path("containerd.toml")); err != nil {
		return err
	}
	return r.waitFor(ctx, "containerd", 30*time.Second, func() bool {
		c, err := net.Dial("unix", r.ContainerdSocket)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// startKubelet starts the kubelet in the node's namespaces. Registration
// and readiness are the cluster's to wait for.
func (r *RealNode) startKubelet() error {
	r.mu.Lock()
	holder := r.procs[0]
	r.mu.Unlock()
	pid := strconv.Itoa(holder.cmd.Process.Pid)
	_, err := r.start("kubelet", []string{"PATH=" + nodePath(r.bins)},
		"nsenter", "--target", pid, "--mount", "--net", "--", r.kubelet,
		"--config="+r.path("kubelet.yaml"),
		"--kubeconfig="+r.path("kubelet.kubeconfig"),
		"--root-dir="+r.path("kubelet"),
		// The two fixed paths that have flags; the rest are under the
		// private /var/lib and /run.
		"--cert-dir="+r.path("kubelet", "pki"),
		"--volume-plugin-dir="+r.path("volume-plugins"),
		"--hostname-override="+r.Node.Name,
		"--node-ip="+r.Node.IP.String(),
		"--v=2",
	)
	return err
}

// holderScript runs as `sh -c holderScript sh <dir>` in a new private mount
// namespace that has joined the node's network namespace. It gives the node
// its own view of the fixed paths, then sleeps to keep the mount namespace
// alive; containerd and the kubelet enter it with nsenter. (`ip netns exec`
// cannot be used: it mounts a sysfs without the cgroup hierarchies.)
const holderScript = `set -eu
S=$1
# A sysfs mounted from this network namespace shows its interfaces (CNI and
# cadvisor read /sys/class/net); the host's cgroup hierarchies move onto it.
mount --rbind /sys/fs/cgroup "$S/mnt/cgroup"
mount -t sysfs sysfs /sys
mount --move "$S/mnt/cgroup" /sys/fs/cgroup
mount --bind "$S/run" /run
mount --bind "$S/var-lib" /var/lib
mount --bind "$S/var-log" /var/log
for f in "$S"/sysctl/*; do
	mount --bind "$f" "/proc/sys/$(basename "$f" | tr . /)"
done
touch "$S/ready"
exec sleep infinity
`

// writeFiles creates the scratch layout and the configs of containerd, the
// CNI plugins and the kubelet.
func (r *RealNode) writeFiles() error {
	for _, d := range []string{"mnt/cgroup", "run", "var-lib", "var-log", "sysctl", "containerd/root",
		"containerd/state", "containerd/tmp", "runc", "cni/net.d", "cni/ipam", "kubelet/pki",
		"volume-plugins", "pod-logs"} {
		if err := os.MkdirAll(r.path(d), 0o755); err != nil {
			return fmt.Errorf("node %s: %w", r.Node.Name, err)
		}
	}
	files := map[string]string{
		"containerd.toml":              r.containerdConfig(),
		"cni/net.d/10-lbpath.conflist": r.cniConfig(),
		"kubelet.yaml":                 r.kubeletConfig(),
		// No nameserver: nothing upstream is reachable from the LAN.
		// Pods with dnsPolicy ClusterFirst get CoreDNS from clusterDNS.
		"resolv.conf": "# lbpath testbed node: no upstream resolver\n",
	}
	for _, kv := range kubeletSysctls {
		files["sysctl/"+strings.ReplaceAll(kv[0], "/", ".")] = kv[1] + "\n"
	}
	for name, data := range files {
		if err := os.WriteFile(r.path(name), []byte(data), 0o644); err != nil {
			return fmt.Errorf("node %s: %w", r.Node.Name, err)
		}
	}
	return r.cp.NodeKubeconfig(r.path("kubelet.kubeconfig"), r.Node.Name)
}

// containerdConfig is containerd v2's config (version 3 schema): everything
// under the scratch dir, the pause image pinned as the sandbox image, and no
// plugin that would touch a host path (opt, NRI, image verifiers) or need
// what this machine lacks.
func (r *RealNode) containerdConfig() string {
	return fmt.Sprintf(`version = 3
root = %q
state = %q
temp = %q
imports = []
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.internal.v1.opt",
  "io.containerd.image-verifier.v1.bindir",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.mount-handler.v1.erofs",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE on this VM: runc cannot lower a sandbox's
  # oom_score_adj below its own, and fails every sandbox unless clamped.
  restrict_oom_score_adj = true
  # Pod network namespaces are pinned under the state dir, not the fixed
  # /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q
`, r.path("containerd", "root"), r.path("containerd", "state"), r.path("containerd", "tmp"),
		r.ContainerdSocket, r.ContainerdSocket+".ttrpc", r.pauseRef, r.path("runc"),
		CNIDir, r.path("cni", "net.d"))
}

// cniConfig is a bridge network over the node's pod CIDR: cni0 is the pods'
// gateway and routes like a node does, hairpin lets a pod reach itself
// through a Service. No masquerade: the testbed's routes carry pod addresses
// between nodes and to the host.
func (r *RealNode) cniConfig() string {
	cidr := r.Node.PodCIDR
	gw := cidr.Addr().Next()
	first := gw.Next()
	// .200 and up stay free: the testbed's client pod on node1 is
	// 10.244.1.200.
	last := netip.AddrFrom4([4]byte{cidr.Addr().As4()[0], cidr.Addr().As4()[1], cidr.Addr().As4()[2], 199})
	if r.PodIPs > 0 && r.PodIPs < 198 {
		a := first.As4()
		a[3] += byte(r.PodIPs - 1)
		last = netip.AddrFrom4(a)
	}
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "lbpath",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": %q,
      "ranges": [[{"subnet": %q, "gateway": %q, "rangeStart": %q, "rangeEnd": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
`, r.path("cni", "ipam"), cidr.String(), gw.String(), first.String(), last.String())
}

// kubeletConfig is the node's KubeletConfiguration. Every choice that differs
// from the defaults is there for this host or for tests:
//   - failCgroupV1: false and cgroupDriver cgroupfs: hybrid cgroups, and
//     PID 1 is not systemd;
//   - cgroupRoot: pods' cgroups under a per-node root that Stop removes;
//   - eviction and image GC thresholds that a small shared disk never hits,
//     so neither pods nor the imported images (which cannot be pulled
//     again) are evicted;
//   - webhook authentication and authorization, so the apiserver's client
//     certificate (logs) is accepted and nothing else.
func (r *RealNode) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
clusterDomain: %s
clusterDNS: [%s]
resolvConf: %s
podLogsDir: %s
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
rotateCertificates: false
`, r.CgroupRoot, r.ContainerdSocket, r.Node.IP, r.cp.CAFile(), ClusterDomain, DNSServiceIP,
		r.path("resolv.conf"), r.path("pod-logs"))
}

// start runs one of the node's processes, recorded in the node's pids file.
func (r *RealNode) start(name string, env []string, bin string, args ...string) (*process, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return nil, fmt.Errorf("node %s: start %s: stopped", r.Node.Name, name)
	}
	p, err := startProcessEnv(r.st, name, env, bin, args...)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", r.Node.Name, err)
	}
	r.procs = append(r.procs, p)
	return p, nil
}

// waitFor polls cond; a process of the node that exits fails the wait with
// its log.
func (r *RealNode) waitFor(ctx context.Context, what string, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if cond() {
			return nil
		}
		if err := r.Failed(); err != nil {
			return fmt.Errorf("node %s: wait for %s: %w", r.Node.Name, what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: wait for %s: %w (logs in %s)", r.Node.Name, what, ctx.Err(), r.Dir)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Failed reports a node process (holder, containerd, kubelet) that exited,
// with the end of its log, or nil.
func (r *RealNode) Failed() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		if p.exited() {
			return p.failure()
		}
	}
	return nil
}

// Processes reports the node's own processes (holder, containerd, kubelet)
// and containerd's shims, with their memory use. Containers are not
// included; their cgroups under CgroupRoot account for them.
func (r *RealNode) Processes() []ProcessInfo {
	r.mu.Lock()
	var out []ProcessInfo
	known := map[int]bool{}
	for _, p := range r.procs {
		out = append(out, p.info())
		known[p.cmd.Process.Pid] = true
	}
	r.mu.Unlock()
	for _, pid := range processesMentioning(r.Dir + "/") {
		if known[pid] {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		out = append(out, ProcessInfo{Name: strings.TrimSpace(string(comm)), PID: pid, RSS: rss(pid)})
	}
	return out
}

// Ctr runs ctr against the node's containerd in namespace k8s.io (the CRI
// one) and returns its output.
func (r *RealNode) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, r.bins.Ctr, append([]string{"--address", r.ContainerdSocket, "-n", "k8s.io"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("node %s: ctr %s: %w: %s", r.Node.Name, strings.Join(args, " "), err,
			lastLines(out.String(), 10))
	}
	return out.String(), nil
}

// ImportImages loads OCI archives into the node's containerd, where the
// kubelet finds them without pulling (imagePullPolicy IfNotPresent or Never
// with a fully qualified name).
func (r *RealNode) ImportImages(ctx context.Context, archives ...string) error {
	for _, a := range archives {
		if _, err := r.Ctr(ctx, "images", "import", a); err != nil {
			return err
		}
	}
	return nil
}

// Stop ends everything the node started: the kubelet first (it would
// restart containers), then every process in CgroupRoot (containers, pause
// processes), containerd and its shims, and the holder, whose exit takes the
// mount namespace with all its mounts and the pod network namespaces pinned
// there. Then the cgroups go, and the scratch dir except the logs. Safe to
// call twice, and after a failed start.
func (r *RealNode) Stop() error {
	r.mu.Lock()
	r.stopped = true
	procs := slices.Clone(r.procs)
	r.mu.Unlock()
	for _, p := range slices.Backward(procs) {
		if p.name == "kubelet" {
			p.stop(5 * time.Second)
		}
	}
	err := cleanupNode(r.Dir+"/", r.CgroupRoot)
	for _, p := range procs {
		p.stop(0) // reap: cleanupNode killed them
	}
	_ = os.Remove(filepath.Join(r.Dir, pidsFile))
	return err
}

// cleanupNode removes what a node (running, stopped or crashed) left: the
// processes in its cgroupRoot, every process whose command line names its
// scratch dir (holder, containerd, shims, kubelet), the cgroups, and the
// scratch dir's contents except logs.
func cleanupNode(dir, cgroupRoot string) error {
	var errs []error
	if err := killCgroup(cgroupRoot, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	if err := killMentioning(dir, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroup(cgroupRoot, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".log") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// cleanupNodes removes the real nodes of a crashed run of the cluster with
// this prefix: its nodes' scratch dirs and every cgroupRoot named for it.
func cleanupNodes(prefix string) error {
	base := nodesDir(prefix)
	var errs []error
	hs, err := cgroupMounts()
	if err != nil {
		return err
	}
	roots := map[string]bool{}
	for _, m := range hs {
		entries, _ := os.ReadDir(m)
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix("/"+e.Name(), cgroupRootOf(prefix, "")) {
				roots["/"+e.Name()] = true
			}
		}
	}
	for root := range roots {
		if err := killCgroup(root, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	// With the slash: another prefix may extend this one.
	if err := killMentioning(base+"/", 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	for root := range roots {
		if err := removeCgroup(root, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(base); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killMentioning SIGKILLs every process whose command line contains s and
// waits until they are gone, reaped included: a shim or runc orphaned by
// the kill is reaped by init, and a snapshot must not catch its zombie.
func killMentioning(s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	killed := map[int]string{}
	for {
		pids := processesMentioning(s)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v naming %s survive SIGKILL", pids, s)
		}
		for _, pid := range pids {
			if st, err := startTime(pid); err == nil {
				killed[pid] = st
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return waitReaped(killed, deadline)
}

// waitReaped waits until none of the processes (PID → start time) exists,
// not even as a zombie.
func waitReaped(procs map[int]string, deadline time.Time) error {
	for {
		var left []int
		for pid, st := range procs {
			if now, err := startTime(pid); err == nil && now == st {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("killed processes %v are not reaped", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processesMentioning lists the live (not zombie) processes whose command
// line contains s.
func processesMentioning(s string) []int {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(s)) || zombie(pid) {
			continue
		}
		out = append(out, pid)
	}
	return out
}
