// Package e2e proves the agent against ground truth: a testbed cluster in
// network namespaces with kube-proxy-style NAT in the real kernel, real
// conntrack, real eBPF programs, and HTTP servers whose answers say which
// pod served each request.
package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

// needCluster skips (fails in CI) when the testbed cannot run here.
func needCluster(t testing.TB) {
	t.Helper()
	testenv.Root(t)
	for _, tool := range []string{"ip", "iptables-restore", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Unavailable(t, tool+" not installed (run scripts/setup.sh)")
		}
	}
}

func upCluster(t *testing.T, prefix string, mode testbed.ProxyMode, policy testbed.Policy) *testbed.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := testbed.Up(ctx, testbed.Options{Prefix: prefix, Mode: mode, Policy: policy})
	if err != nil {
		t.Fatalf("testbed up: %v", err)
	}
	t.Cleanup(func() {
		if err := cl.Down(); err != nil {
			t.Errorf("testbed down: %v", err)
		}
	})
	return cl
}

// startAgents runs one in-process agent per testbed node (see nodeagents).
func startAgents(t *testing.T, cl *testbed.Cluster) (*nodeagents.Set, []*agent.Agent) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	set, err := nodeagents.Start(cl, nodeagents.Options{Flow: flow.Config{JoinWait: 500 * time.Millisecond}}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := set.Stop(); err != nil {
			t.Errorf("agents: %v", err)
		}
	})
	return set, set.Agents
}

// expectation is the ground truth of one request, known by construction.
type expectation struct {
	res       testbed.Result
	entryNode string
	snat      bool
	// svc is the Service addressed (namespace/name); "" is default/web.
	svc string
}

// service is e's Service, namespace/name.
func (e expectation) service() string {
	if e.svc == "" {
		return "default/web"
	}
	return e.svc
}

func findMerged(ms []flow.Merged, res testbed.Result) (flow.Merged, bool) {
	for _, m := range ms {
		if m.Client == res.Local && m.Target == res.Remote && m.Server != nil {
			return m, true
		}
	}
	return flow.Merged{}, false
}

