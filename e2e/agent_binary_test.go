package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/testbed"
)

// countPrograms counts loaded BPF programs by name (the kernel keeps the
// first 15 characters).
func countPrograms(t *testing.T, name string) int {
	t.Helper()
	n := 0
	id := ebpf.ProgramID(0)
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return n
		}
		if err != nil {
			t.Fatalf("iterate BPF programs: %v", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil && info.Name == name {
			n++
		}
		p.Close()
	}
}

// TestAgentBinary runs the real lbpath-agent binary outside Kubernetes
// against one node's namespace: JSONL on stdout, exit 0 on SIGTERM, and no
// BPF program left behind.
func TestAgentBinary(t *testing.T) {
	needCluster(t)
	bin := filepath.Join(t.TempDir(), "lbpath-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/lbpath-agent").CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	cl := upCluster(t, "lbb", testbed.ModeNFTables, testbed.PolicyCluster)
	node1 := cl.Nodes[0]
	before := countPrograms(t, "on_state")

	cmd := exec.Command(bin, "--node", node1.Name, "--netns", node1.Netns,
		"--pod-cidr", node1.PodCIDR.String(), "--join-wait", "200ms", "--stats-interval", "0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var recs []flow.Connection
	var badLines []string
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var c flow.Connection
			mu.Lock()
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				badLines = append(badLines, sc.Text())
			} else {
				recs = append(recs, c)
			}
			mu.Unlock()
		}
	}()
	// Wait until the agent reports it is running.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "lbpath-agent running") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("agent did not start:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if n := countPrograms(t, "on_state"); n != before+1 {
		t.Errorf("on_state programs while running: %d, want %d", n, before+1)
	}

	// LB traffic entering node1.
	if err := cl.RouteLB(1); err != nil {
		t.Fatal(err)
	}
	var results []testbed.Result
	for i := range 10 {
		res := cl.Request(context.Background(), cl.Client.Netns, cl.Web().LoadBalancerAddr(), 10*i, 100)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		results = append(results, res)
	}
	time.Sleep(700 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	<-readDone
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopped cleanly") {
		t.Errorf("no clean-stop message:\n%s", stderr.String())
	}
	// The kernel frees a program after an RCU grace period once its last
	// file descriptor is gone: give it a moment, then it must be gone.
	gone := time.Now().Add(3 * time.Second)
	for countPrograms(t, "on_state") != before && time.Now().Before(gone) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := countPrograms(t, "on_state"); n != before {
		t.Errorf("on_state programs after exit: %d, want %d (leaked)", n, before)
	}
	if len(badLines) > 0 {
		t.Errorf("non-JSON lines on stdout: %q", badLines)
	}
	// Every request entered node1: node1's agent has a record naming the
	// client's real tuple and the LB address, whichever node the pod is on.
	for _, res := range results {
		found := false
		for _, c := range recs {
			if c.Node == node1.Name && c.Client == res.Local && c.Target == res.Remote && c.NAT != nil && c.NAT.DNAT && c.SNAT {
				found = true
				if pod := cl.Pod(res.Pod); pod.Node == node1 && (c.Role != flow.RoleServer || c.PodDst.Addr() != pod.IP) {
					t.Errorf("%v: local pod %s, record %+v", res.Local, res.Pod, c)
				} else if pod.Node != node1 && c.Role != flow.RoleForward {
					t.Errorf("%v: pod %s on %s, want a forward record, got %+v", res.Local, res.Pod, pod.Node.Name, c)
				}
			}
		}
		if !found {
			t.Errorf("no node1 record for %v -> %v (pod %s)", res.Local, res.Remote, res.Pod)
		}
	}
}

// TestAgentConfigErrors: bad configuration exits 2 and names the field.
func TestAgentConfigErrors(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "lbpath-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/lbpath-agent").CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args  []string
		field string
	}{
		{[]string{"--pod-cidr", "10.0.0.0/33"}, "pod-cidr"},
		{[]string{"--netns", "/nonexistent/netns"}, "netns"},
		{[]string{"--output", "xml"}, "output"},
		{[]string{"--ring-buffer-bytes", "5000"}, "ring-buffer-bytes"},
		{[]string{"--max-connections", "0"}, "max-connections"},
		{[]string{"--join-wait", "-1s"}, "join-wait"},
		{[]string{"--node", ""}, "node"},
		{[]string{"--log-level", "loud"}, "log-level"},
		{[]string{"--spans", "nodes"}, "spans"},
		{[]string{"stray"}, "unexpected argument"},
		// Found by trying the agent as a new user would (issue 11): each
		// started and failed later, or exited 1.
		{[]string{"--otlp-endpoint", "http://[::1"}, "otlp-endpoint"},
		{[]string{"--otlp-endpoint", "http://[::1", "--otlp-protocol", "http/protobuf"}, "otlp-endpoint"},
		{[]string{"--kubeconfig", "/nonexistent/kubeconfig"}, "kubeconfig"},
		{[]string{"--shutdown-timeout", "0"}, "shutdown-timeout"},
	} {
		cmd := exec.Command(bin, tc.args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: err %v, want exit 2\n%s", tc.args, err, out)
			continue
		}
		if !strings.Contains(string(out), tc.field) {
			t.Errorf("%v: message does not name %q: %s", tc.args, tc.field, out)
		}
	}
}
