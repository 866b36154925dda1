package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/socketlb"
)

// TestSocketLBRealControlPlane: socket-LB beside the real kube-proxy, on
// the real API server, as with Cilium's socket-LB and kube-proxy kept for
// NodePorts. The testbed's translator (cgroup connect4/6 on the cgroup v2
// root; the real Cilium agent cannot run here: not served by the Go module
// proxy and it needs its own install) is fed from the API server's
// Services and ready EndpointSlice endpoints of both families and kept in
// sync as they change. A ClusterIP connect() from the client pod is
// rewritten to a pod before any packet exists: kube-proxy's ClusterIP
// rules (still installed) never see it and conntrack holds no entry, so
// lbpath can only name it from the connect() capture. NodePorts are not
// ClusterIPs and still go through kube-proxy's DNAT (and SNAT under
// Cluster).
//
// Per family {IPv4, IPv6, dual (each family)} × network {flat, flannel
// VXLAN} one cluster; inside it per
// kube-proxy mode {iptables, nftables} × policy {Cluster, Local}
// (socketLBCell): every ClusterIP connection is named (the ClusterIP as
// dialled, Service, pod that answered per its X-Pod header, entry node =
// the client's node, no SNAT, cross-node, exact bytes) and the
// translator's own counter shows it rewrote each one; every NodePort
// connection is named as without socket-LB (checkNamed); connections
// dialled straight to a pod are not marked translated. After the cells a
// rollout replaces every pod: the translator's map follows the new
// EndpointSlices and ClusterIP connections reach only new pods, named.
//
// TestSocketLBClusterIP (the stand-in testbed without the API server) is
// kept: it is the socket-LB case without kube-proxy's ClusterIP rules at
// all, so a connect the translator missed would fail there.
func TestSocketLBRealControlPlane(t *testing.T) {
	for _, fam := range []testbed.Family{testbed.FamilyIPv4, testbed.FamilyIPv6, testbed.FamilyDual} {
		for _, ov := range []testbed.Overlay{testbed.OverlayFlat, testbed.OverlayFlannel} {
			t.Run(string(fam)+"/"+overlayName(ov), func(t *testing.T) { socketLBFamily(t, fam, ov) })
		}
	}
}

// socketLBFamily runs every (mode, policy) cell on one cluster of family
// fam with overlay ov.
func socketLBFamily(t *testing.T, fam testbed.Family, ov testbed.Overlay) {
	c := upK8s(t, "lbs"+string(fam)[len(fam)-1:]+overlayName(ov)[:1], k8s.Options{Mode: testbed.ModeIPTables, Policy: testbed.PolicyCluster,
		Family: fam, Overlay: ov, SocketLB: true, UDPService: true})
	set, named := startNamedAgents(t, c, nodeagents.Options{})
	for _, a := range set.Agents {
		if !slices.Contains(a.Programs(), "connect_dst") {
			t.Fatalf("agent %v: connect() capture not loaded: %v", a.Programs(), a.Capture().Unavailable)
		}
	}
	ctx := context.Background()
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		for _, policy := range []testbed.Policy{testbed.PolicyCluster, testbed.PolicyLocal} {
			t.Run(fmt.Sprintf("%s/%s", mode, policy), func(t *testing.T) {
				socketLBCell(t, c, set, named, mode, policy)
			})
		}
	}
	t.Run("rollout", func(t *testing.T) {
		old := podRS(t, c)
		if err := c.SetWebDelay(ctx, time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitWebReady(ctx); err != nil {
			t.Fatal(err)
		}
		for _, f := range c.TB.Families() {
			exps := socketLBClusterIP(t, c, named, f, 10)
			for _, e := range exps {
				if _, ok := old[e.res.Pod]; ok {
					t.Errorf("%v: answered by %s, a pod from before the rollout", e.res.Local, e.res.Pod)
				}
			}
		}
	})
}

// socketLBCell switches kube-proxy's mode and web's policy, then checks
// the ClusterIP (socket-LB), NodePort (kube-proxy) and direct legs in every
// family of the cluster.
func socketLBCell(t *testing.T, c *k8s.Cluster, set *nodeagents.Set, named *namedRecords, mode testbed.ProxyMode, policy testbed.Policy) {
	ctx := context.Background()
	if err := c.SetMode(ctx, mode); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPolicy(ctx, policy); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // kube-proxy resyncs after the Service change
	pods := podRS(t, c)
	for _, f := range c.TB.Families() {
		like := testbed.FamilyAddr(f)
		t.Run(string(f)+"/ClusterIP", func(t *testing.T) { socketLBClusterIP(t, c, named, f, 12) })
		t.Run(string(f)+"/UDPClusterIP", func(t *testing.T) { socketLBUDP(t, c, set, named, f, 8) })
		t.Run(string(f)+"/NodePort", func(t *testing.T) {
			np := familyEntries(c, policy, like)[1]
			exps := np.run(t, 4)
			got := checkAllNamed(t, named, exps, np.entry, pods)
			t.Logf("%s/%s %s NodePort via kube-proxy: %d of %d connections named right", mode, policy, f, got, len(exps))
		})
		t.Run(string(f)+"/Direct", func(t *testing.T) { socketLBDirect(t, c, named, like) })
	}
}

