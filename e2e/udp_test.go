package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

// udpCluster is one cluster of TestUDPRealKubeProxy: a family and an
// overlay, brought up once, with the kube-proxy modes and policies it is
// switched through. Add a cell by adding a line to udpClusters.
type udpCluster struct {
	family   testbed.Family
	overlay  testbed.Overlay
	modes    []testbed.ProxyMode
	policies []testbed.Policy
}

var (
	bothPolicies = []testbed.Policy{testbed.PolicyCluster, testbed.PolicyLocal}
	udpClusters  = []udpCluster{
		{testbed.FamilyIPv4, testbed.OverlayFlat, bothModes, bothPolicies},
		{testbed.FamilyIPv6, testbed.OverlayFlat, bothModes, bothPolicies},
		{testbed.FamilyDual, testbed.OverlayFlat, bothModes, bothPolicies},
		{testbed.FamilyIPv4, testbed.OverlayFlannel, bothModes, bothPolicies},
		{testbed.FamilyIPv6, testbed.OverlayFlannel, bothModes, bothPolicies},
		{testbed.FamilyDual, testbed.OverlayFlannel, bothModes, bothPolicies},
	}
)

// udpPerEntry is how many exchanges go to each entry (the ClusterIP, each
// node's NodePort) in each family of each cell.
const udpPerEntry = 8

// udpExp is one flow's ground truth: the exchanges the client made on one
// 5-tuple. n is how many share it: the kernel may give a fresh socket the
// source port of one closed a moment before, and to conntrack and to the
// server socket's capture that is the same flow; res then holds their
// summed bytes and the span of all of them.
type udpExp struct {
	expectation
	n int
}

// TestUDPRealKubeProxy: Service dns (UDP 53 → 8053, ClusterIP and
// NodePort) over web's stand-in pods, created through the real API server
// and programmed by the real kube-proxy, in every (family, overlay) of
// udpClusters × kube-proxy mode × externalTrafficPolicy. Entries: the
// ClusterIP from the client pod and the NodePort on every node (Local: the
// nodes with an endpoint) from the external client, in every family of the
// cluster. Every exchange (a fresh socket each, as a stub resolver) must
// be named right on the agents' records, against what the client and the
// pod saw: pod, Service, Deployment, ReplicaSet, entry kind, entry node,
// SNAT, cross-node, transport udp, the post-NAT tuple the pod saw, and the
// exact datagrams and payload bytes each way. No UDP loss counter of any
// agent may move.
func TestUDPRealKubeProxy(t *testing.T) {
	for _, uc := range udpClusters {
		t.Run(fmt.Sprintf("%s/%s", uc.family, overlayName(uc.overlay)), func(t *testing.T) { udpMatrix(t, uc) })
	}
}