// waitMerged polls until every expectation has its merged connection.
func waitMerged(t *testing.T, recs *nodeagents.Set, exps []expectation) []flow.Merged {
	t.Helper()
	deadline := time.Now().Add(8 * time.Second)
	for {
		ms := flow.Merge(recs.Records())
		missing := 0
		for _, e := range exps {
			if _, ok := findMerged(ms, e.res); !ok {
				missing++
			}
		}
		if missing == 0 {
			return ms
		}
		if time.Now().After(deadline) {
			t.Errorf("%d of %d connections have no complete record after 8s", missing, len(exps))
			return ms
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func within(got, want int64, pct float64) bool {
	d := float64(got - want)
	if d < 0 {
		d = -d
	}
	return d <= float64(want)*pct/100
}

func checkConnection(t *testing.T, cl *testbed.Cluster, m flow.Merged, e expectation) {
	t.Helper()
	res := e.res
	pod := cl.Pod(res.Pod)
	if pod == nil {
		t.Errorf("%v: answered by unknown pod %q", res.Local, res.Pod)
		return
	}
	id := fmt.Sprintf("%v->%v (pod %s)", res.Local, res.Remote, res.Pod)
	if want := netip.AddrPortFrom(pod.IP, pod.Port); m.Key.Dst != want {
		t.Errorf("%s: post-NAT destination %v, want %v", id, m.Key.Dst, want)
	}
	if m.Key.Src != res.SeenRemote {
		t.Errorf("%s: post-NAT source %v, the pod saw %v", id, m.Key.Src, res.SeenRemote)
	}
	if m.PodNode != pod.Node.Name {
		t.Errorf("%s: pod node %q, want %q", id, m.PodNode, pod.Node.Name)
	}
	if m.EntryNode != e.entryNode {
		t.Errorf("%s: entry node %q, want %q", id, m.EntryNode, e.entryNode)
	}
	if m.SNAT != e.snat {
		t.Errorf("%s: SNAT %v, want %v", id, m.SNAT, e.snat)
	}
	if m.CrossNode != (e.entryNode != pod.Node.Name) {
		t.Errorf("%s: cross-node %v with entry %s, pod node %s", id, m.CrossNode, e.entryNode, pod.Node.Name)
	}
	if m.Outcome != flow.OutcomeOK {
		t.Errorf("%s: outcome %s", id, m.Outcome)
	}
	if m.Entry == nil || m.Entry.NAT == nil || !m.Entry.NAT.DNAT ||
		m.Entry.NAT.Original.Src != res.Local || m.Entry.NAT.Original.Dst != res.Remote {
		t.Errorf("%s: entry NAT %+v, want original %v->%v with DNAT", id, m.Entry, res.Local, res.Remote)
	}
	s := m.Server
	if !within(int64(s.BytesToServer), res.Sent, 2) || !within(int64(s.BytesToClient), res.Received, 2) {
		t.Errorf("%s: bytes to server/client %d/%d, client sent/received %d/%d",
			id, s.BytesToServer, s.BytesToClient, res.Sent, res.Received)
	}
	if s.End.Before(s.Start) || s.Start.Before(res.Start.Add(-time.Second)) || s.End.After(res.End.Add(time.Second)) {
		t.Errorf("%s: server times %v..%v outside the request %v..%v", id, s.Start, s.End, res.Start, res.End)
	}
	if s.SRTTMicros == 0 {
		t.Errorf("%s: no RTT", id)
	}
}

type entry struct {
	name string
	// run sends n requests through this entry and returns their expectations.
	run func(t *testing.T, n int) []expectation
}

func entries(cl *testbed.Cluster, policy testbed.Policy) []entry {
	ctx := context.Background()
	web := cl.Web()
	external := policy == testbed.PolicyCluster // SNAT of external traffic
	send := func(t *testing.T, from string, target netip.AddrPort, entryNode string, snat bool, n int) []expectation {
		var out []expectation
		for i := range n {
			res := cl.Request(ctx, from, target, 50+i*37, 200+i*211)
			if res.Err != nil {
				t.Fatalf("request %d to %v: %v", i, target, res.Err)
			}
			out = append(out, expectation{res: res, entryNode: entryNode, snat: snat})
		}
		return out
	}
	return []entry{
		{"ClusterIP", func(t *testing.T, n int) []expectation {
			// From a pod: ClusterIPs are reachable only inside the cluster;
			// a pod's source is inside the cluster CIDR, so no SNAT.
			return send(t, cl.ClientPod.Netns, web.ClusterAddr(), cl.ClientPod.Node.Name, false, n)
		}},
		{"NodePort", func(t *testing.T, n int) []expectation {
			var out []expectation
			for _, node := range cl.Nodes {
				out = append(out, send(t, cl.Client.Netns, netip.AddrPortFrom(node.IP, web.NodePort), node.Name, external, n)...)
			}
			return out
		}},
		{"LoadBalancer", func(t *testing.T, n int) []expectation {
			var out []expectation
			for i, node := range cl.Nodes {
				// Let the previous connection's last ACK pass before the
				// "cloud LB" moves: rerouted mid-teardown, that ACK would
				// reach another node (conntrack picks it up there as a new
				// flow) and the pod's socket would linger in LAST_ACK.
				time.Sleep(100 * time.Millisecond)
				if err := cl.RouteLB(i + 1); err != nil {
					t.Fatal(err)
				}
				out = append(out, send(t, cl.Client.Netns, web.LoadBalancerAddr(), node.Name, external, n)...)
			}
			return out
		}},
	}
}

// TestPathMatrix: for each kube-proxy mode × externalTrafficPolicy × entry,
// every connection is named with the right pod, entry node, pre- and
// post-NAT tuples, SNAT flag and bytes.
func TestPathMatrix(t *testing.T) {
	needCluster(t)
	cl := upCluster(t, "lbe", testbed.ModeIPTables, testbed.PolicyCluster)
	recs, agents := startAgents(t, cl)
	ctx := context.Background()
	const perEntry = 10
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		for _, policy := range []testbed.Policy{testbed.PolicyCluster, testbed.PolicyLocal} {
			t.Run(fmt.Sprintf("%s/%s", mode, policy), func(t *testing.T) {
				if err := cl.SetMode(ctx, mode); err != nil {
					t.Fatal(err)
				}
				if err := cl.SetPolicy(ctx, policy); err != nil {
					t.Fatal(err)
				}
				for _, en := range entries(cl, policy) {
					t.Run(en.name, func(t *testing.T) {
						exps := en.run(t, perEntry)
						ms := waitMerged(t, recs, exps)
						pods := map[string]int{}
						for _, e := range exps {
							m, ok := findMerged(ms, e.res)
							if !ok {
								t.Errorf("no record for %v->%v (pod %s, seen remote %v, %v..%v)", e.res.Local, e.res.Remote, e.res.Pod, e.res.SeenRemote, e.res.Start, e.res.End)
								for _, r := range recs.Records() {
									near := r.Start.After(e.res.Start.Add(-20*time.Millisecond)) && r.Start.Before(e.res.End.Add(20*time.Millisecond))
									if r.Client.Port() == e.res.Local.Port() || r.PodSrc.Port() == e.res.SeenRemote.Port() || near {
										t.Logf("  related record: %+v nat %+v", r, r.NAT)
									}
								}
								continue
							}
							pods[e.res.Pod]++
							checkConnection(t, cl, m, e)
						}
						t.Logf("%d connections checked, pods %v", len(exps), pods)
					})
				}
			})
		}
	}
	for _, a := range agents {
		st := a.Stats()
		for prog, n := range st.Kernel.RingBufferDrops {
			if n != 0 {
				t.Errorf("ring buffer drops in %s: %d", prog, n)
			}
		}
		if st.Decode != 0 || st.Conntrack.Overflows.Load() != 0 || st.Flow.NATTableFull.Load() != 0 {
			t.Errorf("losses: decode %d ct overflows %d nat full %d", st.Decode, st.Conntrack.Overflows.Load(), st.Flow.NATTableFull.Load())
		}
	}
}

// TestFailedConnections: connections to a Service with no endpoints and to
// a port nobody listens on appear as failed records, not as nothing.
func TestFailedConnections(t *testing.T) {
	needCluster(t)
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			cl := upCluster(t, "lbf", mode, testbed.PolicyCluster)
			recs, _ := startAgents(t, cl)
			ctx := context.Background()
			empty := cl.Empty()
			node1 := cl.Nodes[0]

			// In-cluster client → ClusterIP without endpoints: REJECT.
			res := cl.Request(ctx, cl.ClientPod.Netns, empty.ClusterAddr(), 0, 0)
			if !testbed.IsRefused(res.Err) {
				t.Fatalf("ClusterIP without endpoints: err %v, want ECONNREFUSED", res.Err)
			}
			// External client → NodePort without endpoints.
			np := netip.AddrPortFrom(node1.IP, empty.NodePort)
			if res := cl.Request(ctx, cl.Client.Netns, np, 0, 0); !testbed.IsRefused(res.Err) {
				t.Fatalf("NodePort without endpoints: err %v, want ECONNREFUSED", res.Err)
			}
			// A pod port nobody listens on: the pod's kernel answers RST.
			podA := cl.Pods[0]
			closed := netip.AddrPortFrom(podA.IP, 9999)
			if res := cl.Request(ctx, cl.ClientPod.Netns, closed, 0, 0); !testbed.IsRefused(res.Err) {
				t.Fatalf("closed port: err %v, want ECONNREFUSED", res.Err)
			}

			want := []struct {
				what string
				pred func(c flow.Connection) bool
			}{
				{"client record refused by ClusterIP without endpoints", func(c flow.Connection) bool {
					return c.Role == flow.RoleClient && c.Outcome == flow.OutcomeRefused && c.Target == empty.ClusterAddr() &&
						c.Client.Addr() == cl.ClientPod.IP && c.Node == cl.ClientPod.Node.Name
				}},
				{"node reject of the ClusterIP without endpoints", func(c flow.Connection) bool {
					return c.Role == flow.RoleReject && c.Target == empty.ClusterAddr() && c.Node == cl.ClientPod.Node.Name &&
						c.Client.Addr() == cl.ClientPod.IP
				}},
				{"node reject of the NodePort without endpoints", func(c flow.Connection) bool {
					return c.Role == flow.RoleReject && c.Outcome == flow.OutcomeRefused && c.Target == np &&
						c.Node == node1.Name && c.Client.Addr() == testbed.ClientIP
				}},
				{"client record refused by a closed pod port", func(c flow.Connection) bool {
					return c.Role == flow.RoleClient && c.Outcome == flow.OutcomeRefused && c.Target == closed
				}},
				{"pod kernel reset of the closed port", func(c flow.Connection) bool {
					return c.Role == flow.RoleReject && c.Target == closed && c.Node == podA.Node.Name
				}},
			}
			deadline := time.Now().Add(5 * time.Second)
			for _, w := range want {
				for {
					found := false
					for _, c := range recs.Records() {
						if w.pred(c) {
							found = true
							break
						}
					}
					if found {
						break
					}
					if time.Now().After(deadline) {
						t.Errorf("missing: %s", w.what)
						for _, c := range recs.Records() {
							t.Logf("record: %+v", c)
						}
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
}
