package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestSocketLBTCNodePort: Service web's NodePort translated by a TC
// program on every node's LAN device (testbed/tcnodeport: Cilium's
// kube-proxy replacement NodePort, Cluster policy without SNAT, DSR; the
// real Cilium agent cannot run here, see TestSocketLBClusterIP), beside
// the real API server and the real kube-proxy, whose NodePort rules never
// match (the destination is the pod before netfilter sees the packet). The
// agents run with --isolated-pod-network, which is true of the testbed:
// the external client has no route to the pod CIDRs. Every connection of
// the external client via either node's NodePort is recorded on the pod
// that answered (X-Pod) with entry external_not_visible and nat_not_visible
// reason external_client_untranslated_here, never direct, and the client's
// own address; the program's own counter says it translated exactly these
// connections; each agent's lbpath.agent.nat_not_visible counts exactly
// its records of them, on the OTLP wire too. Connections of a web pod
// straight to another's IP are direct and not flagged.
func TestSocketLBTCNodePort(t *testing.T) {
	c := upK8s(t, "lbtc", k8s.Options{Mode: testbed.ModeIPTables, Policy: testbed.PolicyCluster})
	ctx := context.Background()
	pods, err := c.WaitWebReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var backends []netip.AddrPort
	podIPs := map[string]netip.Addr{}
	for _, p := range pods {
		backends = append(backends, netip.AddrPortFrom(p.IP, testbed.PodPort))
		podIPs[p.Name] = p.IP
	}
	lb, err := c.TB.AttachTCNodePort(testbed.ServiceWeb, backends)
	if err != nil {
		t.Fatal(err)
	}
	sink := testbedtest.Sink(t)
	set, named := startNamedAgents(t, c, nodeagents.Options{Names: path.Config{IsolatedPodNetwork: true},
		Export: &exporter.Config{Endpoint: sink.GRPCAddr, Insecure: true, MetricInterval: time.Second}})
	waitCurrent(t, set.Agents, true)

	web := c.TB.Web()
	const perNode = 15
	var viaTC, direct []testbed.Result
	for _, n := range c.TB.Nodes {
		for i := range perNode {
			res := c.TB.Request(ctx, c.TB.Client.Netns, web.NodePortAddr(n), 20+i*31, 100+i*97)
			if res.Err != nil {
				t.Fatalf("request %d via %s's NodePort: %v", i, n.Name, res.Err)
			}
			viaTC = append(viaTC, res)
		}
	}
	cnt, err := lb.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if cnt.Connections != uint64(len(viaTC)) {
		t.Fatalf("the TC program translated %d connections, the client made %d: the test would not be about it", cnt.Connections, len(viaTC))
	}
	// Direct: each web pod to the next one's IP. (The testbed's client
	// pod is no API object here, so the agents rightly take it for a
	// host outside the cluster.)
	for i, p := range pods {
		from := c.TB.Pod(p.Name)
		to := pods[(i+1)%len(pods)]
		if from == nil {
			t.Fatalf("no namespace for pod %s", p.Name)
		}
		res := c.TB.Request(ctx, from.Netns, netip.AddrPortFrom(to.IP, testbed.PodPort), 10, 10)
		if res.Err != nil {
			t.Fatalf("direct request %s → %s: %v", p.Name, to.Name, res.Err)
		}
		direct = append(direct, res)
	}

	// The external client's records are decided after the metadata wait
	// (the client must be certainly no pod).
	server := func(recs []path.Record, res testbed.Result) *path.Record {
		for i := range recs {
			r := &recs[i]
			if r.Role == flow.RoleServer && r.PodSrc == res.SeenRemote && r.PodDst.Addr() == podIPs[res.Pod] {
				return r
			}
		}
		return nil
	}
	all := append(append([]testbed.Result{}, viaTC...), direct...)
	deadline := time.Now().Add(15 * time.Second)
	var recs []path.Record
	for {
		recs = named.all()
		missing := 0
		for _, res := range all {
			if server(recs, res) == nil {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	flagged := map[string]uint64{} // records with the reason, per node
	byPod := map[string]int{}
	right := 0
	for i, res := range all {
		tc := i < len(viaTC)
		id := fmt.Sprintf("%v->%v (pod %s)", res.Local, res.Remote, res.Pod)
		r := server(recs, res)
		if r == nil {
			t.Errorf("%s: no server record", id)
			continue
		}
		bad := checkTCRecord(t, id, r, res, tc, pods)
		if tc && r.NATNotVisible != "" {
			flagged[r.Node]++
		}
		if !bad {
			right++
			if tc {
				byPod[res.Pod]++
			}
		}
	}
	t.Logf("%d of %d connections right (%d via the TC NodePort, by pod %v; %d direct); TC program %+v",
		right, len(all), len(viaTC), byPod, len(direct), cnt)
	if len(byPod) < 2 {
		t.Errorf("the TC program used %d backends: %v", len(byPod), byPod)
	}
	checkNATNotVisibleMetric(t, set, c.TB.Nodes, sink, flagged)
}

// checkTCRecord checks one pod's server record against what the client
// and the pod saw; it reports whether anything was wrong.
func checkTCRecord(t *testing.T, id string, r *path.Record, res testbed.Result, tc bool, pods []k8s.WebPod) (bad bool) {
	t.Helper()
	check := func(ok bool, format string, args ...any) {
		if !ok {
			bad = true
			t.Errorf(id+": "+format, args...)
		}
	}
	node := ""
	for _, p := range pods {
		if p.Name == res.Pod {
			node = p.Node
		}
	}
	check(r.Pod == "default/"+res.Pod && r.Node == node, "record of %s names pod %q", r.Node, r.Pod)
	check(r.Service == "default/web", "service %q", r.Service)
	check(!r.SNAT && !r.ClientLost && r.PodSrc == res.Local, "the pod saw %v (client %v): SNAT %v lost %v", r.PodSrc, res.Local, r.SNAT, r.ClientLost)
	check(r.NAT == nil && !r.SocketLB, "translation seen: nat %+v socket_lb %v", r.NAT, r.SocketLB)
	hasDiag := false
	for _, d := range r.Diagnoses {
		hasDiag = hasDiag || d.Code == path.DiagNATNotVisible
	}
	if tc {
		check(r.Entry == string(kube.EntryExternalNotVisible) && r.NATNotVisible == path.NATHiddenExternalClient && hasDiag,
			"entry %q nat_not_visible %q diagnoses %+v: want %s / %s", r.Entry, r.NATNotVisible, r.Diagnoses,
			kube.EntryExternalNotVisible, path.NATHiddenExternalClient)
		check(r.ClientKind == string(path.PeerExternal) && r.EntryNode == "" && !r.CrossNode,
			"client kind %q entry node %q cross-node %v: the entry node is not visible", r.ClientKind, r.EntryNode, r.CrossNode)
	} else {
		check(r.Entry == string(kube.EntryDirect) && r.NATNotVisible == "" && !hasDiag,
			"pod to pod IP: entry %q nat_not_visible %q diagnoses %+v", r.Entry, r.NATNotVisible, r.Diagnoses)
	}
	return bad
}

// checkNATNotVisibleMetric: each agent's lbpath.agent.nat_not_visible
// counts exactly its flagged records, in the exporter and on the wire.
// set.Agents are in nodes' order (nodeagents.Start).
func checkNATNotVisibleMetric(t *testing.T, set *nodeagents.Set, nodes []*testbed.Node, sink *otlpsink.Sink, want map[string]uint64) {
	t.Helper()
	for i, a := range set.Agents {
		got := a.Exporter().NATNotVisible()
		node := nodes[i].Name
		if got[path.NATHiddenExternalClient] != want[node] || got[path.NATHiddenServiceAddress] != 0 {
			t.Errorf("%s: nat_not_visible counts %v, want %d %s", node, got, want[node], path.NATHiddenExternalClient)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		wire := map[string]uint64{}
		for _, p := range sink.Points() {
			if p.Metric == exporter.MetricNATNotVisible && p.Attrs["lbpath.nat_not_visible.reason"] == path.NATHiddenExternalClient {
				wire[fmt.Sprint(p.Resource["k8s.node.name"])] = uint64(p.Value) // cumulative: the last point
			}
		}
		same := len(wire) == len(nodes)
		for _, n := range nodes {
			same = same && wire[n.Name] == want[n.Name]
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s{reason=%s} on the wire %v, want %v", exporter.MetricNATNotVisible, path.NATHiddenExternalClient, wire, want)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
