package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/internal/testenv"
)

// buildAgent builds cmd/lbpath-agent; flags go to go build (the memory
// benchmark measures the release build, see releaseFlags).
func buildAgent(t testing.TB, flags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "lbpath-agent")
	args := append(append([]string{"build", "-o", bin}, flags...), "../cmd/lbpath-agent")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	return bin
}

// runningAgent is an lbpath-agent process whose JSONL output is collected.
type runningAgent struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	mu     sync.Mutex
	recs   []flow.Connection
	done   chan struct{}
}

func startAgent(t *testing.T, argv ...string) *runningAgent {
	t.Helper()
	a := &runningAgent{stderr: &bytes.Buffer{}, done: make(chan struct{})}
	a.cmd = exec.Command(argv[0], argv[1:]...)
	a.cmd.Stderr = a.stderr
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(a.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var c flow.Connection
			if json.Unmarshal(sc.Bytes(), &c) == nil {
				a.mu.Lock()
				a.recs = append(a.recs, c)
				a.mu.Unlock()
			}
		}
	}()
	return a
}

func (a *runningAgent) waitRunning(t *testing.T) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(a.stderr.String(), "lbpath-agent running") {
			return true
		}
		select {
		case <-a.done:
			return false
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// loopbackConn makes one connection and returns the client's port.
func loopbackConn(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if s, err := ln.Accept(); err == nil {
			s.Write([]byte("hello"))
			s.Close()
		}
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	c.Read(buf)
	c.Close()
	return uint16(c.LocalAddr().(*net.TCPAddr).Port)
}

func (a *runningAgent) has(port uint16) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.recs {
		if r.Role == flow.RoleClient && r.PodSrc.Port() == port {
			return true
		}
	}
	return false
}

// TestLeastPrivilege: the agent runs with exactly the capabilities the Helm
// chart grants (BPF, PERFMON, NET_ADMIN) and no other, and fails clearly
// without each of them.
func TestLeastPrivilege(t *testing.T) {
	testenv.Root(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		testenv.Unavailable(t, "setpriv (util-linux) not installed")
	}
	bin := buildAgent(t)
	run := func(caps string) *runningAgent {
		// The bounding set caps what root's execve may keep: the agent gets
		// exactly these capabilities.
		return startAgent(t, "setpriv", "--bounding-set", "-all"+caps, "--", bin,
			"--node", "cap-test", "--join-wait", "100ms", "--stats-interval", "0", "--no-kube")
	}
	a := run(",+bpf,+perfmon,+net_admin")
	if !a.waitRunning(t) {
		t.Fatalf("agent did not start with BPF, PERFMON, NET_ADMIN:\n%s", a.stderr.String())
	}
	port := loopbackConn(t)
	deadline := time.Now().Add(3 * time.Second)
	for !a.has(port) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.done
	if err := a.cmd.Wait(); err != nil {
		t.Errorf("exit with least privilege: %v\n%s", err, a.stderr.String())
	}
	if !a.has(port) {
		t.Errorf("no record for the loopback connection with least privilege:\n%s", a.stderr.String())
	}
	for _, missing := range []string{"bpf", "perfmon", "net_admin"} {
		caps := ""
		for _, c := range []string{"bpf", "perfmon", "net_admin"} {
			if c != missing {
				caps += ",+" + c
			}
		}
		a := run(caps)
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-a.done
			t.Errorf("without %s the agent kept running:\n%s", missing, a.stderr.String())
			continue
		}
		err := a.cmd.Wait()
		if err == nil {
			t.Errorf("without %s the agent exited 0:\n%s", missing, a.stderr.String())
		}
		if !strings.Contains(a.stderr.String(), "level=ERROR") {
			t.Errorf("without %s no clear error:\n%s", missing, a.stderr.String())
		}
	}
}

// TestSIGKILLLeavesNothing: a killed agent leaves no BPF program behind and
// a restarted one works.
func TestSIGKILLLeavesNothing(t *testing.T) {
	testenv.Root(t)
	bin := buildAgent(t)
	before := countPrograms(t, "on_state")
	a := startAgent(t, bin, "--node", "kill-test", "--no-kube", "--stats-interval", "0")
	if !a.waitRunning(t) {
		t.Fatalf("agent did not start:\n%s", a.stderr.String())
	}
	a.cmd.Process.Kill()
	<-a.done
	a.cmd.Wait()
	deadline := time.Now().Add(3 * time.Second)
	for countPrograms(t, "on_state") != before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := countPrograms(t, "on_state"); n != before {
		t.Fatalf("after SIGKILL %d on_state programs, want %d", n, before)
	}
	b := startAgent(t, bin, "--node", "kill-test", "--no-kube", "--join-wait", "100ms", "--stats-interval", "0")
	if !b.waitRunning(t) {
		t.Fatalf("restart failed:\n%s", b.stderr.String())
	}
	port := loopbackConn(t)
	deadline = time.Now().Add(3 * time.Second)
	for !b.has(port) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	<-b.done
	b.cmd.Wait()
	if !b.has(port) {
		t.Errorf("restarted agent did not record a connection")
	}
}
