package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

// tunnelSource is how the agent must say it knows an entry node's tunnel
// address, per overlay.
var tunnelSource = map[testbed.Overlay]kube.NodeAddrSource{
	testbed.OverlayFlannel: kube.NodeAddrFlannelTunnel,
	testbed.OverlayCalico:  kube.NodeAddrCalicoTunnel,
	testbed.OverlayCilium:  kube.NodeAddrCiliumHost,
}

// TestOverlayFlannelVXLAN: flannel's VXLAN convention (tunnel address =
// the pod CIDR's .0, no annotation names it) with the real API server and
// the real kube-proxy in iptables and nftables modes, externalTrafficPolicy
// Cluster and Local, entries ClusterIP, NodePort on every node and LB via
// every node: 100 % of connections named with the right pod, Service,
// entry node, SNAT and cross-node flag on both the entry node's and the
// pod node's records, against the client's and the pod's own view.
func TestOverlayFlannelVXLAN(t *testing.T) {
	overlayMatrix(t, "lbof", testbed.FamilyIPv4, testbed.OverlayFlannel, bothModes)
}

// TestOverlayCalicoVXLAN: the same with Calico's annotations
// (projectcalico.org/IPv4VXLANTunnelAddr), kube-proxy in iptables mode.
func TestOverlayCalicoVXLAN(t *testing.T) {
	overlayMatrix(t, "lboc", testbed.FamilyIPv4, testbed.OverlayCalico, []testbed.ProxyMode{testbed.ModeIPTables})
}

// TestOverlayCiliumTunnel: the same with Cilium's router-IP annotation
// (network.cilium.io/ipv4-cilium-host), kube-proxy in nftables mode.
func TestOverlayCiliumTunnel(t *testing.T) {
	overlayMatrix(t, "lboi", testbed.FamilyIPv4, testbed.OverlayCilium, []testbed.ProxyMode{testbed.ModeNFTables})
}

// TestOverlayFlatNetwork: the flat network under the same strict checks,
// so node-address learning changed nothing there.
func TestOverlayFlatNetwork(t *testing.T) {
	overlayMatrix(t, "lbol", testbed.FamilyIPv4, testbed.OverlayFlat, bothModes)
}

var bothModes = []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables}

// overlayMatrix runs one cluster of family fam on overlay ov and, for each
// kube-proxy mode in modes and both policies, checks every connection of
// every entry in every family of the cluster (checkOverlay).
func overlayMatrix(t *testing.T, prefix string, fam testbed.Family, ov testbed.Overlay, modes []testbed.ProxyMode) {
	c := upK8s(t, prefix, k8s.Options{Mode: modes[0], Policy: testbed.PolicyCluster, Overlay: ov, Family: fam})
	set, named := startNamedAgents(t, c, nodeagents.Options{})
	for _, a := range set.Agents {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if !a.Watcher().WaitSynced(ctx) {
			t.Fatal("agent metadata not synced")
		}
		cancel()
	}
	ctx := context.Background()
	total := map[string]int{}
	for _, mode := range modes {
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
						name := en.name
						if fam != testbed.FamilyIPv4 {
							name = string(f) + "/" + en.name
						}
						t.Run(name, func(t *testing.T) {
							ok, n := overlayEntry(t, c, ov, named, en, pods)
							total[fmt.Sprintf("%s/%s/%s", mode, policy, name)] += n
							if ok != n {
								t.Errorf("%d of %d connections attributed right", ok, n)
							}
						})
					}
				}
			})
		}
	}
	sum := 0
	for _, n := range total {
		sum += n
	}
	t.Logf("%s overlay %q: %d connections checked, per cell %v", fam, ov, sum, total)
}

// overlayEntry sends through one entry and checks every connection; it
// returns how many passed every check and how many were sent.
func overlayEntry(t *testing.T, c *k8s.Cluster, ov testbed.Overlay, named *namedRecords, en kubeEntry, pods map[string][2]string) (int, int) {
	exps := en.run(t, 6)
	deadline := time.Now().Add(10 * time.Second)
	ok := 0
	for _, e := range exps {
		v, found := waitView(named, e.res, deadline)
		if !found {
			t.Errorf("%v->%v (pod %s): no named records", e.res.Local, e.res.Remote, e.res.Pod)
			continue
		}
		if checkOverlay(t, c, ov, v, e, en.entry, pods) {
			ok++
		}
	}
	return ok, len(exps)
}

