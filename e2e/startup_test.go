package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent"
	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/internal/testenv"
)

// exitOf runs cmd to completion and returns its exit code and output.
func exitOf(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("run %v: %v\n%s", cmd.Args, err, out)
	return 0, ""
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Unavailable(t, tool+" not installed")
		}
	}
}

// TestAgentStartupChecks runs the real agent binary where what it needs
// is missing, made so for that process only with a private mount
// namespace (unshare -m): nothing on the host changes.
//   - /sys/kernel/btf hidden under an empty tmpfs: exit 2 before loading
//     anything, naming the kernel BTF and where it was looked for.
//   - in-cluster config whose CA file is not a certificate (a tmpfs over
//     /run holds the service account files): exit 2 naming the CA, where
//     client-go would only log it and fail every watch later.
func TestAgentStartupChecks(t *testing.T) {
	testenv.Root(t)
	needTools(t, "unshare")
	bin := buildAgent(t)
	before := countPrograms(t, "on_state")

	code, out := exitOf(t, exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs lbpath-no-btf /sys/kernel/btf && exec "$0" --node n1 --no-kube --output none`, bin))
	if code != 2 {
		t.Errorf("BTF hidden: exit %d, want 2\n%s", code, out)
	}
	for _, want := range []string{"start-up check failed", "kernel BTF at /sys/kernel/btf/vmlinux", "not found", "CONFIG_DEBUG_INFO_BTF"} {
		if !strings.Contains(out, want) {
			t.Errorf("BTF hidden: output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "lbpath-agent running") || countPrograms(t, "on_state") != before {
		t.Errorf("BTF hidden: the agent loaded programs anyway:\n%s", out)
	}

	sa := "/run/secrets/kubernetes.io/serviceaccount"
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs lbpath-sa /run && mkdir -p `+sa+` && echo token >`+sa+`/token && echo not-a-certificate >`+sa+`/ca.crt && exec "$0" --node n1 --output none`, bin)
	cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443")
	code, out = exitOf(t, cmd)
	if code != 2 || !strings.Contains(out, "in-cluster config: cluster CA") || !strings.Contains(out, sa+"/ca.crt") {
		t.Errorf("broken in-cluster CA: exit %d, want 2 naming the CA file\n%s", code, out)
	}
	if _, err := os.Stat("/run/secrets"); err == nil {
		t.Errorf("/run/secrets appeared on the host: the mount namespace leaked")
	}
}

// TestAgentStartsWithMemlockZero: on this kernel (6.18) BPF memory is
// charged to the memory cgroup, so the agent needs neither RLIMIT_MEMLOCK
// nor CAP_SYS_RESOURCE to raise it. It runs with the limit at 0 (soft and
// hard, so it cannot be raised) and with only the chart's capabilities:
// it starts, loads its programs, records a connection and exits 0.
func TestAgentStartsWithMemlockZero(t *testing.T) {
	testenv.Root(t)
	needTools(t, "setpriv", "prlimit")
	bin := buildAgent(t)
	a := startAgent(t, "setpriv", "--bounding-set", "-all,+bpf,+perfmon,+net_admin", "--",
		"prlimit", "--memlock=0:0", "--", bin, "--node", "memlock-test", "--no-kube", "--join-wait", "100ms", "--stats-interval", "0")
	if !a.waitRunning(t) {
		a.cmd.Process.Kill()
		<-a.done
		t.Fatalf("agent did not start with RLIMIT_MEMLOCK 0:\n%s", a.stderr.String())
	}
	port := loopbackConn(t)
	deadline := time.Now().Add(3 * time.Second)
	for !a.has(port) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.done
	if err := a.cmd.Wait(); err != nil {
		t.Errorf("exit: %v\n%s", err, a.stderr.String())
	}
	if !a.has(port) {
		t.Errorf("no record with RLIMIT_MEMLOCK 0:\n%s", a.stderr.String())
	}
	if strings.Contains(a.stderr.String(), "RLIMIT_MEMLOCK") {
		t.Errorf("memlock mentioned on a kernel that does not need it:\n%s", a.stderr.String())
	}
}

// blackHole is two network namespaces joined by a veth pair: the agent's
// (a, 10.251.7.1) and the collector's host (b, 10.251.7.2), where an nft
// rule drops every packet to the OTLP port. That is what an unreachable
// collector is on a cluster — its node gone or cut off: SYNs vanish, no
// RST and no ICMP come back, and the exporter waits on TCP's
// retransmissions. A refused port would fail in milliseconds and not test
// the budget at all; a listener that never answers (the exporter unit
// test) is a hung collector, not an unreachable one. b also serves TCP on
// :8080 so the agent has connections to record.
type blackHole struct {
	a, b   string // netns paths
	server net.Listener
}

const (
	bhAgentAddr     = "10.251.7.1"
	bhCollectorAddr = "10.251.7.2"
)

