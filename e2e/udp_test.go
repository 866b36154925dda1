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
)

// udpExp is one exchange's ground truth.
type udpExp struct {
	res       testbed.UDPResult
	entryNode string
	snat      bool
	// n is how many exchanges share res's 5-tuple: the kernel may give a
	// fresh socket the source port of one closed a moment before, and to
	// conntrack and the capture that is the same flow. res then holds
	// their summed bytes and the span of all of them.
	n int
}

// TestUDPServiceAttribution: a DNS-like UDP Service with three pod servers
// (wildcard-bound, as CoreDNS is), reached by ClusterIP from a client pod
// and by NodePort on every node from the external client, with the
// Service's rules in iptables and in nftables form, under policy Cluster
// and Local. Every exchange (one fresh socket each, like a stub
// resolver) must have a UDP record on the pod's node naming the pod that
// answered, the post-NAT tuple the pod saw, the entry node, the SNAT flag,
// and exact datagrams and payload bytes each way.
//
// The UDP NAT rules are the testbed's kube-proxy-shaped rules
// (testbed.WriteUDPService), not the real kube-proxy's: the k8s testbed's
// binaries were still being built on this machine when this test was
// written. Kernel, NAT, conntrack and the eBPF programs are real.
func TestUDPServiceAttribution(t *testing.T) {
	needCluster(t)
	cl := upCluster(t, "lbu", testbed.ModeIPTables, testbed.PolicyCluster)
	for _, p := range cl.Pods {
		s, err := testbed.StartUDPServer(p.Netns, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
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
		if st := a.UDPStats(); !st.Available {
			t.Fatalf("UDP capture unavailable: %s", st.Unavailable)
		}
	}
	ctx := context.Background()
	svc := testbed.DNSLike
	total := 0
	for _, mc := range [][2]string{
		{string(testbed.ModeIPTables), string(testbed.PolicyCluster)}, {string(testbed.ModeIPTables), string(testbed.PolicyLocal)},
		{string(testbed.ModeNFTables), string(testbed.PolicyCluster)}, {string(testbed.ModeNFTables), string(testbed.PolicyLocal)},
	} {
		mode, policy := testbed.ProxyMode(mc[0]), testbed.Policy(mc[1])
		t.Run(mc[0]+"/"+mc[1], func(t *testing.T) {
			if err := cl.WriteUDPService(ctx, svc, mode, policy, cl.Pods); err != nil {
				t.Fatal(err)
			}
			var exps []udpExp
			send := func(from string, target netip.AddrPort, entry string, snat bool, n int) {
				for i := range n {
					res := testbed.UDPExchange(ctx, from, target, 20+i*13, 60+i*29)
					if res.Err != nil {
						t.Fatalf("exchange %d with %v: %v", i, target, res.Err)
					}
					var err error
					if exps, err = mergeExchange(exps, udpExp{res: res, entryNode: entry, snat: snat, n: 1}); err != nil {
						t.Fatal(err)
					}
				}
			}
			send(cl.ClientPod.Netns, svc.ClusterAddr(), cl.ClientPod.Node.Name, false, 12)
			for _, n := range cl.Nodes {
				hasPod := false
				for _, p := range cl.Pods {
					hasPod = hasPod || p.Node == n
				}
				if policy == testbed.PolicyLocal && !hasPod {
					continue
				}
				send(cl.Client.Netns, netip.AddrPortFrom(n.IP, svc.NodePort), n.Name, policy == testbed.PolicyCluster, 12)
			}
			checkUDP(t, cl, set, exps)
			total += len(exps)
		})
	}
	for _, a := range set.Agents {
		st := a.UDPStats()
		if st.Kernel.FlowTableFull != 0 || st.Kernel.RingDropFlow != 0 || st.Kernel.RingDropExchange != 0 || st.Decode != 0 {
			t.Errorf("UDP losses: %+v decode %d", st.Kernel, st.Decode)
		}
	}
	t.Logf("%d UDP flows checked", total)
}

// mergeExchange adds exchange x to exps: as a flow of its own, or to the
// flow with the same tuple (a fresh socket the kernel gave a closed one's
// source port), which must have been answered by the same pod.
func mergeExchange(exps []udpExp, x udpExp) ([]udpExp, error) {
	res := x.res
	j := slices.IndexFunc(exps, func(e udpExp) bool { return e.res.Local == res.Local && e.res.Remote == res.Remote })
	if j < 0 {
		return append(exps, x), nil
	}
	e := &exps[j]
	if e.res.Pod != res.Pod {
		return exps, fmt.Errorf("%v->%v: one flow answered by %s and %s", res.Local, res.Remote, e.res.Pod, res.Pod)
	}
	e.res.Sent += res.Sent
	e.res.Received += res.Received
	e.res.End = res.End
	e.n += x.n
	return exps, nil
}

func findUDP(ms []flow.Merged, res testbed.UDPResult) (flow.Merged, bool) {
	for _, m := range ms {
		if m.Transport == flow.TransportUDP && m.Client == res.Local && m.Target == res.Remote && m.Server != nil {
			return m, true
		}
	}
	return flow.Merged{}, false
}

func checkUDP(t *testing.T, cl *testbed.Cluster, set *nodeagents.Set, exps []udpExp) {
	t.Helper()
	// Records come once a flow is idle (1 s here) plus a sweep.
	deadline := time.Now().Add(8 * time.Second)
	var ms []flow.Merged
	for {
		ms = flow.Merge(set.Records())
		missing := 0
		for _, e := range exps {
			if _, ok := findUDP(ms, e.res); !ok {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	pods := map[string]int{}
	for _, e := range exps {
		res := e.res
		id := fmt.Sprintf("%v->%v (pod %s)", res.Local, res.Remote, res.Pod)
		m, ok := findUDP(ms, res)
		if !ok {
			t.Errorf("%s: no UDP record", id)
			continue
		}
		pods[res.Pod]++
		pod := cl.Pod(res.Pod)
		if pod == nil {
			t.Fatalf("%s: unknown pod", id)
		}
		if want := netip.AddrPortFrom(pod.IP, testbed.UDPPort); m.Key.Dst != want {
			t.Errorf("%s: post-NAT destination %v, want %v", id, m.Key.Dst, want)
		}
		if m.Key.Src != res.SeenRemote {
			t.Errorf("%s: post-NAT source %v, the pod saw %v", id, m.Key.Src, res.SeenRemote)
		}
		if m.PodNode != pod.Node.Name || m.EntryNode != e.entryNode || m.SNAT != e.snat ||
			m.CrossNode != (e.entryNode != pod.Node.Name) {
			t.Errorf("%s: pod node %q entry %q snat %v cross %v; want %q %q %v %v", id, m.PodNode, m.EntryNode, m.SNAT, m.CrossNode,
				pod.Node.Name, e.entryNode, e.snat, e.entryNode != pod.Node.Name)
		}
		if m.Entry == nil || m.Entry.NAT == nil || !m.Entry.NAT.DNAT || m.Entry.NAT.Original.Dst != res.Remote {
			t.Errorf("%s: entry NAT %+v", id, m.Entry)
		}
		s := m.Server
		if s.Transport != flow.TransportUDP || s.Outcome != flow.OutcomeOK ||
			s.BytesToServer != uint64(res.Sent) || s.BytesToClient != uint64(res.Received) ||
			s.DatagramsToServer != uint32(e.n) || s.DatagramsToClient != uint32(e.n) || s.Exchanges != uint32(e.n) || s.LatencyMaxNs <= 0 ||
			s.LatencyMaxNs > res.End.Sub(res.Start).Nanoseconds() {
			t.Errorf("%s: server record %+v; client sent %d received %d bytes in %v", id, *s, res.Sent, res.Received, res.End.Sub(res.Start))
		}
		if c := m.ClientRec; c != nil && (c.BytesToServer != uint64(res.Sent) || c.BytesToClient != uint64(res.Received) || c.Exchanges != uint32(e.n)) {
			t.Errorf("%s: client record %+v", id, *c)
		}
	}
	reused := 0
	for _, e := range exps {
		reused += e.n - 1
	}
	t.Logf("%d flows (%d exchanges reused a closed socket's tuple), pods %v", len(exps), reused, pods)
}
