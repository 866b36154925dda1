package lbimbalance

import (
	"fmt"
	"math"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pmetric"
)

// readyBatch is one report of the cluster receiver's gauge as the contract
// says (common to lbpath's receiver and this processor): resource
// service.name=lbpath-collector, one point of value 1 per ready endpoint
// per transport.
func readyBatch(at time.Time, ns, svc string, pods map[string]string, transports ...string) pmetric.Metrics {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	rm.Resource().Attributes().PutStr("service.name", "lbpath-collector")
	m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
	m.SetName("lbpath.service.endpoint.ready")
	dps := m.SetEmptyGauge().DataPoints()
	for pod, node := range pods {
		for _, tr := range transports {
			dp := dps.AppendEmpty()
			dp.SetTimestamp(ts(at))
			dp.SetIntValue(1)
			a := dp.Attributes()
			a.PutStr("k8s.namespace.name", ns)
			a.PutStr("k8s.service.name", svc)
			a.PutStr("k8s.pod.name", pod)
			a.PutStr("k8s.node.name", node)
			a.PutStr("network.transport", tr)
		}
	}
	return md
}

// tenPods are the ready endpoints of shop/cart: pod-0 … pod-9 on two nodes.
func tenPods() map[string]string {
	m := map[string]string{}
	for i := range 10 {
		m[fmt.Sprintf("pod-%d", i)] = fmt.Sprintf("n%d", i%2)
	}
	return m
}

// oneBusy is pod-0 (node n0) taking all of the Service's traffic: 50
// connections per step.
func oneBusy(k int, extra ...podCounters) []podCounters {
	f := float64(k)
	return append([]podCounters{{pod: "pod-0", node: "n0", conns: 50 * f, reqs: 500 * f, bytes: 5000 * f}}, extra...)
}

// Issue 13's case: a Service of 10 ready pods where 1 gets all the
// traffic. Without the ready endpoints it reads as one pod, perfectly
// balanced; with them it is flagged.
func TestOneOfTenReadyPodsTakingAllTrafficIsFlagged(t *testing.T) {
	h := newHarness(t, nil)
	for k := 1; k <= 3; k++ {
		at := t0.Add(time.Duration(k) * 10 * time.Second)
		h.consume(readyBatch(at, "shop", "cart", tenPods(), "tcp", "udp"))
		h.consume(agentBatch(at, "shop", "cart", oneBusy(k)))
	}
	if got := h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-0", "k8s.node.name", "n0")); got != 1 {
		t.Fatalf("pod-0 with all of the traffic of 10 ready pods: hot = %v, want 1", got)
	}
	if got := h.value("lbpath.lb.pods", svcAttrs()); got != 10 {
		t.Fatalf("pods = %v, want 10 (one per ready endpoint, tcp and udp points of a pod counted once)", got)
	}
	if got := h.value("lbpath.lb.idle_pods", svcAttrs()); got != 9 {
		t.Fatalf("idle_pods = %v, want 9", got)
	}
	for i := 1; i < 10; i++ {
		pod := fmt.Sprintf("pod-%d", i)
		if got := h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", pod, "k8s.node.name", fmt.Sprintf("n%d", i%2), "lbpath.signal", "connections")); got != 0 {
			t.Fatalf("%s share = %v, want 0", pod, got)
		}
		if got := h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", pod)); got != 0 {
			t.Fatalf("%s hot = %v, want 0", pod, got)
		}
	}
	for _, sig := range []string{"connections", "requests", "bytes"} {
		near(t, "share pod-0 "+sig, h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-0", "lbpath.signal", sig)), 1, 0)
		near(t, "max/mean "+sig, h.value("lbpath.lb.max_mean_ratio", svcAttrs("lbpath.signal", sig)), 10, 1e-9)
		// one pod at 10× the mean, nine at 0: stddev = mean·√9
		near(t, "cv "+sig, h.value("lbpath.lb.cv", svcAttrs("lbpath.signal", sig)), 3, 1e-9)
		near(t, "node_share n0 "+sig, h.value("lbpath.lb.node_share", svcAttrs("k8s.node.name", "n0", "lbpath.signal", sig)), 1, 0)
		near(t, "node_share n1 "+sig, h.value("lbpath.lb.node_share", svcAttrs("k8s.node.name", "n1", "lbpath.signal", sig)), 0, 0)
	}

	// The same traffic without the gauge: what lbimbalance could say before.
	bare := newHarness(t, nil)
	for k := 1; k <= 3; k++ {
		bare.consume(agentBatch(t0.Add(time.Duration(k)*10*time.Second), "shop", "cart", oneBusy(k)))
	}
	if got := bare.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-0")); got != 0 {
		t.Fatalf("without ready endpoints hot = %v, want 0 (one pod known)", got)
	}
	if got := bare.value("lbpath.lb.pods", svcAttrs()); got != 1 {
		t.Fatalf("without ready endpoints pods = %v, want 1", got)
	}
	if _, n := lookup(bare.computed(), "lbpath.lb.idle_pods", svcAttrs()); n != 0 {
		t.Fatal("idle_pods reported for a Service the gauge never listed: it must be absent (unknown), not 0")
	}
}

