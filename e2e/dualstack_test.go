package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

// TestDualStack: the real API server with the service CIDRs of each family
// (IPv4, IPv6-only, dual-stack) and the real kube-proxy in iptables and
// nftables mode, under both externalTrafficPolicies. In every cell, every
// connection through every entry (ClusterIP, NodePort, LoadBalancer) in
// every family of the cluster is named right against the client's record of
// the pod that answered: pod, Service, Deployment, ReplicaSet, entry and
// entry node, SNAT, cross-node (checkNamed, as TestNamedPathsRealControlPlane
// does for IPv4). Refusals by a Service without endpoints and by a closed pod
// port are recorded in each family.
func TestDualStack(t *testing.T) {
	for _, fam := range []testbed.Family{testbed.FamilyIPv4, testbed.FamilyIPv6, testbed.FamilyDual} {
		t.Run(string(fam), func(t *testing.T) { dualStackFamily(t, fam) })
	}
}

func dualStackFamily(t *testing.T, fam testbed.Family) {
	c := upK8s(t, "lbd", k8s.Options{Mode: testbed.ModeIPTables, Policy: testbed.PolicyCluster, Family: fam})
	_, named := startNamedAgents(t, c, nodeagents.Options{})
	ctx := context.Background()
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		for _, policy := range []testbed.Policy{testbed.PolicyCluster, testbed.PolicyLocal} {
			t.Run(fmt.Sprintf("%s/%s", mode, policy), func(t *testing.T) {
				if err := c.SetMode(ctx, mode); err != nil {
					t.Fatal(err)
				}
				if err := c.SetPolicy(ctx, policy); err != nil {
					t.Fatal(err)
				}
				time.Sleep(1500 * time.Millisecond) // kube-proxy resyncs after the Service change
				pods := podRS(t, c)
				for _, f := range c.TB.Families() {
					for _, en := range familyEntries(c, policy, testbed.FamilyAddr(f)) {
						t.Run(string(f)+"/"+en.name, func(t *testing.T) {
							exps := en.run(t, 6)
							checked := checkAllNamed(t, named, exps, en.entry, pods)
							t.Logf("%s %s/%s %s %s: %d of %d connections named right", fam, mode, policy, f, en.name, checked, len(exps))
						})
					}
					t.Run(string(f)+"/Refused", func(t *testing.T) { checkRefusals(t, c, named, testbed.FamilyAddr(f)) })
				}
			})
		}
	}
}

// checkAllNamed waits for each expectation's records and checks them; it
// returns how many connections had every check pass.
func checkAllNamed(t *testing.T, named *namedRecords, exps []expectation, entry string, pods map[string][2]string) int {
	t.Helper()
	deadline := time.Now().Add(8 * time.Second)
	ok := 0
	for _, e := range exps {
		v, found := waitView(named, e.res, deadline)
		if !found {
			t.Errorf("%v->%v (pod %s): no named records", e.res.Local, e.res.Remote, e.res.Pod)
			continue
		}
		sub := &countingT{T: t}
		checkNamed(sub, v, e, entry, pods)
		if !sub.failed {
			ok++
			continue
		}
		logRelated(t, named.all(), e.res)
	}
	return ok
}

// logRelated logs every record that shares the connection's client socket
// or the address the pod saw, so a failure shows what the agents reported.
func logRelated(t *testing.T, recs []path.Record, res testbed.Result) {
	t.Helper()
	for _, r := range recs {
		c := r.Connection
		if c.Client == res.Local || c.PodSrc == res.Local || c.PodSrc == res.SeenRemote || c.Client == res.SeenRemote {
			t.Logf("  record on %s: role %s client %v target %v pod-side %v->%v snat %v nat %+v start %s",
				c.Node, c.Role, c.Client, c.Target, c.PodSrc, c.PodDst, c.SNAT, c.NAT, c.Start.Format("15:04:05.000"))
		}
	}
}

// countingT notes whether checkNamed reported an error for one connection.
type countingT struct {
	*testing.T
	failed bool
}

func (c *countingT) Errorf(format string, args ...any) {
	c.failed = true
	c.T.Helper()
	c.T.Errorf(format, args...)
}

