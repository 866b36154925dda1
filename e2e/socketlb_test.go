package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/testbed"
)

// mountTracefsForRun mounts tracefs for the whole run when the host has
// none, as real hosts do, and returns what unmounts it. cilium/ebpf looks
// for tracefs once per process: an agent started before a test mounted it
// would leave every later agent of the run without the connect() capture.
// Without root the mount fails and tests that need it say so.
func mountTracefsForRun() (unmount func()) {
	const dir = "/sys/kernel/tracing"
	if _, err := os.Stat(dir + "/events"); err == nil {
		return func() {}
	}
	if err := unix.Mount("tracefs", dir, "tracefs", 0, ""); err != nil {
		return func() {}
	}
	return func() { _ = unix.Unmount(dir, 0) }
}

// needTracefs mounts tracefs for the syscall tracepoint the connect()
// capture attaches to, and unmounts it at the end if this test mounted it:
// the machine is left as it was.
func needTracefs(t testing.TB) {
	t.Helper()
	const dir = "/sys/kernel/tracing"
	if _, err := os.Stat(dir + "/events"); err == nil {
		return
	}
	if err := unix.Mount("tracefs", dir, "tracefs", 0, ""); err != nil {
		t.Fatalf("mount tracefs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount tracefs: %v", err)
		}
	})
}