// socketLBClusterIP sends n requests from the client pod to web's
// ClusterIP of family f once the translator holds exactly web's ready
// endpoints, and checks each connection's named records; it returns the
// expectations (Remote = the ClusterIP dialled).
func socketLBClusterIP(t *testing.T, c *k8s.Cluster, named *namedRecords, f testbed.Family, n int) []expectation {
	t.Helper()
	ctx := context.Background()
	tb := c.TB
	vip, _ := tb.Web().ClusterAddrIn(testbed.FamilyAddr(f))
	waitTranslatorSynced(t, c, socketlb.TCP, vip, testbed.ServiceWeb, testbed.PodPort)
	slb := c.SocketLB()
	before, err := slb.Translated()
	if err != nil {
		t.Fatal(err)
	}
	var exps []expectation
	for i := range n {
		res := tb.Request(ctx, tb.ClientPod.Netns, vip, 40+i*29, 150+i*173)
		if res.Err != nil {
			t.Fatalf("request %d to %v: %v", i, vip, res.Err)
		}
		if !res.Remote.Addr().IsValid() || res.Remote == vip {
			t.Fatalf("request %d: the client socket's peer is %v: not translated at connect()", i, res.Remote)
		}
		res.Remote = vip // findView matches the address dialled
		exps = append(exps, expectation{res: res, entryNode: tb.ClientPod.Node.Name})
	}
	after, err := slb.Translated()
	if err != nil {
		t.Fatal(err)
	}
	if after-before != uint64(n) {
		t.Fatalf("the translator rewrote %d connects, want %d: the test would not be about socket-LB", after-before, n)
	}
	pods := podRS(t, c)
	got := checkAllNamed(t, named, exps, "clusterip", pods)
	exact := 0
	answered := map[string]int{}
	for _, e := range exps {
		v, ok := findView(named.all(), e.res)
		if !ok {
			continue // reported by checkAllNamed
		}
		if checkSocketLBView(t, v, e.res, vip) {
			exact++
		}
		answered[e.res.Pod]++
	}
	t.Logf("%s ClusterIP %v via socket-LB: %d of %d named right, %d with the dialled address and exact bytes, translator rewrote %d; pods %v",
		f, vip, got, n, exact, after-before, answered)
	return exps
}

// checkSocketLBView checks what is particular to a connection translated
// at connect(): the client record has the ClusterIP as dialled, is marked
// socket_lb, joined no conntrack entry, and both records carry the exact
// bytes the client sent and received.
func checkSocketLBView(t *testing.T, v view, res testbed.Result, vip netip.AddrPort) bool {
	t.Helper()
	id := fmt.Sprintf("%v->%v (pod %s)", res.Local, vip, res.Pod)
	c := v.entry.Connection
	ok := true
	fail := func(format string, args ...any) {
		ok = false
		t.Errorf(id+": "+format, args...)
	}
	if c.Role != flow.RoleClient || !c.SocketLB || c.Dialed != vip || c.NAT != nil {
		fail("entry record role %s socket_lb %v dialled %v NAT %+v, want the client's, translated from %v without conntrack", c.Role, c.SocketLB, c.Dialed, c.NAT, vip)
	}
	if res.SeenRemote != res.Local {
		fail("the pod saw %v, the client is %v", res.SeenRemote, res.Local)
	}
	for _, r := range []flow.Connection{c, v.server.Connection} {
		if r.BytesToServer != uint64(res.Sent) || r.BytesToClient != uint64(res.Received) {
			fail("%s record bytes %d/%d, the client sent/received %d/%d", r.Role, r.BytesToServer, r.BytesToClient, res.Sent, res.Received)
		}
	}
	return ok
}