// familyEntries are kubeEntries in the family of like: the Service's
// ClusterIP and LB IP of that family, the nodes' addresses of that family.
func familyEntries(c *k8s.Cluster, policy testbed.Policy, like netip.Addr) []kubeEntry {
	ctx := context.Background()
	tb := c.TB
	web := tb.Web()
	external := policy == testbed.PolicyCluster
	send := func(t *testing.T, from string, target netip.AddrPort, entryNode string, snat bool, n int) []expectation {
		var out []expectation
		for i := range n {
			res := tb.Request(ctx, from, target, 20+i, 100)
			if res.Err != nil {
				t.Fatalf("request %d to %v: %v", i, target, res.Err)
			}
			out = append(out, expectation{res: res, entryNode: entryNode, snat: snat})
		}
		return out
	}
	// Under Local only nodes with a ready endpoint take external traffic.
	pods, _ := c.WebPods(ctx)
	hasPod := map[string]bool{}
	for _, p := range pods {
		hasPod[p.Node] = true
	}
	nodes := func() []*testbed.Node {
		var out []*testbed.Node
		for _, n := range tb.Nodes {
			if policy == testbed.PolicyCluster || hasPod[n.Name] {
				out = append(out, n)
			}
		}
		return out
	}
	clusterAddr, _ := web.ClusterAddrIn(like)
	lbAddr, _ := web.LoadBalancerAddrIn(like)
	return []kubeEntry{
		{"ClusterIP", "clusterip", func(t *testing.T, n int) []expectation {
			return send(t, tb.ClientPod.Netns, clusterAddr, tb.ClientPod.Node.Name, false, n)
		}},
		{"NodePort", "nodeport", func(t *testing.T, n int) []expectation {
			var out []expectation
			for _, node := range nodes() {
				out = append(out, send(t, tb.Client.Netns, netip.AddrPortFrom(node.IPIn(like), web.NodePort), node.Name, external, n)...)
			}
			return out
		}},
		{"LoadBalancer", "loadbalancer", func(t *testing.T, n int) []expectation {
			var out []expectation
			for _, node := range nodes() {
				time.Sleep(100 * time.Millisecond)
				if err := tb.RouteLB(node.Index); err != nil {
					t.Fatal(err)
				}
				out = append(out, send(t, tb.Client.Netns, lbAddr, node.Name, external, n)...)
			}
			return out
		}},
	}
}

// checkRefusals: in the family of like, a connection to Service empty's
// ClusterIP and NodePort and to a closed pod port is refused, and the agents
// record the client's refusal and the node's or pod's rejection.
func checkRefusals(t *testing.T, c *k8s.Cluster, named *namedRecords, like netip.Addr) {
	ctx := context.Background()
	tb := c.TB
	empty := tb.Empty()
	node1 := tb.Nodes[0]
	cip, _ := empty.ClusterAddrIn(like)
	np := netip.AddrPortFrom(node1.IPIn(like), empty.NodePort)
	pods, err := c.WebPods(ctx)
	if err != nil || len(pods) == 0 {
		t.Fatalf("web pods: %v %v", pods, err)
	}
	podIP := tb.Pod(pods[0].Name).IPIn(like)
	closed := netip.AddrPortFrom(podIP, 9999)
	for _, target := range []struct {
		from string
		ap   netip.AddrPort
	}{{tb.ClientPod.Netns, cip}, {tb.Client.Netns, np}, {tb.ClientPod.Netns, closed}} {
		if res := tb.Request(ctx, target.from, target.ap, 0, 0); !testbed.IsRefused(res.Err) {
			t.Fatalf("%v: err %v, want ECONNREFUSED", target.ap, res.Err)
		}
	}
	src := tb.ClientPod.IPIn(like)
	want := []struct {
		what string
		pred func(r path.Record) bool
	}{
		{"client record refused by the ClusterIP without endpoints", func(r path.Record) bool {
			return r.Role == flow.RoleClient && r.Outcome == flow.OutcomeRefused && r.Target == cip && r.Client.Addr() == src
		}},
		{"node reject of the ClusterIP without endpoints, named", func(r path.Record) bool {
			return r.Role == flow.RoleReject && r.Target == cip && r.Client.Addr() == src && r.Service == "default/empty"
		}},
		{"node reject of the NodePort without endpoints, named", func(r path.Record) bool {
			return r.Role == flow.RoleReject && r.Outcome == flow.OutcomeRefused && r.Target == np &&
				r.Node == node1.Name && r.Client.Addr() == tb.Client.IPIn(like) && r.Service == "default/empty"
		}},
		{"client record refused by a closed pod port", func(r path.Record) bool {
			return r.Role == flow.RoleClient && r.Outcome == flow.OutcomeRefused && r.Target == closed
		}},
		{"pod kernel reset of the closed port", func(r path.Record) bool {
			return r.Role == flow.RoleReject && r.Target == closed && r.Node == pods[0].Node
		}},
	}
	deadline := time.Now().Add(8 * time.Second)
	for _, w := range want {
		found := false
		for !found && time.Now().Before(deadline) {
			for _, r := range named.all() {
				if w.pred(r) {
					found = true
					break
				}
			}
			if !found {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if !found {
			t.Errorf("%s (%v): no record", w.what, like)
		}
	}
}
