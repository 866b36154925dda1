package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/testbed/k8s"
)

// fullScale reports whether benchmarks run at the sizes issue 6 names
// (`make bench` sets LBPATH_BENCH_FULL=1). CI runs every benchmark once at a
// small size so the harness itself cannot rot, without spending minutes on
// 100k sockets.
func fullScale() bool { return os.Getenv("LBPATH_BENCH_FULL") == "1" }

// releaseFlags are the go build flags of a release binary (the Makefile's
// build target): without the symbol table and DWARF the agent's resident
// binary pages are about 12 MiB smaller.
var releaseFlags = []string{"-trimpath", "-ldflags=-s -w"}

// agentProc is an lbpath-agent process run the way a node runs it (its own
// process, its own Go runtime), with its log kept for the stats lines.
type agentProc struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	log bytes.Buffer
}

func (p *agentProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

func (p *agentProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func startAgentProc(tb testing.TB, bin string, args ...string) *agentProc {
	tb.Helper()
	p := startProc(tb, exec.Command(bin, args...))
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.logText(), "lbpath-agent running") {
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			tb.Fatalf("agent did not start:\n%s", p.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// startProc starts cmd with its stderr kept and its stdout on /dev/null
// (a nil Stdout: a pipe would spend the benchmark process's CPU copying the
// agent's records); it is killed when tb ends.
func startProc(tb testing.TB, cmd *exec.Cmd) *agentProc {
	tb.Helper()
	p := &agentProc{cmd: cmd}
	p.cmd.Stderr = p
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", cmd.Path, err)
	}
	tb.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	return p
}

// stop ends the agent with SIGTERM and returns its CPU time.
func (p *agentProc) stop(tb testing.TB) time.Duration {
	tb.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		tb.Fatalf("agent exited with %v:\n%s", err, p.logText())
	}
	ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var (
	kvRE  = regexp.MustCompile(`([a-z_]+)=("[^"]*"|\S+)`)
	numRE = regexp.MustCompile(`\d+`)
)

// lastStats returns the key=value pairs of the agent's last log line that
// contains marker (e.g. "agent stats").
func (p *agentProc) lastStats(marker string) map[string]string {
	var line string
	sc := bufio.NewScanner(strings.NewReader(p.logText()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), marker) {
			line = sc.Text()
		}
	}
	kv := map[string]string{}
	for _, m := range kvRE.FindAllStringSubmatch(line, -1) {
		kv[m[1]] = strings.Trim(m[2], `"`)
	}
	return kv
}

func (p *agentProc) statInt(marker, key string) int64 {
	v, _ := strconv.ParseInt(p.lastStats(marker)[key], 10, 64)
	return v
}

// procStatusKiB reads a VmRSS-style field of /proc/<pid>/status in KiB.
func procStatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				return v
			}
		}
	}
	return -1
}

// bpfMapBytes sums the kernel memory of the BPF maps pid holds (fdinfo
// memlock): kernel memory charged to the agent's cgroup but not in its RSS.
func bpfMapBytes(pid int) int64 {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	var total int64
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || !bytes.Contains(b, []byte("map_type:")) {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "memlock:") {
				v, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(l, "memlock:")), 10, 64)
				total += v
			}
		}
	}
	return total
}

// lossNetns creates a network namespace with only loopback up, so the
// agent's records can be scoped to exactly the connections a benchmark made
// (tests on the same host make connections of their own).
func lossNetns(tb testing.TB, name string) string {
	tb.Helper()
	exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	tb.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		tb.Fatalf("lo up in %s: %v\n%s", name, err, out)
	}
	return "/run/netns/" + name
}

// closeServer accepts connections in the namespace at ns, writes one byte
// and closes first, so TIME_WAIT stays on the server side and the client's
// ephemeral ports are free again at once. Raw blocking syscalls on locked
// threads: Go's netpoller path costs more per connection than the agent
// does, and the generator must reach rates beyond 20k/s on two cores.
func closeServer(tb testing.TB, ns string, ip [4]byte, port int) string {
	tb.Helper()
	fdc := make(chan int, 1)
	errc := make(chan error, 1)
	go netns.Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			err = unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: ip})
		}
		if err == nil {
			err = unix.Listen(fd, 4096)
		}
		if err != nil {
			errc <- err
			return err
		}
		fdc <- fd
		return nil
	})
	var fd int
	select {
	case err := <-errc:
		tb.Fatalf("listen %v:%d: %v", ip, port, err)
	case fd = <-fdc:
	}
	var done atomic.Bool
	tb.Cleanup(func() { done.Store(true); unix.Shutdown(fd, unix.SHUT_RDWR); unix.Close(fd) })
	one := []byte{1}
	go func() {
		runtime.LockOSThread()
		for !done.Load() {
			c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if err != nil {
				if err == unix.EINTR || err == unix.ECONNABORTED {
					continue
				}
				return
			}
			unix.Write(c, one)
			unix.Close(c)
		}
	}()
	return fmt.Sprintf("%d.%d.%d.%d:%d", ip[0], ip[1], ip[2], ip[3], port)
}