// TestSocketLBClusterIP: ClusterIPs translated inside connect() by a cgroup
// connect4 program (the testbed's socket load balancer, as Cilium's
// socket-LB; the real Cilium agent cannot run here: not served by the Go
// module proxy, and it needs its own full install), with no ClusterIP rule
// in kube-proxy's tables and so no conntrack entry. Every connection from
// the client pod to Service web's ClusterIP is attributed to the pod that
// answered (its own X-Pod header), with the ClusterIP as the address
// dialled, the client's node as the entry node, no SNAT, the cross-node
// flag from the pod's node and the exact byte counts; connections dialled
// straight to a pod are not marked translated.
func TestSocketLBClusterIP(t *testing.T) {
	needCluster(t)
	needTracefs(t)
	cl := upCluster(t, "lbs", testbed.ModeSocketLB, testbed.PolicyCluster)
	recs, agents := startAgents(t, cl)
	for _, a := range agents {
		if !slices.Contains(a.Programs(), "connect_dst") {
			t.Fatalf("agent %v: connect() capture not loaded: %v", a.Programs(), a.Capture().Unavailable)
		}
	}
	slb := cl.SocketLB()
	before, err := slb.Translated()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	web := cl.Web()
	client := cl.ClientPod
	const n = 30
	type sent struct {
		res    testbed.Result
		dialed netip.AddrPort
	}
	var all []sent
	for i := range n {
		res := cl.Request(ctx, client.Netns, web.ClusterAddr(), 40+i*29, 150+i*173)
		if res.Err != nil {
			t.Fatalf("request %d to %v: %v", i, web.ClusterAddr(), res.Err)
		}
		all = append(all, sent{res, web.ClusterAddr()})
	}
	after, err := slb.Translated()
	if err != nil {
		t.Fatal(err)
	}
	if after-before != n {
		t.Fatalf("the translator rewrote %d connects, want %d: the test would not be about socket-LB", after-before, n)
	}
	// Direct to pods: the translator leaves them alone, and so must lbpath.
	for i, p := range cl.Pods {
		res := cl.Request(ctx, client.Netns, netip.AddrPortFrom(p.IP, p.Port), 10+i, 10)
		if res.Err != nil {
			t.Fatalf("direct request to %s: %v", p.Name, res.Err)
		}
		all = append(all, sent{res, netip.AddrPortFrom(p.IP, p.Port)})
	}

	find := func(ms []flow.Merged, s sent) (flow.Merged, bool) {
		for _, m := range ms {
			if m.Client == s.res.Local && m.Target == s.dialed && m.Server != nil && m.ClientRec != nil {
				return m, true
			}
		}
		return flow.Merged{}, false
	}
	var ms []flow.Merged
	deadline := time.Now().Add(8 * time.Second)
	for {
		ms = flow.Merge(recs.Records())
		missing := 0
		for _, s := range all {
			if _, ok := find(ms, s); !ok {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	pods := map[string]int{}
	attributed := 0
	for _, s := range all {
		res := s.res
		id := fmt.Sprintf("%v->%v (pod %s)", res.Local, s.dialed, res.Pod)
		m, ok := find(ms, s)
		if !ok {
			t.Errorf("%s: no merged record with the address dialled", id)
			for _, r := range recs.Records() {
				if r.Client.Port() == res.Local.Port() || r.PodSrc.Port() == res.Local.Port() {
					t.Logf("  related record: %+v", r)
				}
			}
			continue
		}
		pod := cl.Pod(res.Pod)
		viaService := s.dialed == web.ClusterAddr()
		bad := 0
		check := func(ok bool, format string, args ...any) {
			if !ok {
				bad++
				t.Errorf(id+": "+format, args...)
			}
		}
		check(m.Key.Dst == netip.AddrPortFrom(pod.IP, pod.Port), "pod side %v, pod %s is %v", m.Key.Dst, pod.Name, pod.IP)
		check(m.Key.Src == res.SeenRemote, "pod side source %v, the pod saw %v", m.Key.Src, res.SeenRemote)
		check(m.PodNode == pod.Node.Name, "pod node %q, want %q", m.PodNode, pod.Node.Name)
		check(!m.SNAT, "SNAT reported; the pod saw the client pod's own address %v", res.SeenRemote)
		check(m.Outcome == flow.OutcomeOK, "outcome %s", m.Outcome)
		c := m.ClientRec
		check(c.NAT == nil, "client record joined with a conntrack entry %+v: the translator, not netfilter, translated", c.NAT)
		check(c.BytesToServer == uint64(res.Sent) && c.BytesToClient == uint64(res.Received),
			"client record bytes %d/%d, the client sent/received %d/%d", c.BytesToServer, c.BytesToClient, res.Sent, res.Received)
		check(m.Server.BytesToServer == uint64(res.Sent) && m.Server.BytesToClient == uint64(res.Received),
			"server record bytes %d/%d, the client sent/received %d/%d", m.Server.BytesToServer, m.Server.BytesToClient, res.Sent, res.Received)
		if viaService {
			check(c.SocketLB && c.Dialed == web.ClusterAddr(), "client record socket_lb %v dialed %v, want the ClusterIP %v", c.SocketLB, c.Dialed, web.ClusterAddr())
			check(m.Entry == c, "entry record %+v, want the client's", m.Entry)
			check(m.EntryNode == client.Node.Name, "entry node %q, want the client's node %q", m.EntryNode, client.Node.Name)
			check(m.CrossNode == (pod.Node.Name != client.Node.Name), "cross-node %v, client on %s, pod on %s", m.CrossNode, client.Node.Name, pod.Node.Name)
		} else {
			check(!c.SocketLB && !c.Dialed.IsValid(), "direct connection marked translated: dialed %v", c.Dialed)
			check(m.Entry == nil && m.EntryNode == "", "direct connection has an entry %q", m.EntryNode)
		}
		if bad == 0 {
			attributed++
			if viaService {
				pods[res.Pod]++
			}
		}
	}
	t.Logf("%d of %d connections attributed right (%d via the ClusterIP, by pod %v; %d direct)", attributed, len(all), n, pods, len(cl.Pods))
	if len(pods) < 2 {
		t.Errorf("the translator used %d backends: %v", len(pods), pods)
	}
	for _, a := range agents {
		st := a.Stats()
		cc, _, err := a.Capture().ConnectCounters()
		if err != nil {
			t.Fatal(err)
		}
		if cc.RingBufferDrops != 0 || st.Flow.DialedTableFull.Load() != 0 {
			t.Errorf("losses: connect ring drops %d, dialed table full %d", cc.RingBufferDrops, st.Flow.DialedTableFull.Load())
		}
		t.Logf("%s: connect capture %+v, flow socket_lb %d", a.Capture().Programs(), cc, st.Flow.SocketLB.Load())
	}
}