func newBlackHole(t *testing.T) *blackHole {
	t.Helper()
	suffix := strconv.Itoa(os.Getpid() % 100000)
	na, nb := "lbsd-a"+suffix, "lbsd-b"+suffix
	sh := func(script string) {
		t.Helper()
		if out, err := exec.Command("sh", "-ec", script).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", na).Run()
		exec.Command("ip", "netns", "del", nb).Run()
	})
	sh(fmt.Sprintf(`ip netns add %[1]s; ip netns add %[2]s
ip link add sd%[3]s netns %[1]s type veth peer name sd%[3]s netns %[2]s
ip -n %[1]s addr add %[4]s/30 dev sd%[3]s; ip -n %[2]s addr add %[5]s/30 dev sd%[3]s
ip -n %[1]s link set lo up; ip -n %[1]s link set sd%[3]s up
ip -n %[2]s link set lo up; ip -n %[2]s link set sd%[3]s up`, na, nb, suffix, bhAgentAddr, bhCollectorAddr))
	nft := exec.Command("ip", "netns", "exec", nb, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(`table inet lbpath_blackhole {
	chain otlp_in {
		type filter hook input priority 0;
		tcp dport 4317 drop
	}
}
`)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	bh := &blackHole{a: "/var/run/netns/" + na, b: "/var/run/netns/" + nb}
	if err := netns.Do(bh.b, func() (err error) {
		bh.server, err = net.Listen("tcp4", bhCollectorAddr+":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bh.server.Close() })
	go func() {
		for {
			c, err := bh.server.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return bh
}

// request makes one connection from a to b's server, exchanges a line and
// closes; it returns the client's port.
func (bh *blackHole) request(t *testing.T) uint16 {
	t.Helper()
	var port uint16
	err := netns.Do(bh.a, func() error {
		c, err := net.DialTimeout("tcp4", bhCollectorAddr+":8080", 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		port = uint16(c.LocalAddr().(*net.TCPAddr).Port)
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return err
		}
		buf := make([]byte, 5)
		_, err = io.ReadFull(c, buf)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// statsField reads key=value from the last log line with msg.
func statsField(t *testing.T, logs, msg, key string) uint64 {
	t.Helper()
	var line string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `msg="`+msg+`"`) || strings.Contains(l, "msg="+msg+" ") {
			line = l
		}
	}
	m := regexp.MustCompile(`\b` + key + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no %s in the %q line %q", key, msg, line)
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v
}

// TestAgentShutdownUnreachableCollector: the real agent binary exports to
// a collector that is unreachable (blackHole), records connections, and
// gets SIGTERM right after the last of them closed. It must
//   - exit 0 within its shutdown budget (the --shutdown-timeout default,
//     which the chart's grace period is set from) plus a small margin —
//     before the budget, the SDK's own timeouts made it 14 s;
//   - write the records of every connection, also of those that closed
//     just before the signal (still in the ring buffer or waiting for a
//     NAT entry when it came);
//   - count every span it could not deliver: nothing reached the
//     collector, so each exported connection's span is a failure
//     (spans_failed equals connections in its final stats line), and the
//     final metrics export is counted too.
func TestAgentShutdownUnreachableCollector(t *testing.T) {
	testenv.Root(t)
	needTools(t, "ip", "nft", "nsenter")
	bin := buildAgent(t)
	bh := newBlackHole(t)

	// Ground truth for "unreachable": the OTLP port neither answers nor
	// refuses; a connection attempt just waits.
	err := netns.Do(bh.a, func() error {
		c, err := net.DialTimeout("tcp4", bhCollectorAddr+":4317", 1500*time.Millisecond)
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return fmt.Errorf("dial failed without a timeout (refused or unreachable is not a black hole): %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("black hole: %v", err)
	}

	a := startAgent(t, "nsenter", "--net="+bh.a, "--", bin, "--node", "sd-node", "--no-kube",
		"--pod-cidr", bhAgentAddr+"/32", "--otlp-endpoint", bhCollectorAddr+":4317", "--otlp-insecure",
		"--metric-interval", "1s", "--stats-interval", "0",
		"--span-sampling", "1") // every connection's span is one the black hole swallows
	if !a.waitRunning(t) {
		a.cmd.Process.Kill()
		<-a.done
		t.Fatalf("agent did not start:\n%s", a.stderr.String())
	}
	var ports []uint16
	for range 15 {
		ports = append(ports, bh.request(t))
	}
	time.Sleep(1500 * time.Millisecond) // metric and span exports are now hanging on the black hole
	for range 5 {
		ports = append(ports, bh.request(t))
	}
	// No pause: the last closes are at most in the ring buffer or waiting
	// out the join wait when the signal comes.
	start := time.Now()
	a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.done
	err = a.cmd.Wait()
	took := time.Since(start)
	logs := a.stderr.String()
	t.Logf("exit %v after SIGTERM (budget %v)", took, agent.DefaultShutdownTimeout)
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "export stats") || strings.Contains(l, "otlp export at shutdown") {
			t.Log(l)
		}
	}
	if err != nil {
		t.Fatalf("exit: %v\n%s", err, logs)
	}
	if limit := agent.DefaultShutdownTimeout + time.Second; took > limit {
		t.Errorf("stopped %v after SIGTERM, want within %v (budget + 1 s)\n%s", took, limit, logs)
	}
	for _, p := range ports {
		if !a.has(p) {
			t.Errorf("no record for the connection from port %d (closed before SIGTERM)", p)
		}
	}
	conns := statsField(t, logs, "export stats", "connections")
	failed := statsField(t, logs, "export stats", "spans_failed")
	metricsFailed := statsField(t, logs, "export stats", "metric_exports_failed")
	if queueFull := statsField(t, logs, "export stats", "queue_full"); queueFull != 0 {
		t.Errorf("queue_full = %d: the test expects every connection to reach the exporter", queueFull)
	}
	if conns < uint64(len(ports)) {
		t.Errorf("exported %d connections, want at least the %d made", conns, len(ports))
	}
	// One span per client connection (no hop children); none delivered.
	if failed != conns {
		t.Errorf("spans_failed = %d, want %d (every exported connection's span: nothing reached the collector)", failed, conns)
	}
	if metricsFailed == 0 {
		t.Errorf("no metric export counted as failed")
	}
	if n := strings.Count(logs, "otlp export at shutdown"); n != 1 {
		t.Errorf("the shutdown loss was logged %d times, want once\n%s", n, logs)
	}
	if !strings.Contains(logs, "stopped cleanly") {
		t.Errorf("no clean-stop message:\n%s", logs)
	}
}