// Pods with traffic count whether or not the gauge lists them (a pod
// turning unready still finishes its connections); endpoints that turn
// unready leave with the next report; when the gauge stops altogether the
// processor falls back to the pods with traffic after stale_after.
func TestReadyEndpointsFollowTheGauge(t *testing.T) {
	h := newHarness(t, nil)
	ready := tenPods()
	delete(ready, "pod-0") // pod-0 has traffic but is not (or no longer) ready
	at := func(k int) time.Time { return t0.Add(time.Duration(k) * 10 * time.Second) }
	for k := 1; k <= 3; k++ {
		h.consume(readyBatch(at(k), "shop", "cart", ready, "tcp"))
		h.consume(agentBatch(at(k), "shop", "cart", oneBusy(k, podCounters{pod: "pod-1", node: "n1", conns: 1 * float64(k)})))
	}
	if got := h.value("lbpath.lb.pods", svcAttrs()); got != 10 {
		t.Fatalf("pods = %v, want 10 (9 ready incl. pod-1 with traffic, plus pod-0 with traffic)", got)
	}
	if got := h.value("lbpath.lb.idle_pods", svcAttrs()); got != 8 {
		t.Fatalf("idle_pods = %v, want 8 (pod-2 … pod-9)", got)
	}
	near(t, "share pod-1", h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-1", "lbpath.signal", "connections")), 1.0/51, 1e-12)

	// Five endpoints turn unready: the next report lists pod-1 … pod-4.
	for i := 5; i < 10; i++ {
		delete(ready, fmt.Sprintf("pod-%d", i))
	}
	h.consume(readyBatch(at(4), "shop", "cart", ready, "tcp"))
	h.consume(agentBatch(at(4), "shop", "cart", oneBusy(4, podCounters{pod: "pod-1", node: "n1", conns: 4})))
	if got := h.value("lbpath.lb.pods", svcAttrs()); got != 5 {
		t.Fatalf("after 5 endpoints turned unready pods = %v, want 5", got)
	}
	if _, n := lookup(h.computed(), "lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-7")); n != 0 {
		t.Fatal("an endpoint no longer ready still has a share")
	}

	// The receiver stops reporting: after stale_after (5 min) only pods with
	// traffic are left, and idle_pods is absent again.
	k := 5
	for ; at(k).Sub(at(4)) <= 5*time.Minute+10*time.Second; k++ {
		h.consume(agentBatch(at(k), "shop", "cart", oneBusy(k, podCounters{pod: "pod-1", node: "n1", conns: float64(k)})))
	}
	if got := h.value("lbpath.lb.pods", svcAttrs()); got != 2 {
		t.Fatalf("gauge silent for longer than stale_after: pods = %v, want 2", got)
	}
	if _, n := lookup(h.computed(), "lbpath.lb.idle_pods", svcAttrs()); n != 0 {
		t.Fatal("idle_pods still reported after the gauge went silent")
	}
	if got := h.value("lbpath.lb.evictions", map[string]string{"lbpath.reason": "stale_endpoints"}); got != 1 {
		t.Fatalf("stale_endpoints evictions = %v, want 1", got)
	}
	if math.IsNaN(h.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-0"))) {
		t.Fatal("unreachable")
	}
}

// A report lists only Services with ready endpoints: a Service missing from
// the latest report (all of its endpoints turned unready) has none, while
// other Services' points show the receiver is alive.
func TestServiceMissingFromLatestReportHasNoReadyEndpoints(t *testing.T) {
	h := newHarness(t, nil)
	at := func(k int) time.Time { return t0.Add(time.Duration(k) * 10 * time.Second) }
	h.consume(readyBatch(at(1), "shop", "cart", tenPods(), "tcp"))
	h.consume(agentBatch(at(1), "shop", "cart", oneBusy(1)))
	if got := h.value("lbpath.lb.pods", svcAttrs()); got != 10 {
		t.Fatalf("pods = %v, want 10", got)
	}
	h.consume(readyBatch(at(2), "shop", "db", map[string]string{"db-0": "n0"}, "tcp"))
	h.consume(agentBatch(at(2), "shop", "cart", oneBusy(2)))
	if got := h.value("lbpath.lb.pods", svcAttrs()); got != 1 {
		t.Fatalf("pods = %v, want 1 (only the pod with traffic)", got)
	}
	if got := h.value("lbpath.lb.idle_pods", svcAttrs()); got != 0 {
		t.Fatalf("idle_pods = %v, want 0: known to have no ready endpoint, not unknown", got)
	}
}