// checkOverlay asserts one connection against ground truth and reports
// whether every check passed. Ground truth: the pod that answered, the
// address the pod saw (SNAT when it is not the client socket's), the node
// the client's traffic was routed to. A cross-node SNAT must come from the
// entry node's tunnel address of the connection's family (its LAN address
// on the flat network), and the pod node must name the entry node by it
// with the overlay's source.
func checkOverlay(tt *testing.T, c *k8s.Cluster, ov testbed.Overlay, v view, e expectation, entry string, pods map[string][2]string) bool {
	tt.Helper()
	t := &countingTB{TB: tt}
	res := e.res
	id := fmt.Sprintf("%v->%v (pod %s)", res.Local, res.Remote, res.Pod)
	snat := res.SeenRemote.Addr() != res.Local.Addr()
	if snat != e.snat {
		t.Errorf("%s: testbed: pod saw %v, SNAT %v, want %v by policy", id, res.SeenRemote, snat, e.snat)
	}
	checkNamed(t, v, e, entry, pods)
	s := v.server
	podNode := pods[res.Pod][1]
	cross := e.entryNode != podNode
	var entryNode *testbed.Node
	for _, n := range c.TB.Nodes {
		if n.Name == e.entryNode {
			entryNode = n
		}
	}
	if snat {
		// The pod node's own record must say SNAT and where it entered,
		// whether it learnt that from its own NAT entry (local) or from
		// the source address (another node's).
		if !s.SNAT || s.EntryNode != e.entryNode || s.CrossNode != cross {
			t.Errorf("%s: pod node's record: snat %v entry %q cross %v, want true %q %v", id, s.SNAT, s.EntryNode, s.CrossNode, e.entryNode, cross)
		}
		if cross {
			fam := res.Remote.Addr()
			want := entryNode.IPIn(fam)
			src := string(kube.NodeAddrInternalIP)
			if ov != testbed.OverlayFlat {
				want, src = entryNode.TunnelIn(fam).IP, string(tunnelSource[ov])
			}
			if res.SeenRemote.Addr() != want {
				t.Errorf("%s: testbed: pod saw %v, want the entry node's %v", id, res.SeenRemote, want)
			}
			if s.ClientKind != string(path.PeerNode) || s.ClientName != e.entryNode || s.ClientNodeAddr != src {
				t.Errorf("%s: pod node's record: client %s %q via %q, want node %q via %q", id, s.ClientKind, s.ClientName, s.ClientNodeAddr, e.entryNode, src)
			}
		}
	} else if s.SNAT || s.ClientLost || v.entry.SNAT {
		t.Errorf("%s: SNAT claimed (server %v, entry %v) but the pod saw the client's own %v", id, s.SNAT, v.entry.SNAT, res.SeenRemote)
	}
	if cross && !v.entry.CrossNode {
		t.Errorf("%s: entry record misses the cross-node hop %s → %s", id, e.entryNode, podNode)
	}
	return t.errors == 0
}

// countingTB counts the errors reported through it, so a check can say
// whether this connection passed while the test keeps all messages.
type countingTB struct {
	testing.TB
	errors int
}

func (c *countingTB) Errorf(format string, args ...any) {
	c.TB.Helper()
	c.errors++
	c.TB.Errorf(format, args...)
}

// TestOverlayFlowMatrix: the kernel-side join on the flannel VXLAN overlay
// without Kubernetes names: both kube-proxy modes × both policies × every
// entry, every connection's merged record has the right pod, entry node,
// pre- and post-NAT tuples (the tunnel source the pod saw), SNAT flag,
// cross-node flag and bytes.
func TestOverlayFlowMatrix(t *testing.T) {
	needCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	cl, err := testbed.Up(ctx, testbed.Options{Prefix: "lbow", Overlay: testbed.OverlayFlannel})
	cancel()
	if err != nil {
		t.Fatalf("testbed up: %v", err)
	}
	t.Cleanup(func() {
		if err := cl.Down(); err != nil {
			t.Errorf("testbed down: %v", err)
		}
	})
	recs, _ := startAgents(t, cl)
	for _, mode := range []testbed.ProxyMode{testbed.ModeIPTables, testbed.ModeNFTables} {
		for _, policy := range []testbed.Policy{testbed.PolicyCluster, testbed.PolicyLocal} {
			t.Run(fmt.Sprintf("%s/%s", mode, policy), func(t *testing.T) {
				if err := cl.SetMode(t.Context(), mode); err != nil {
					t.Fatal(err)
				}
				if err := cl.SetPolicy(t.Context(), policy); err != nil {
					t.Fatal(err)
				}
				for _, en := range entries(cl, policy) {
					t.Run(en.name, func(t *testing.T) {
						exps := en.run(t, 8)
						ms := waitMerged(t, recs, exps)
						tunnel := 0
						for _, e := range exps {
							m, ok := findMerged(ms, e.res)
							if !ok {
								t.Errorf("no record for %v->%v (pod %s)", e.res.Local, e.res.Remote, e.res.Pod)
								continue
							}
							checkConnection(t, cl, m, e)
							for _, n := range cl.Nodes {
								if e.res.SeenRemote.Addr() == n.TunnelIn(e.res.Remote.Addr()).IP {
									tunnel++
								}
							}
						}
						t.Logf("%d connections checked, %d reached their pod from a tunnel address", len(exps), tunnel)
					})
				}
			})
		}
	}
}