// waitTranslatorSynced waits until the translator's map holds exactly the
// ready endpoints the API server lists for Service svc in vip's family
// (port: the pods' target port).
func waitTranslatorSynced(t *testing.T, c *k8s.Cluster, proto socketlb.Proto, vip netip.AddrPort, svc string, port uint16) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		eps, err := c.Endpoints(ctx, svc)
		if err != nil {
			t.Fatal(err)
		}
		var want []netip.AddrPort
		for _, e := range eps {
			if e.Ready && e.IP.Is4() == vip.Addr().Is4() {
				want = append(want, netip.AddrPortFrom(e.IP, port))
			}
		}
		slices.SortFunc(want, netip.AddrPort.Compare)
		got, err := c.SocketLB().Backends(proto, vip)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) > 0 && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("translator holds %v for %v, the API server's ready endpoints of %s are %v", got, vip, svc, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// socketLBUDP: n exchanges from the client pod, each from a fresh
// connected socket, with Service dns's ClusterIP of family f, translated at
// connect() (the UDP Service of the real API server beside the real
// kube-proxy, whose rules never see them): the translator counted every
// one, each merged UDP flow is translated from the ClusterIP with the pod
// that answered, no SNAT, exact bytes (checkSocketLBUDP), and each flow's
// named records carry Service dns, entry clusterip on the client's node,
// the pod, no SNAT and the cross-node flag (checkAllNamed).
func socketLBUDP(t *testing.T, c *k8s.Cluster, set *nodeagents.Set, named *namedRecords, f testbed.Family, n int) {
	t.Helper()
	svc, ok := c.UDP()
	if !ok {
		t.Fatal("the cluster has no UDP Service")
	}
	vip, _ := svc.ClusterAddrIn(testbed.FamilyAddr(f))
	waitTranslatorSynced(t, c, socketlb.UDP, vip, k8s.UDPService, testbed.UDPPort)
	slb := c.SocketLB()
	before, err := slb.Counts()
	if err != nil {
		t.Fatal(err)
	}
	var exps []testbed.Result
	for i := range n {
		res := testbed.UDPExchange(context.Background(), c.TB.ClientPod.Netns, vip, 20+i*13, 60+i*29)
		if res.Err != nil {
			t.Fatalf("exchange %d with %v: %v", i, vip, res.Err)
		}
		exps = append(exps, res)
	}
	after, err := slb.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if after.UDP-before.UDP != uint64(n) {
		t.Fatalf("the translator rewrote %d UDP connects, want %d", after.UDP-before.UDP, n)
	}
	ms := waitUDPMerged(set, exps)
	good, pods := 0, map[string]int{}
	for _, res := range exps {
		if checkSocketLBUDP(t, c.TB, ms, res, vip) {
			good++
			pods[res.Pod]++
		}
	}
	var nexps []expectation
	for _, res := range exps {
		nexps = append(nexps, expectation{res: res, entryNode: c.TB.ClientPod.Node.Name, svc: k8s.Namespace + "/" + k8s.UDPService})
	}
	nameOK := checkAllNamed(t, named, nexps, "clusterip", podRS(t, c))
	t.Logf("%s UDP ClusterIP %v via socket-LB: %d of %d flows right, %d named right; pods %v", f, vip, good, n, nameOK, pods)
}

// socketLBDirect: connections from the client pod straight to each web
// pod are named without an entry and not marked translated.
func socketLBDirect(t *testing.T, c *k8s.Cluster, named *namedRecords, like netip.Addr) {
	ctx := context.Background()
	tb := c.TB
	pods, err := c.WebPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var results []testbed.Result
	for i, p := range pods {
		dst := netip.AddrPortFrom(tb.Pod(p.Name).IPIn(like), testbed.PodPort)
		res := tb.Request(ctx, tb.ClientPod.Netns, dst, 10+i, 10)
		if res.Err != nil {
			t.Fatalf("direct request to %s: %v", p.Name, res.Err)
		}
		results = append(results, res)
	}
	deadline := time.Now().Add(8 * time.Second)
	good := 0
	for _, res := range results {
		var m flow.Merged
		var ok bool
		for {
			conns := []flow.Connection{}
			for _, r := range named.all() {
				conns = append(conns, r.Connection)
			}
			if m, ok = findMerged(flow.Merge(conns), res); ok || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		switch {
		case !ok:
			t.Errorf("direct %v->%v: no merged record", res.Local, res.Remote)
		case m.ClientRec == nil || m.ClientRec.SocketLB || m.ClientRec.Dialed.IsValid() || m.Entry != nil:
			t.Errorf("direct %v->%v marked translated or with an entry: client %+v entry %+v", res.Local, res.Remote, m.ClientRec, m.Entry)
		default:
			good++
		}
	}
	t.Logf("direct to pods: %d of %d not marked translated", good, len(results))
}
