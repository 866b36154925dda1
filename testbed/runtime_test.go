package testbed_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestAddRemovePod adds pods at run time, serves a Service with them, and
// reuses a removed pod's IP at once, as a kubelet on a busy node does.
func TestAddRemovePod(t *testing.T) {
	c := testbedtest.ForTest(t, testbed.Options{NoStaticPods: true, Mode: testbed.ModeNFTables})
	if len(c.Pods) != 0 || c.ClientPod == nil {
		t.Fatalf("NoStaticPods: %d server pods, client pod %v", len(c.Pods), c.ClientPod)
	}
	ctx := t.Context()
	ip := netip.MustParseAddr("10.244.2.10")
	if _, err := c.AddPod(ctx, testbed.PodSpec{Name: "run-a", Node: 2}, ip); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPod(ctx, testbed.PodSpec{Name: "run-x", Node: 2}, ip); err == nil {
		t.Error("AddPod accepted an IP in use")
	}
	if _, err := c.AddPod(ctx, testbed.PodSpec{Name: "run-y", Node: 1}, ip); err == nil {
		t.Error("AddPod accepted an IP outside the node's pod CIDR")
	}
	if err := c.SetEndpoints(ctx, testbed.ServiceWeb, "run-a"); err != nil {
		t.Fatal(err)
	}
	web := c.Web()
	if r := c.Request(ctx, c.ClientPod.Netns, web.ClusterAddr(), 0, 0); r.Err != nil || r.Pod != "run-a" {
		t.Fatalf("via ClusterIP: pod %q, err %v; want run-a", r.Pod, r.Err)
	}

	if err := c.RemovePod("run-a"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemovePod("run-a"); err == nil {
		t.Error("second RemovePod succeeded")
	}
	const delay = 100 * time.Millisecond
	if _, err := c.AddPod(ctx, testbed.PodSpec{Name: "run-b", Node: 2, Delay: delay}, ip); err != nil {
		t.Fatalf("reuse IP of a removed pod at once: %v", err)
	}
	if err := c.SetEndpoints(ctx, testbed.ServiceWeb, "run-b"); err != nil {
		t.Fatal(err)
	}
	r := c.Request(ctx, c.Client.Netns, web.NodePortAddr(c.Node(1)), 0, 0)
	if r.Err != nil || r.Pod != "run-b" {
		t.Fatalf("via NodePort: pod %q, err %v; want run-b", r.Pod, r.Err)
	}
	if d := r.End.Sub(r.Start); d < delay {
		t.Errorf("pod with Delay %v answered in %v", delay, d)
	}
	if got := c.AddedPods(); len(got) != 1 || got[0].Name != "run-b" || c.Pod("run-b") != got[0] {
		t.Errorf("AddedPods %v", got)
	}
}

// TestHostLink checks that the nodes reach a listener on the host's LAN
// address, which is what the Kubernetes test bed's apiserver needs.
func TestHostLink(t *testing.T) {
	testbedtest.Require(t)
	// Not ForTest: its 30 s may not cover waiting for the host link lock
	// held by a parallel package's Kubernetes test bed.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c, err := testbed.Up(ctx, testbed.Options{Prefix: "lbphost", HostLink: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Down() })
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(testbed.HostIP, 0).String())
	if err != nil {
		t.Fatalf("listen on host link: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	target := netip.MustParseAddrPort(ln.Addr().String())
	for _, n := range c.Nodes {
		conn, err := testbed.DialFrom(t.Context(), n.Netns, target)
		if err != nil {
			t.Errorf("%s to host %s: %v", n.Name, target, err)
			continue
		}
		conn.Close()
	}
	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(testbed.HostLinkName("lbphost")); err == nil {
		t.Error("host link left after Down")
	}
}
