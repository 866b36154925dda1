package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// pipelineAt is node1's pipeline over the cluster of class_test.go, with
// the informers synced an hour ago and the node's addresses read just now.
func pipelineAt(t *testing.T, now time.Time) (*Pipeline, *[]Path, *[]Request, *kube.Freshness) {
	t.Helper()
	x, local, _ := cluster(t)
	local.Set([]netip.Addr{node1, cniGateway}, now.Add(time.Second))
	fresh := &kube.Freshness{}
	fresh.Synced(now.Add(-time.Hour))
	var paths []Path
	var reqs []Request
	pl := NewPipeline(NewNamer(Config{Node: "node1", Local: local, Current: fresh.CurrentAt}, x), PipelineConfig{},
		func(p *Path) { paths = append(paths, *p) }, func(r *Request) { reqs = append(reqs, *r) })
	return pl, &paths, &reqs, fresh
}

func classes(ps []Path) []Class {
	out := make([]Class, len(ps))
	for i := range ps {
		out[i] = ps[i].Class
	}
	return out
}

// The node's own connections leave the pipeline classified and are never
// unattributed: loopback at once, positive facts once metadata settled,
// an unowned address after the full wait. A pod connection beside them is
// named as before.
func TestPipelineNodeTraffic(t *testing.T) {
	now := time.Now()
	pl, paths, _, _ := pipelineAt(t, now)
	lo := netip.MustParseAddr("127.0.0.1")
	mk := func(client, server netip.AddrPort) *flow.Connection {
		c := conn(flow.RoleClient, client, server)
		c.Start, c.End = now, now
		return &c
	}
	pl.Connection(mk(ap(lo, 40000), ap(lo, 8080)))
	if got := classes(*paths); len(got) != 1 || got[0] != ClassNodeLocal {
		t.Fatalf("loopback not emitted at once: %v", got)
	}
	pl.Connection(mk(ap(node1, 40001), apiEP))
	pl.Connection(mk(ap(node1, 40002), internet))
	pl.Connection(mk(ap(node1, 40003), ap(podA, 8080)))
	if pl.Waiting() != 3 {
		t.Fatalf("waiting %d, want 3 (settle)", pl.Waiting())
	}
	pl.Tick(now.Add(1100 * time.Millisecond))
	if got := classes(*paths); len(got) != 3 || got[1] != ClassAPIServer || got[2] != ClassCluster || (*paths)[2].Pod == nil {
		t.Fatalf("after settle: %v", got)
	}
	pl.Tick(now.Add(2900 * time.Millisecond))
	if pl.Waiting() != 1 {
		t.Fatalf("external emitted before the full wait: %v", classes(*paths))
	}
	pl.Tick(now.Add(3100 * time.Millisecond))
	if got := classes(*paths); len(got) != 4 || got[3] != ClassExternal {
		t.Fatalf("after the wait: %v", got)
	}
	if u := pl.Stats.Unattributed.Load(); u != 0 {
		t.Errorf("unattributed = %d, want 0", u)
	}
}

// While the API server is unreachable nothing but kernel facts is
// concluded: a node connection and a pod connection alike go out
// unattributed, class unknown — an outage never turns a pod's connection
// into "external".
func TestPipelineOutage(t *testing.T) {
	now := time.Now()
	pl, paths, _, fresh := pipelineAt(t, now)
	fresh.Fail("pods")
	for _, server := range []netip.AddrPort{internet, podUnknown} {
		c := conn(flow.RoleClient, ap(node1, 40000), server)
		c.Start, c.End = now, now
		pl.Connection(&c)
	}
	lo := conn(flow.RoleClient, netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("127.0.0.1:8080"))
	lo.Start, lo.End = now, now
	pl.Connection(&lo)
	pl.Tick(now.Add(3100 * time.Millisecond))
	got := classes(*paths)
	if len(got) != 3 || got[0] != ClassNodeLocal || got[1] != ClassUnknown || got[2] != ClassUnknown {
		t.Errorf("classes %v, want node_local, unknown, unknown", got)
	}
	if u := pl.Stats.Unattributed.Load(); u != 2 {
		t.Errorf("unattributed = %d, want 2", u)
	}
}

// Requests on the node's own servers are not the per-pod metrics' and are
// no loss; requests whose server could be an unnamed pod are.
func TestPipelineRequests(t *testing.T) {
	now := time.Now()
	pl, _, reqs, fresh := pipelineAt(t, now)
	req := func(server netip.AddrPort) {
		pl.Request(&flow.Request{Node: "node1", Start: now, PodSrc: ap(node2, 50000), PodDst: server})
	}
	req(ap(podA, 8080))
	req(ap(node1, 10250))
	req(ap(cniGateway, 53))
	if len(*reqs) != 1 || (*reqs)[0].Pod == nil || pl.Stats.RequestsNode.Load() != 2 || pl.Stats.RequestsUnattributed.Load() != 0 {
		t.Errorf("requests %d, node %d, unattributed %d", len(*reqs), pl.Stats.RequestsNode.Load(), pl.Stats.RequestsUnattributed.Load())
	}
	fresh.Fail("pods")
	req(ap(node1, 10250)) // the InternalIP could be a host port: unknown
	req(podUnknown)
	req(ap(cniGateway, 53)) // kernel fact still
	if pl.Stats.RequestsUnattributed.Load() != 2 || pl.Stats.RequestsNode.Load() != 3 {
		t.Errorf("during the outage: node %d, unattributed %d", pl.Stats.RequestsNode.Load(), pl.Stats.RequestsUnattributed.Load())
	}
}

func TestClassCounts(t *testing.T) {
	var cc ClassCounts
	for _, c := range []Class{ClassExternal, ClassExternal, ClassKubelet, ClassCluster, ClassUnknown, ClassLBHealthCheck} {
		cc.Add(c)
	}
	want := []ClassCount{{ClassNodeLocal, 0}, {ClassAPIServer, 0}, {ClassKubelet, 1}, {ClassExternal, 2}, {ClassLBHealthCheck, 1}}
	got := cc.Snapshot()
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%v, want %v", got, want)
		}
	}
}
