package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/socketlb"
)

// TestSocketLBUDP: a connected UDP socket's connect() to the DNS-like
// Service's ClusterIP is translated by the socket-LB (the testbed's
// connect4 program, on the stand-in testbed: no ClusterIP rule anywhere,
// so an exchange the translator missed would get no answer). Every
// exchange's UDP flow is named as the Service → pod hop translated at
// connect(): target the ClusterIP dialled, socket_lb, no NAT, the client's
// node as entry, the pod that answered (its own reply), no SNAT,
// cross-node, exact bytes each way; the translator's UDP counter shows it
// rewrote each one. Exchanges straight to a pod are not marked translated.
// The UDP Service of the real control plane is another branch's; this is
// the flow-level proof.
func TestSocketLBUDP(t *testing.T) {
	needCluster(t)
	cl := upCluster(t, "lbsu", testbed.ModeSocketLB, testbed.PolicyCluster)
	var backends []netip.AddrPort
	for _, p := range cl.Pods {
		s, err := testbed.StartUDPServer(p.Netns, "udp4", p.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		backends = append(backends, netip.AddrPortFrom(p.IP, testbed.UDPPort))
	}
	// A ClusterIP of the service range that no NAT rule knows: only the
	// translator makes it reachable.
	vip := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.53"), 53)
	slb := cl.SocketLB()
	if err := slb.SetService(socketlb.UDP, vip, backends); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	set, err := nodeagents.Start(cl, nodeagents.Options{Flow: flow.Config{JoinWait: 500 * time.Millisecond},
		UDP: agent.UDPConfig{Idle: time.Second}}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := set.Stop(); err != nil {
			t.Errorf("agents: %v", err)
		}
	})
	for _, a := range set.Agents {
		if !slices.Contains(a.Programs(), "connect_dst") || !a.UDPStats().Available {
			t.Fatalf("agent %v: connect() or UDP capture not loaded: %v %s", a.Programs(), a.Capture().Unavailable, a.UDPStats().Unavailable)
		}
	}
	ctx := context.Background()
	before, _ := slb.Counts()
	const n = 15
	var exps []testbed.Result
	for i := range n {
		res := testbed.UDPExchange(ctx, cl.ClientPod.Netns, vip, 20+i*13, 60+i*29)
		if res.Err != nil {
			t.Fatalf("exchange %d with %v: %v", i, vip, res.Err)
		}
		exps = append(exps, res)
	}
	after, err := slb.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if after.UDP-before.UDP != n {
		t.Fatalf("the translator rewrote %d UDP connects, want %d", after.UDP-before.UDP, n)
	}
	for i, p := range cl.Pods {
		res := testbed.UDPExchange(ctx, cl.ClientPod.Netns, netip.AddrPortFrom(p.IP, testbed.UDPPort), 10+i, 10)
		if res.Err != nil {
			t.Fatalf("direct exchange with %s: %v", p.Name, res.Err)
		}
		exps = append(exps, res)
	}
	ms := waitUDPMerged(set, exps)
	good, pods := 0, map[string]int{}
	for _, res := range exps {
		if checkSocketLBUDP(t, cl, ms, res, vip) {
			good++
			pods[res.Pod]++
		}
	}
	t.Logf("%d of %d UDP flows right (%d via the ClusterIP, translator rewrote %d; %d direct); pods %v",
		good, len(exps), n, after.UDP-before.UDP, len(cl.Pods), pods)
	for _, a := range set.Agents {
		cc, _, _ := a.Capture().ConnectCounters()
		st := a.UDPStats()
		t.Logf("%s: connect capture %+v, UDP socket_lb %d dialed_table_full %d", a.Capture().Programs(), cc, st.Flow.SocketLB.Load(), st.Flow.DialedTableFull.Load())
		if cc.RingBufferDrops != 0 || st.Flow.DialedTableFull.Load() != 0 {
			t.Errorf("losses: connect ring drops %d, UDP dialed table full %d", cc.RingBufferDrops, st.Flow.DialedTableFull.Load())
		}
	}
}

// waitUDPMerged waits (flows are emitted once idle) until every exchange
// has its merged UDP record.
func waitUDPMerged(set *nodeagents.Set, exps []testbed.Result) []flow.Merged {
	deadline := time.Now().Add(8 * time.Second)
	for {
		ms := flow.Merge(set.Records())
		missing := 0
		for _, res := range exps {
			if _, ok := findUDP(ms, res); !ok {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return ms
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func checkSocketLBUDP(t *testing.T, cl *testbed.Cluster, ms []flow.Merged, res testbed.Result, vip netip.AddrPort) bool {
	t.Helper()
	id := fmt.Sprintf("%v->%v (pod %s)", res.Local, res.Remote, res.Pod)
	m, ok := findUDP(ms, res)
	if !ok {
		t.Errorf("%s: no merged UDP record with the address dialled", id)
		return false
	}
	pod := cl.Pod(res.Pod)
	good := true
	check := func(ok bool, format string, args ...any) {
		if !ok {
			good = false
			t.Errorf(id+": "+format, args...)
		}
	}
	c := m.ClientRec
	check(c != nil, "no client record")
	if c == nil {
		return false
	}
	podIP := pod.IPIn(res.Local.Addr())
	check(m.Key.Dst == netip.AddrPortFrom(podIP, testbed.UDPPort), "pod side %v, pod %s is %v", m.Key.Dst, pod.Name, podIP)
	check(res.SeenRemote == res.Local && m.Key.Src == res.Local && !m.SNAT, "SNAT %v / pod side source %v, the pod saw %v, the client is %v", m.SNAT, m.Key.Src, res.SeenRemote, res.Local)
	check(c.NAT == nil, "client flow joined a conntrack entry %+v", c.NAT)
	check(c.BytesToServer == uint64(res.Sent) && c.BytesToClient == uint64(res.Received) &&
		m.Server.BytesToServer == uint64(res.Sent) && m.Server.BytesToClient == uint64(res.Received),
		"bytes client %d/%d server %d/%d, the client sent/received %d/%d", c.BytesToServer, c.BytesToClient,
		m.Server.BytesToServer, m.Server.BytesToClient, res.Sent, res.Received)
	if res.Remote == vip {
		check(c.SocketLB && c.Dialed == vip && m.Entry == c, "client flow socket_lb %v dialed %v entry %+v, want translated from %v", c.SocketLB, c.Dialed, m.Entry, vip)
		check(m.EntryNode == cl.ClientPod.Node.Name && m.PodNode == pod.Node.Name && m.CrossNode == (pod.Node != cl.ClientPod.Node),
			"entry node %q pod node %q cross %v", m.EntryNode, m.PodNode, m.CrossNode)
	} else {
		check(!c.SocketLB && !c.Dialed.IsValid() && m.Entry == nil, "direct flow marked translated: dialed %v entry %+v", c.Dialed, m.Entry)
	}
	return good
}

// findUDP is res's merged UDP flow (the client's socket tuple, the address
// it dialled) with the server side joined.
func findUDP(ms []flow.Merged, res testbed.Result) (flow.Merged, bool) {
	for _, m := range ms {
		if m.Transport == flow.TransportUDP && m.Client == res.Local && m.Target == res.Remote && m.Server != nil {
			return m, true
		}
	}
	return flow.Merged{}, false
}