func udpMatrix(t *testing.T, uc udpCluster) {
	c := upK8s(t, "lbu", k8s.Options{Mode: uc.modes[0], Policy: uc.policies[0], Family: uc.family,
		Overlay: uc.overlay, UDPService: true})
	set, named := startNamedAgents(t, c, nodeagents.Options{UDP: agent.UDPConfig{Idle: time.Second}})
	for _, a := range set.Agents {
		if st := a.UDPStats(); !st.Available {
			t.Fatalf("UDP capture unavailable: %s", st.Unavailable)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		synced := a.Watcher().WaitSynced(ctx)
		cancel()
		if !synced {
			t.Fatal("agent metadata not synced")
		}
	}
	waitUDPEndpoints(t, c)
	ctx := context.Background()
	total := map[string]int{}
	for _, mode := range uc.modes {
		for _, policy := range uc.policies {
			t.Run(fmt.Sprintf("%s/%s", mode, policy), func(t *testing.T) {
				if err := c.SetMode(ctx, mode); err != nil {
					t.Fatal(err)
				}
				if err := c.SetPolicy(ctx, policy); err != nil {
					t.Fatal(err)
				}
				forgetUDPFlows(t, c)
				time.Sleep(1500 * time.Millisecond) // kube-proxy resyncs after the Service change
				since := time.Now()
				pods := podRS(t, c)
				for _, f := range c.TB.Families() {
					for _, en := range udpEntries(c, policy, testbed.FamilyAddr(f)) {
						t.Run(string(f)+"/"+en.name, func(t *testing.T) {
							exps := en.run(t)
							ok := checkUDPNamed(t, c, named, since, exps, en.entry, pods)
							n := 0
							for _, e := range exps {
								n += e.n
							}
							total[fmt.Sprintf("%s/%s/%s/%s", mode, policy, f, en.name)] = n
							if ok != len(exps) {
								t.Errorf("%d of %d UDP flows named right", ok, len(exps))
							}
						})
					}
				}
			})
		}
	}
	checkUDPLosses(t, set)
	t.Logf("%s/%s: exchanges per cell, all checked: %v", uc.family, overlayName(uc.overlay), total)
}

// overlayName names an overlay in test names ("flat" for the flat network,
// whose value is "").
func overlayName(ov testbed.Overlay) string {
	if ov == testbed.OverlayFlat {
		return "flat"
	}
	return string(ov)
}

// waitUDPEndpoints waits until dns's EndpointSlices list every web pod as
// ready in every family.
func waitUDPEndpoints(t *testing.T, c *k8s.Cluster) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		pods, err := c.WebPods(ctx)
		if err != nil {
			t.Fatal(err)
		}
		eps, err := c.Endpoints(ctx, k8s.UDPService)
		if err != nil {
			t.Fatal(err)
		}
		ready := 0
		for _, e := range eps {
			if e.Ready {
				ready++
			}
		}
		if ready == len(pods)*len(c.TB.Families()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dns endpoints %+v, want %d pods ready in %d families", eps, len(pods), len(c.TB.Families()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// forgetUDPFlows deletes the nodes' conntrack entries of dns's ports. A
// UDP flow has no end: a source port the kernel hands out again within
// conntrack's UDP timeout (30 s) rides the earlier flow's entry, with the
// translation of the previous cell's mode and policy (as on a real node
// after a policy change). Each cell's ground truth is its own policy's, so
// each starts without the previous cell's entries.
func forgetUDPFlows(t *testing.T, c *k8s.Cluster) {
	t.Helper()
	for _, n := range c.TB.Nodes {
		for _, fam := range []string{"ipv4", "ipv6"} {
			for _, port := range []string{fmt.Sprint(k8s.UDPServicePort), fmt.Sprint(k8s.UDPNodePort)} {
				out, err := exec.Command("ip", "netns", "exec", filepath.Base(n.Netns),
					"conntrack", "-D", "-f", fam, "-p", "udp", "--orig-port-dst", port).CombinedOutput()
				if err != nil && !strings.Contains(string(out), "0 flow entries") {
					t.Fatalf("conntrack -D on %s: %v: %s", n.Name, err, out)
				}
			}
		}
	}
}

type udpEntry struct {
	name  string
	entry string // lbpath's name for it
	run   func(t *testing.T) []udpExp
}

// udpEntries are dns's entries in the family of like: the ClusterIP from
// the client pod, the NodePort of every node (Local: with an endpoint)
// from the external client.
func udpEntries(c *k8s.Cluster, policy testbed.Policy, like netip.Addr) []udpEntry {
	tb := c.TB
	svc, _ := c.UDP()
	clusterAddr, _ := svc.ClusterAddrIn(like)
	pods, _ := c.WebPods(context.Background())
	hasPod := map[string]bool{}
	for _, p := range pods {
		hasPod[p.Node] = true
	}
	return []udpEntry{
		{"ClusterIP", "clusterip", func(t *testing.T) []udpExp {
			return udpSend(t, tb.ClientPod.Netns, clusterAddr, tb.ClientPod.Node.Name, false, nil)
		}},
		{"NodePort", "nodeport", func(t *testing.T) []udpExp {
			var exps []udpExp
			for _, n := range tb.Nodes {
				if policy == testbed.PolicyLocal && !hasPod[n.Name] {
					continue
				}
				target := netip.AddrPortFrom(n.IPIn(like), svc.NodePort)
				exps = udpSend(t, tb.Client.Netns, target, n.Name, policy == testbed.PolicyCluster, exps)
			}
			return exps
		}},
	}
}

// udpSend makes udpPerEntry exchanges with target from fresh sockets in
// the namespace from, appending their ground truth to exps; exchanges
// that share a 5-tuple are one flow (udpExp.n).
func udpSend(t *testing.T, from string, target netip.AddrPort, entryNode string, snat bool, exps []udpExp) []udpExp {
	t.Helper()
	for i := range udpPerEntry {
		res := testbed.UDPExchange(context.Background(), from, target, 20+i*13, 60+i*29)
		if res.Err != nil {
			t.Fatalf("exchange %d with %v: %v", i, target, res.Err)
		}
		var err error
		x := udpExp{expectation{res: res, entryNode: entryNode, snat: snat, svc: k8s.Namespace + "/" + k8s.UDPService}, 1}
		if exps, err = mergeExchange(exps, x); err != nil {
			t.Fatal(err)
		}
	}
	return exps
}

// mergeExchange adds exchange x to exps: as a flow of its own, or to the
// flow with the same tuple (a fresh socket the kernel gave a closed one's
// source port: to conntrack and the capture the same flow), which must have
// been answered by the same pod.
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

// checkUDPNamed waits for each flow's named records (those of flows that
// began after since: earlier cells may have used the same tuple) and
// checks them; it returns how many flows passed every check.
func checkUDPNamed(t *testing.T, c *k8s.Cluster, named *namedRecords, since time.Time, exps []udpExp, entry string, pods map[string][2]string) int {
	t.Helper()
	// Records come once a flow is idle (1 s here), a sweep and the join
	// and metadata waits later.
	deadline := time.Now().Add(10 * time.Second)
	ok := 0
	for _, e := range exps {
		var v view
		var found bool
		var recs []path.Record
		for {
			recs = recordsSince(named, since)
			if v, found = findView(recs, e.res); found || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !found {
			t.Errorf("%v->%v (pod %s): no named UDP records", e.res.Local, e.res.Remote, e.res.Pod)
			continue
		}
		sub := &countingTB{TB: t}
		checkNamed(sub, v, e.expectation, entry, pods)
		checkUDPFlow(sub, c, v, recs, e)
		if sub.errors == 0 {
			ok++
		}
	}
	return ok
}

func recordsSince(named *namedRecords, since time.Time) []path.Record {
	var out []path.Record
	for _, r := range named.all() {
		if !r.Start.Before(since) {
			out = append(out, r)
		}
	}
	return out
}

// checkUDPFlow checks what is UDP's own on one flow: the transport, the
// post-NAT tuple the pod saw, the entry node's translation, and the exact
// datagrams, exchanges and payload bytes each way. The records of one role
// on the flow's merged connections are summed: exchanges that shared a
// tuple may be one record (the server's one socket) or several (the
// client's fresh sockets).
func checkUDPFlow(t testing.TB, c *k8s.Cluster, v view, recs []path.Record, e udpExp) {
	t.Helper()
	res := e.res
	id := fmt.Sprintf("%v->%v (pod %s)", res.Local, res.Remote, res.Pod)
	pod := c.TB.Pod(res.Pod)
	if pod == nil {
		t.Errorf("%s: unknown pod", id)
		return
	}
	m := v.m
	if m.Transport != flow.TransportUDP || v.server.Proto() != flow.TransportUDP || v.entry.Proto() != flow.TransportUDP {
		t.Errorf("%s: transport %q, server %q, entry %q; want udp", id, m.Transport, v.server.Proto(), v.entry.Proto())
	}
	if want := netip.AddrPortFrom(pod.IPIn(res.Remote.Addr()), testbed.UDPPort); m.Key.Dst != want {
		t.Errorf("%s: post-NAT destination %v, want %v", id, m.Key.Dst, want)
	}
	if m.Key.Src != res.SeenRemote {
		t.Errorf("%s: post-NAT source %v, the pod saw %v", id, m.Key.Src, res.SeenRemote)
	}
	if snat := res.SeenRemote.Addr() != res.Local.Addr(); snat != e.snat {
		t.Errorf("%s: testbed: the pod saw %v (SNAT %v), want SNAT %v by policy", id, res.SeenRemote, snat, e.snat)
	}
	if m.Entry == nil || m.Entry.NAT == nil || !m.Entry.NAT.DNAT || m.Entry.NAT.Original.Dst != res.Remote {
		t.Errorf("%s: entry NAT %+v", id, m.Entry)
	}
	var srv, cli udpSum
	conns := make([]flow.Connection, len(recs))
	for i := range recs {
		conns[i] = recs[i].Connection
	}
	for _, g := range flow.Merge(conns) {
		if g.Transport != flow.TransportUDP || g.Client != res.Local || g.Target != res.Remote {
			continue
		}
		if g.Server != nil {
			srv.add(g.Server)
		}
		if g.ClientRec != nil {
			cli.add(g.ClientRec)
		}
	}
	want := udpSum{records: srv.records, toServer: uint64(res.Sent), toClient: uint64(res.Received),
		dgToServer: uint32(e.n), dgToClient: uint32(e.n), exchanges: uint32(e.n)}
	if srv.records == 0 || srv.toServer != want.toServer || srv.toClient != want.toClient || srv.dgToServer != want.dgToServer ||
		srv.dgToClient != want.dgToClient || srv.exchanges != want.exchanges || srv.notOK != 0 {
		t.Errorf("%s: server records %+v, want %+v", id, srv, want)
	}
	if s := v.server; s.LatencyMaxNs <= 0 || s.LatencyMaxNs > res.End.Sub(res.Start).Nanoseconds() {
		t.Errorf("%s: server latency max %dns, the client's exchanges took %v", id, s.LatencyMaxNs, res.End.Sub(res.Start))
	}
	// The client pod's own sockets are captured on its node; the external
	// client is no node's.
	if res.Local.Addr() == c.TB.ClientPod.IPIn(res.Local.Addr()) {
		want.records = cli.records
		if cli.records == 0 || cli.toServer != want.toServer || cli.toClient != want.toClient || cli.exchanges != want.exchanges {
			t.Errorf("%s: client records %+v, want %+v", id, cli, want)
		}
	}
}

// udpSum adds up the UDP records of one role on one tuple.
type udpSum struct {
	records                int
	toServer, toClient     uint64
	dgToServer, dgToClient uint32
	exchanges              uint32
	notOK                  int
}

func (s *udpSum) add(r *flow.Connection) {
	s.records++
	s.toServer += r.BytesToServer
	s.toClient += r.BytesToClient
	s.dgToServer += r.DatagramsToServer
	s.dgToClient += r.DatagramsToClient
	s.exchanges += r.Exchanges
	if r.Outcome != flow.OutcomeOK {
		s.notOK++
	}
}

// checkUDPLosses: no UDP loss counter of any agent moved.
func checkUDPLosses(t *testing.T, set *nodeagents.Set) {
	t.Helper()
	for _, a := range set.Agents {
		st := a.UDPStats()
		f := st.Flow
		if st.Kernel.FlowTableFull != 0 || st.Kernel.RingDropFlow != 0 || st.Kernel.RingDropExchange != 0 || st.Decode != 0 ||
			f.NATTableFull.Load() != 0 || f.OpenTableFull.Load() != 0 || f.NATExpired.Load() != 0 {
			t.Errorf("UDP losses: kernel %+v decode %d nat_table_full %d open_table_full %d nat_expired %d",
				st.Kernel, st.Decode, f.NATTableFull.Load(), f.OpenTableFull.Load(), f.NATExpired.Load())
		}
	}
}