// connectAt makes new connections to targets from the namespace at ns at
// about rate per second (0: as fast as it can) for d, each one read to EOF
// and closed, and returns how many completed. Raw blocking syscalls, one
// locked thread per worker (see closeServer).
func connectAt(ns string, targets []string, rate float64, d time.Duration, workers int) (made, failed int64) {
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	var addrs []unix.SockaddrInet4
	for _, t := range targets {
		ap := netip.MustParseAddrPort(t)
		addrs = append(addrs, unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
	}
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			netns.Do(ns, func() error {
				buf := make([]byte, 8)
				var interval time.Duration
				if rate > 0 {
					interval = time.Duration(float64(time.Second) * float64(workers) / rate)
				}
				for i := 0; ; i++ {
					if interval > 0 {
						next := start.Add(time.Duration(i)*interval + time.Duration(w)*interval/time.Duration(workers))
						if wait := time.Until(next); wait > 0 {
							time.Sleep(wait)
						}
					}
					if time.Since(start) >= d {
						return nil
					}
					fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						bad.Add(1)
						continue
					}
					if err := unix.Connect(fd, &addrs[(i+w)%len(addrs)]); err != nil {
						unix.Close(fd)
						bad.Add(1)
						continue
					}
					for {
						n, err := unix.Read(fd, buf)
						if n <= 0 && err != unix.EINTR {
							break
						}
					}
					unix.Close(fd)
					ok.Add(1)
				}
			})
		}()
	}
	wg.Wait()
	return ok.Load(), bad.Load()
}

