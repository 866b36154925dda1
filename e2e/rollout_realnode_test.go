package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

// TestRolloutAttributionRealNodes: on real kubelet + containerd nodes whose
// host-local range is barely larger than the pods they run, rollouts hand
// freed pod IPs to new pods while traffic runs. The pod's node names every
// connection by the socket's network namespace (the sandbox the real
// kubelet made, whose pod cgroup carries the pod UID), so not one
// connection is misattributed, reused IP or not; every failed request is on
// record as failed; bytes are exact.
func TestRolloutAttributionRealNodes(t *testing.T) {
	c := upK8s(t, "lbrr", k8s.Options{RealNodes: true, PodIPsPerNode: 4})
	_, named := startNamedAgents(t, c, nodeagents.Options{PodCIDRScope: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	owners := watchPodIPs(ctx, t, c)
	var mu sync.Mutex
	var results, failed []testbed.Result
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			res := c.TB.Request(ctx, c.TB.ClientPod.Netns, c.TB.Web().ClusterAddr(), 10, 50)
			mu.Lock()
			if res.Err == nil {
				results = append(results, res)
			} else if ctx.Err() == nil {
				failed = append(failed, res)
			}
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	// Three rollouts: each node allocates more addresses than its range
	// holds, so host-local wraps around to freed ones.
	for i := range 3 {
		if err := c.SetWebDelay(ctx, time.Duration(i+1)*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitWebReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	cancel()
	<-done
	rs := owners.rs()

	time.Sleep(3 * time.Second) // JoinWait + metadata wait
	recs := named.all()
	waitViews(t, named, results, 10*time.Second)
	recs = named.all()
	reused := map[netip.Addr]bool{}
	bySource := map[path.PodSource]int{}
	for _, res := range results {
		v, ok := findView(recs, res)
		if !ok {
			t.Errorf("%v: no named records (pod %s)", res.Local, res.Pod)
			continue
		}
		ip := v.m.Key.Dst.Addr()
		if len(owners.of(ip)) > 1 {
			reused[ip] = true
		}
		bySource[v.server.PodSource]++
		if v.server.Pod != "default/"+res.Pod || v.server.ReplicaSet != rs[res.Pod] || v.server.PodSource != path.PodFromNetns {
			t.Errorf("%v answered by %s (rs %s) at %v (owners %v): server record names %q rs %q from %s",
				res.Local, res.Pod, rs[res.Pod], ip, owners.of(ip), v.server.Pod, v.server.ReplicaSet, v.server.PodSource)
		}
		if v.server.BytesToServer != uint64(res.Sent) || v.server.BytesToClient != uint64(res.Received) {
			t.Errorf("%v: server record bytes %d/%d, client sent %d received %d",
				res.Local, v.server.BytesToServer, v.server.BytesToClient, res.Sent, res.Received)
		}
		// The entry record is on the client's node, which cannot see the
		// pod's namespace when the pod runs elsewhere: it is named by the
		// IP index. It must be right wherever the IP never changed hands.
		if v.entry.Pod != "default/"+res.Pod && len(owners.of(ip)) < 2 {
			t.Errorf("%v: entry record names %q, answered by %s at %v, an IP that never changed hands", res.Local, v.entry.Pod, res.Pod, ip)
		}
	}
	t.Logf("%d connections through 3 rollouts, %d failed, %d reused pod IPs exercised; server pods named by %v",
		len(results), len(failed), len(reused), bySource)
	if len(reused) == 0 {
		t.Errorf("no connection went to a reused pod IP: the test did not exercise reuse (owners %v)", owners.all())
	}
	checkFailedOnRecord(t, recs, failed)
}

// podIPs is every pod that held each IP while the test ran, and each pod's
// ReplicaSet, polled from the API server.
type podIPs struct {
	mu     sync.Mutex
	owners map[netip.Addr]map[string]bool
	rsOf   map[string]string
}

func (o *podIPs) of(ip netip.Addr) map[string]bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.owners[ip]
}

func (o *podIPs) all() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return fmt.Sprint(o.owners)
}

func (o *podIPs) rs() map[string]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.rsOf
}

// watchPodIPs polls the web pods every 50 ms until ctx ends. A pod holds
// its IP for seconds (start-up, readiness, grace), far longer than a poll.
func watchPodIPs(ctx context.Context, t *testing.T, c *k8s.Cluster) *podIPs {
	t.Helper()
	o := &podIPs{owners: map[netip.Addr]map[string]bool{}, rsOf: map[string]string{}}
	poll := func() {
		list, err := c.Client.CoreV1().Pods(k8s.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, p := range list.Items {
			for _, ref := range p.OwnerReferences {
				if ref.Kind == "ReplicaSet" {
					o.rsOf[p.Name] = ref.Name
				}
			}
			ip, err := netip.ParseAddr(p.Status.PodIP)
			if err != nil || p.Spec.HostNetwork {
				continue
			}
			if o.owners[ip] == nil {
				o.owners[ip] = map[string]bool{}
			}
			o.owners[ip][p.Name] = true
		}
	}
	poll()
	go func() {
		for ctx.Err() == nil {
			poll()
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return o
}
