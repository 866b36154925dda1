package podns

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/internal/testenv"
)

func TestPodUIDFromCgroup(t *testing.T) {
	const uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	for _, tc := range []struct{ name, file, want string }{
		{"cgroupfs v1 hybrid", "12:pids:/lbr-node1/kubepods/besteffort/pod" + uid + "/4f0c1a\n11:cpu,cpuacct:/lbr-node1/kubepods/besteffort/pod" + uid + "/4f0c1a\n0::/\n", uid},
		{"cgroupfs guaranteed", "0::/kubepods/pod" + uid + "/abc\n", uid},
		{"systemd", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-4f0c.scope\n", uid},
		{"systemd guaranteed", "0::/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-4f0c.scope\n", uid},
		{"static pod hash", "0::/kubepods/burstable/pod5c3e6a9b2f0d4e1a8b7c6d5e4f3a2b1c/x\n", "5c3e6a9b2f0d4e1a8b7c6d5e4f3a2b1c"},
		{"outside the agent's cgroup namespace", "0::/../../kubepods/besteffort/pod" + uid + "/c\n", uid},
		{"node daemon", "0::/system.slice/containerd.service\n12:pids:/user.slice\n", ""},
		{"pod-like name that is not the kubelet's", "0::/mypod" + uid + "/x\n", ""},
		{"truncated uid", "0::/kubepods/pod0f1e2d3c-4b5a/x\n", ""},
	} {
		if got := PodUIDFromCgroup([]byte(tc.file)); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// podProc is a process in a network namespace of its own, in a pod cgroup
// named the way the kubelet's cgroupfs driver names it (in the v1 pids
// hierarchy, present on this host), or in none when uid is "".
type podProc struct {
	cmd *exec.Cmd
	dir string
	id  uint64
	ino uint64
}

func startPod(t *testing.T, uid string) *podProc {
	t.Helper()
	cmd := exec.Command("sleep", "120")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start a process in a new netns: %v", err)
	}
	p := &podProc{cmd: cmd}
	t.Cleanup(p.stop)
	pid := strconv.Itoa(cmd.Process.Pid)
	if uid != "" {
		p.dir = filepath.Join("/sys/fs/cgroup/pids/lbpath-podns-test/kubepods/besteffort", "pod"+uid)
		if err := os.MkdirAll(p.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.dir, "cgroup.procs"), []byte(pid), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if p.id, err = NamespaceID("/proc/" + pid + "/ns/net"); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+pid+"/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	p.ino = st.Ino
	return p
}

func (p *podProc) stop() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_, _ = p.cmd.Process.Wait()
	}
	if p.dir != "" {
		for d := p.dir; d != "/sys/fs/cgroup/pids"; d = filepath.Dir(d) {
			_ = os.Remove(d)
		}
	}
}

func scanFor(t *testing.T, r *Resolver, id uint64) (string, State) {
	t.Helper()
	if _, st := r.Lookup(id); st != Unknown {
		t.Fatalf("id %d known before any scan: %v", id, st)
	}
	r.ScanOnce()
	return r.Lookup(id)
}

// TestResolverRealNamespaces: real processes in real network namespaces
// and pod cgroups, read through the real /proc. A pod's namespace is
// named by its pod UID; the node's and a pod-less namespace are not pods;
// a namespace freed before its scan is gone. Then the kernel recycles the
// freed namespace's inode for the next pod's namespace (lowest free number
// first) while the ids differ, and the first pod's id still names the
// first pod: what an inode-keyed cache would get wrong.
func TestResolverRealNamespaces(t *testing.T) {
	testenv.Root(t)
	r, err := New(Config{}, nil)
	if err != nil {
		t.Fatalf("resolver: %v", err)
	}
	uidA, uidB := "0000000a-0000-4000-8000-00000000000a", "0000000b-0000-4000-8000-00000000000b"
	a := startPod(t, uidA)
	if uid, st := scanFor(t, r, a.id); st != Pod || uid != uidA {
		t.Fatalf("pod A's namespace: %v %q, want pod %q", st, uid, uidA)
	}
	if _, st := r.Lookup(r.nodeID); st != NotPod {
		t.Errorf("node namespace: %v, want not_pod", st)
	}
	bare := startPod(t, "")
	if _, st := scanFor(t, r, bare.id); st != NotPod {
		t.Errorf("namespace of a process in no pod cgroup: %v, want not_pod", st)
	}
	gone := startPod(t, "")
	gone.stop()
	if _, st := scanFor(t, r, gone.id); st != Gone {
		t.Errorf("namespace freed before its scan: %v, want gone", st)
	}

	a.stop()
	time.Sleep(100 * time.Millisecond) // the namespace is freed after an RCU grace period
	b := startPod(t, uidB)
	t.Logf("pod A: netns inode %d id %d; pod B: inode %d id %d", a.ino, a.id, b.ino, b.id)
	if b.id == a.id {
		t.Fatalf("two namespaces got id %d", a.id)
	}
	if uid, st := scanFor(t, r, b.id); st != Pod || uid != uidB {
		t.Fatalf("pod B's namespace: %v %q, want pod %q", st, uid, uidB)
	}
	if uid, st := r.Lookup(a.id); st != Pod || uid != uidA {
		t.Errorf("pod A's id after its inode may be reused: %v %q, want pod %q", st, uid, uidA)
	}
	if a.ino != b.ino {
		t.Logf("inode not recycled this time (%d, %d); the ids decide either way", a.ino, b.ino)
	}
	if d := r.Stats.Denied.Load(); d > 0 {
		t.Logf("%d processes could not be read (other users' processes without ptrace access)", d)
	}
}

// TestResolverNoHostPID: an agent whose /proc is not the host's (a pod
// without hostPID) does not start the resolver.
func TestResolverNoHostPID(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "self/ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/proc/self/ns/net", filepath.Join(dir, "self/ns/net")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "self/status"), []byte("Name:\tx\nNSpid:\t4242\t7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Proc: dir}, nil); err == nil {
		t.Fatal("resolver started in a nested PID namespace")
	}
	d := Disabled()
	if _, st := d.Lookup(42); st != Unavailable {
		t.Errorf("disabled resolver: %v", st)
	}
}

func BenchmarkLookupHit(b *testing.B) {
	r, err := New(Config{}, nil)
	if err != nil {
		b.Skip(err)
	}
	e := &entry{state: Pod, uid: "u"}
	r.cache[7] = e
	for b.Loop() {
		if _, st := r.Lookup(7); st != Pod {
			b.Fatal(st)
		}
	}
}

// BenchmarkScan is the cost of one miss: a walk of this host's /proc.
func BenchmarkScan(b *testing.B) {
	r, err := New(Config{}, nil)
	if err != nil {
		b.Skip(err)
	}
	n, _ := os.ReadDir("/proc")
	b.ReportMetric(float64(len(n)), "proc_entries")
	for b.Loop() {
		r.mu.Lock()
		r.cache = map[uint64]*entry{}
		r.pending[1] = struct{}{}
		r.mu.Unlock()
		r.ScanOnce()
	}
}