// cpuTime is the user+system CPU time pid has used so far.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may contain spaces) start at ")".
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// BenchmarkLossSweep finds the new-connection rate at which the agent first
// loses data, and proves that beyond it every loss is counted: for each rate
// a fresh agent (its own process, scoped to a namespace only this benchmark
// uses) records loopback connections made at that rate; records missing
// from the ones the connections must produce are compared with the agent's
// drop counters. It also reports the agent's CPU per 10k connections.
func BenchmarkLossSweep(b *testing.B) {
	needCluster(b)
	ns := lossNetns(b, "lbloss")
	bin := buildAgent(b)
	var targets []string
	for i := range 4 {
		targets = append(targets, closeServer(b, ns, [4]byte{127, 0, 0, byte(i + 1)}, 8080))
	}
	rates := []float64{2000, 20000}
	step := 2 * time.Second
	if fullScale() {
		rates = []float64{2000, 5000, 10000, 15000, 20000, 30000, 0}
		step = 5 * time.Second
	}
	// The scope: only sockets in this namespace (the pod CIDR names no
	// address in use, so nothing else is in scope).
	args := []string{"--node", "loss", "--netns", ns, "--pod-cidr", "192.0.2.0/32", "--no-kube",
		"--output", "none", "--stats-interval", "0", "--join-wait", "200ms"}
	connectAt(ns, targets, 0, 300*time.Millisecond, 4) // warm up
	perConn := int64(0)
	firstLoss := 0.0
	type stepResult struct{ made, missing, lost, drops int64 }
	// run measures one rate with a fresh agent; extra flags shrink its
	// ring buffer to force loss.
	run := func(rate float64, extra ...string) stepResult {
		p := startAgentProc(b, bin, append(append([]string(nil), args...), extra...)...)
		time.Sleep(300 * time.Millisecond) // conntrack dump done; nothing else to read
		cpu0, t0 := cpuTime(p.cmd.Process.Pid), time.Now()
		made, failed := connectAt(ns, targets, rate, step, 4)
		elapsed := time.Since(t0)
		time.Sleep(500 * time.Millisecond) // join wait, last ring-buffer poll
		cpu := cpuTime(p.cmd.Process.Pid) - cpu0
		p.stop(b)
		st := p.lastStats("agent stats")
		// Values are numbers or, for per-program counters,
		// map[program:n ...]: sum them.
		num := func(k string) int64 {
			var sum int64
			for _, m := range numRE.FindAllString(st[k], -1) {
				v, _ := strconv.ParseInt(m, 10, 64)
				sum += v
			}
			return sum
		}
		emitted, drops := num("emitted"), num("ringbuf_drops")
		lost := drops + num("conn_table_full") + num("pending_full") + num("open_table_full") + num("decode_errors")
		if perConn == 0 {
			// The quiet first step defines how many records one
			// connection makes (server and client socket: 2).
			if lost != 0 || made == 0 || emitted%made != 0 {
				b.Fatalf("at %.0f/s: %d connections gave %d records with %d counted losses; want an exact multiple and no loss\n%s",
					rate, made, emitted, lost, p.logText())
			}
			perConn = emitted / made
		}
		missing := perConn*made - emitted
		achieved := float64(made) / elapsed.Seconds()
		b.Logf("%s target %6.0f/s achieved %6.0f/s: %d connections (%d failed), records %d of %d, ringbuf drops %d, other losses %d, agent CPU %.2f s per 10k connections",
			strings.Join(extra, " "), rate, achieved, made, failed, emitted, perConn*made, drops, lost-drops, cpu.Seconds()*1e4/float64(made))
		// Nothing silent: a missing record needs a counted loss (each lost
		// event costs at most one record), and more records than
		// connections would mean double counting.
		if missing < 0 {
			b.Errorf("at %.0f/s: %d records for %d connections: more than %d each", rate, emitted, made, perConn)
		}
		if missing > lost {
			b.Errorf("at %.0f/s: %d records missing but only %d losses counted\n%s", rate, missing, lost, p.logText())
		}
		if missing > 0 && firstLoss == 0 && len(extra) == 0 {
			firstLoss = achieved
		}
		if rate == 2000 {
			b.ReportMetric(cpu.Seconds()*1e4/float64(made), "agent-cpu-s/10k-conns")
		}
		if len(extra) == 0 {
			b.ReportMetric(achieved, fmt.Sprintf("achieved-conn/s@%.0fk", rate/1000))
		}
		return stepResult{made, missing, lost, drops}
	}
	for range b.N {
		if fullScale() {
			// What the generator reaches with no agent at all: the
			// machine's ceiling for this sweep.
			t0 := time.Now()
			made, _ := connectAt(ns, targets, 0, step, 4)
			b.ReportMetric(float64(made)/time.Since(t0).Seconds(), "no-agent-max-conn/s")
		}
		for _, rate := range rates {
			run(rate)
		}
		// Beyond capacity: a 16 KiB ring buffer (about 150 events) and a
		// 20 ms reader poll must lose events at full speed; every lost
		// record has to show up in the counters.
		r := run(0, "--ring-buffer-bytes", "16384")
		if r.drops == 0 {
			b.Errorf("a 16 KiB ring buffer at full rate lost nothing; the sweep did not reach loss")
		}
		b.ReportMetric(float64(r.missing), "missing-records-16KiB")
		b.ReportMetric(float64(r.drops), "ringbuf-drops-16KiB")
	}
	b.ReportMetric(firstLoss, "first-loss-conn/s")
}

