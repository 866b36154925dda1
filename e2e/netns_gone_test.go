package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lbpath/lbpath/internal/testenv"
)

// linkExists reports whether the network namespace ns has an interface
// named link.
func linkExists(ns, link string) bool {
	return exec.Command("ip", "-n", ns, "link", "show", link).Run() == nil
}

// TestNodeNetnsDeleted: the node namespace the agent attached to (--netns)
// is deleted while the agent runs. The agent's ctnetlink sockets hold a
// reference, so the kernel keeps the namespace alive and the conntrack
// subscription never ends: without a check the agent would pin a dead
// namespace and report an empty node forever. What must hold: the agent
// exits non-zero within seconds with an error naming the namespace (a
// DaemonSet restarts it), and once it has exited the kernel really frees
// the namespace (its veth pair disappears).
func TestNodeNetnsDeleted(t *testing.T) {
	testenv.Root(t)
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.Unavailable(t, "ip (iproute2) not installed")
	}
	bin := buildAgent(t)
	node := fmt.Sprintf("lbp-nsgone-%d", os.Getpid())
	peer := node + "-peer"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{node, peer} {
		exec.Command("ip", "netns", "del", ns).Run() // a previous run killed midway
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	// The veth pair spans both namespaces: when the kernel frees the node
	// namespace it destroys its end, and the peer end goes with it.
	run("ip", "-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "ngpeer", "netns", peer)

	a := startAgent(t, bin, "--node", "nsgone", "--netns", "/var/run/netns/"+node, "--no-kube",
		"--stats-interval", "0", "--join-wait", "100ms", "--health-addr", "")
	t.Cleanup(func() {
		if a.cmd.ProcessState == nil {
			a.cmd.Process.Kill()
			<-a.done
			a.cmd.Wait()
		}
	})
	if !a.waitRunning(t) {
		t.Fatalf("agent did not start:\n%s", a.stderr.String())
	}
	// Delete only after the agent has settled (past its first ticks), as a
	// node's namespace would disappear under a long-running agent.
	time.Sleep(1500 * time.Millisecond)
	run("ip", "netns", "del", node)
	deleted := time.Now()
	pinned := linkExists(peer, "ngpeer") // the agent's sockets still hold the namespace

	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("agent still running 10 s after its node namespace was deleted:\n%s", a.stderr.String())
	}
	err := a.cmd.Wait()
	exited := time.Since(deleted)
	t.Logf("agent exited %v after the namespace was deleted (%v); namespace still pinned right after deletion: %v",
		exited.Round(time.Millisecond), err, pinned)
	if err == nil {
		t.Errorf("agent exited 0 after losing its node namespace:\n%s", a.stderr.String())
	}
	if !strings.Contains(a.stderr.String(), "level=ERROR") || !strings.Contains(a.stderr.String(), node) ||
		!strings.Contains(a.stderr.String(), "node network namespace gone") {
		t.Errorf("no clear error naming the namespace:\n%s", a.stderr.String())
	}
	deadline := time.Now().Add(10 * time.Second)
	for linkExists(peer, "ngpeer") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if linkExists(peer, "ngpeer") {
		t.Errorf("the deleted node namespace is still alive 10 s after the agent exited (its veth peer remains)")
	}
}