// populate creates what a large cluster's agent caches: nodes, Services
// with EndpointSlices, and ready pods with IPs (owner-less, spread over the
// Services). Slices are written here rather than by the controller, whose
// API rate limit would take minutes for thousands of Services.
func populate(ctx context.Context, tb testing.TB, cfg *rest.Config, pods, svcs, nodes int) {
	tb.Helper()
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = 2000, 2000
	cs, err := kubernetes.NewForConfig(c)
	if err != nil {
		tb.Fatal(err)
	}
	podIP := func(i int) string { return fmt.Sprintf("10.128.%d.%d", i/250, i%250+1) }
	par := func(n int, fn func(i int) error) {
		var wg sync.WaitGroup
		var next atomic.Int64
		errc := make(chan error, 1)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
					var err error
					for try := 0; try < 50; try++ { // the default ServiceAccount may not exist yet
						if err = fn(i); err == nil || apierrors.IsAlreadyExists(err) {
							err = nil
							break
						}
						time.Sleep(200 * time.Millisecond)
					}
					if err != nil {
						select {
						case errc <- err:
						default:
						}
						return
					}
				}
			}()
		}
		wg.Wait()
		select {
		case err := <-errc:
			tb.Fatal(err)
		default:
		}
	}
	par(nodes, func(i int) error {
		_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%d", i),
			Labels: map[string]string{"kubernetes.io/hostname": fmt.Sprintf("node-%d", i), "topology.kubernetes.io/zone": fmt.Sprintf("zone-%d", i%3)}}}, metav1.CreateOptions{})
		return err
	})
	par(svcs, func(i int) error {
		name := fmt.Sprintf("svc-%d", i)
		_, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name, "team": "t" + strconv.Itoa(i%40)}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		var eps []discoveryv1.Endpoint
		for p := i; p < pods; p += svcs {
			eps = append(eps, discoveryv1.Endpoint{Addresses: []string{podIP(p)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptrTo(true)},
				NodeName:   ptrTo(fmt.Sprintf("node-%d", p%nodes)),
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: fmt.Sprintf("pod-%d", p)}})
		}
		_, err = cs.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4, Endpoints: eps,
			Ports: []discoveryv1.EndpointPort{{Name: ptrTo("http"), Port: ptrTo[int32](8080), Protocol: ptrTo(corev1.ProtocolTCP)}},
		}, metav1.CreateOptions{})
		return err
	})
	par(pods, func(i int) error {
		name := fmt.Sprintf("pod-%d", i)
		p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			p, err = cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": fmt.Sprintf("svc-%d", i%svcs), "pod-template-hash": "abc123"}},
				Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%nodes), Containers: []corev1.Container{{
					Name: "app", Image: "registry.example/app:1.0", Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
					Env: []corev1.EnvVar{{Name: "MODE", Value: "production"}}}}},
			}, metav1.CreateOptions{})
		}
		if err != nil {
			return err
		}
		if p.Status.PodIP != "" {
			return nil
		}
		now := metav1.Now()
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: podIP(i), PodIPs: []corev1.PodIP{{IP: podIP(i)}},
			HostIP: "192.168.0.1", StartTime: &now,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
		_, err = cs.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
}

// holderEnv makes the test binary a connection holder (see TestMain): the
// machine gives a process at most 20,000 descriptors and root here lacks
// CAP_SYS_RESOURCE to raise that, so 100k connections (200k sockets) are
// held by several processes.
const holderEnv = "LBPATH_E2E_HOLD"

// TestMain runs the connection holder when the test binary is started as
// one, and the tests otherwise.
func TestMain(m *testing.M) {
	if spec := os.Getenv(holderEnv); spec != "" {
		os.Exit(holdMain(spec))
	}
	unmount := mountTracefsForRun()
	code := m.Run()
	unmount()
	os.Exit(code)
}

// holdMain opens the connections spec ("<listen IP> <count>") asks for, in
// the process's own namespace, says "ready" and keeps them until stdin
// closes.
func holdMain(spec string) int {
	var ipStr string
	var n int
	if _, err := fmt.Sscan(spec, &ipStr, &n); err != nil {
		fmt.Fprintln(os.Stderr, "holder spec:", err)
		return 2
	}
	ip := netip.MustParseAddr(ipStr).As4()
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "holder %s: %s: %v\n", ipStr, what, err)
		return 1
	}
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail("socket", err)
	}
	unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: 9090, Addr: ip}); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		return fail("listen", err)
	}
	dst := &unix.SockaddrInet4{Port: 9090, Addr: ip}
	fds := make([]int, 0, 2*n)
	for k := range n {
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Sprintf("socket %d", k), err)
		}
		if err := unix.Connect(c, dst); err != nil {
			return fail(fmt.Sprintf("connect %d", k), err)
		}
		s, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			return fail(fmt.Sprintf("accept %d", k), err)
		}
		fds = append(fds, c, s)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	for _, fd := range fds {
		unix.Close(fd)
	}
	return 0
}

// holdConnections opens n loopback connections in the network namespace
// name and keeps both ends open until the benchmark ends, spread over
// holder processes of at most 9,000 connections each.
func holdConnections(tb testing.TB, name string, n int) {
	tb.Helper()
	const per = 9000
	var wg sync.WaitGroup
	errc := make(chan error, n/per+1)
	for i := 0; i*per < n; i++ {
		count := min(per, n-i*per)
		cmd := exec.Command("ip", "netns", "exec", name, os.Args[0])
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=127.0.%d.%d %d", holderEnv, i/250, i%250+1, count))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			tb.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			tb.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			tb.Fatalf("start holder: %v", err)
		}
		tb.Cleanup(func() { stdin.Close(); cmd.Wait() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			if strings.TrimSpace(line) != "ready" {
				cmd.Wait()
				errc <- fmt.Errorf("holder %d: %s", i, stderr.String())
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		tb.Fatal(err)
	}
}

// BenchmarkAgentMemory measures the agent's memory the way issue 6 asks:
// the lbpath-agent process with a real API server's pods, Services and
// EndpointSlices in its cache and n live connections tracked. Reported:
// RSS idle (no Kubernetes), with the cache, with the connections, the
// peak, and the kernel memory of its BPF maps (charged to the agent's
// cgroup, not in RSS). Full scale: 100k connections (both ends on this
// host, so 200k tracked sockets), 5,000 pods, 2,000 Services, 50 nodes.
func BenchmarkAgentMemory(b *testing.B) {
	needCluster(b)
	conns, pods, svcs, nodes := 5_000, 500, 200, 10
	if fullScale() {
		conns, pods, svcs, nodes = 100_000, 5_000, 2_000, 50
	}
	ctx := context.Background()
	bin := buildAgent(b, releaseFlags...)
	ns := lossNetns(b, "lbmem")
	cp, err := k8s.Start(ctx, k8s.ControlPlaneOptions{Name: "lbmem", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cp.Stop() })
	t0 := time.Now()
	populate(ctx, b, cp.Config, pods, svcs, nodes)
	b.Logf("populated %d pods, %d Services (+ slices), %d nodes in %v", pods, svcs, nodes, time.Since(t0).Round(time.Millisecond))
	for range b.N {
		args := []string{"--node", "node-0", "--netns", ns, "--output", "none", "--stats-interval", "1s",
			"--max-connections", "262144"}
		idle := startAgentProc(b, bin, append(args, "--no-kube")...)
		time.Sleep(2 * time.Second)
		rssIdle, anonIdle := procStatusKiB(idle.cmd.Process.Pid, "VmRSS"), procStatusKiB(idle.cmd.Process.Pid, "RssAnon")
		idle.stop(b)

		p := startAgentProc(b, bin, append(args, "--kubeconfig", cp.Kubeconfig)...)
		want := int64(pods + svcs*2 + nodes)
		deadline := time.Now().Add(2 * time.Minute)
		for p.lastStats("metadata stats")["synced"] != "true" || p.statInt("metadata stats", "kube_events") < want {
			if time.Now().After(deadline) {
				b.Fatalf("agent did not cache %d objects:\n%s", want, p.logText())
			}
			time.Sleep(200 * time.Millisecond)
		}
		runtime.GC() // the test process's garbage is not the agent's, but keep the host calm
		time.Sleep(2 * time.Second)
		pid := p.cmd.Process.Pid
		rssKube, anonKube := procStatusKiB(pid, "VmRSS"), procStatusKiB(pid, "RssAnon")

		t1 := time.Now()
		holdConnections(b, "lbmem", conns)
		b.Logf("%d connections open in %v", conns, time.Since(t1).Round(time.Millisecond))
		deadline = time.Now().Add(time.Minute)
		for p.statInt("agent stats", "open") < int64(2*conns) {
			if time.Now().After(deadline) {
				b.Fatalf("agent tracks %d of %d sockets:\n%s", p.statInt("agent stats", "open"), 2*conns, p.logText())
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
		rssConns := procStatusKiB(pid, "VmRSS")
		hwm := procStatusKiB(pid, "VmHWM")
		anon := procStatusKiB(pid, "RssAnon")
		maps := bpfMapBytes(pid)
		st := p.lastStats("agent stats")
		p.stop(b)
		b.Logf("RSS (anonymous) idle %d (%d) MiB, with %d objects cached %d (%d) MiB, with %d live connections %d (%d) MiB, peak %d MiB; BPF maps %d MiB; stats %v",
			rssIdle>>10, anonIdle>>10, want, rssKube>>10, anonKube>>10, conns, rssConns>>10, anon>>10, hwm>>10, maps>>20, st)
		b.ReportMetric(float64(rssIdle)/1024, "rss-MiB-idle")
		b.ReportMetric(float64(rssKube)/1024, "rss-MiB-cache")
		b.ReportMetric(float64(rssConns)/1024, "rss-MiB-conns")
		b.ReportMetric(float64(hwm)/1024, "rss-MiB-peak")
		b.ReportMetric(float64(anon)/1024, "rss-anon-MiB-conns")
		b.ReportMetric(float64(maps)/(1<<20), "bpf-maps-MiB")
		if full := st["conn_table_full"]; full != "0" {
			b.Errorf("kernel connection table overflowed (%s): the measurement does not cover every connection", full)
		}
	}
}
