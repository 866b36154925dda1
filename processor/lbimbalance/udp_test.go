package lbimbalance

import (
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pmetric"
)

// withTransport labels every data point of md as the agents do since UDP
// capture: network.transport=tcp or udp.
func withTransport(md pmetric.Metrics, transport string) pmetric.Metrics {
	rms := md.ResourceMetrics()
	for i := range rms.Len() {
		sms := rms.At(i).ScopeMetrics()
		for j := range sms.Len() {
			ms := sms.At(j).Metrics()
			for k := range ms.Len() {
				dps := ms.At(k).Sum().DataPoints()
				for l := range dps.Len() {
					dps.At(l).Attributes().PutStr("network.transport", transport)
				}
			}
		}
	}
	return md
}

// TestUDPServiceFlagsHotPod: a DNS-like UDP Service's points (UDP flows as
// connections, answered exchanges as requests) get the same shares and hot
// pod as TCP's: nothing in the processor is TCP-specific.
func TestUDPServiceFlagsHotPod(t *testing.T) {
	h := newHarness(t, nil)
	for k := 1; k <= 3; k++ {
		h.consume(withTransport(agentBatch(t0.Add(time.Duration(k)*10*time.Second), "kube-system", "kube-dns", skewedStep(k)), "udp"))
	}
	attrs := func(kv ...string) map[string]string {
		m := map[string]string{"k8s.namespace.name": "kube-system", "k8s.service.name": "kube-dns"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, sig := range []string{"connections", "requests", "bytes"} {
		near(t, "share pod-a "+sig, h.value("lbpath.lb.share", attrs("k8s.pod.name", "pod-a", "lbpath.signal", sig)), 0.8, 1e-9)
	}
	if got := h.value("lbpath.lb.hot", attrs("k8s.pod.name", "pod-a", "k8s.node.name", "n1")); got != 1 {
		t.Errorf("pod-a hot = %v, want 1", got)
	}
}

// TestTCPAndUDPOfOneServiceAddUp: a Service with a TCP and a UDP port (as
// kube-dns has 53/TCP and 53/UDP) is one Service: its pods' shares count
// both transports' traffic.
func TestTCPAndUDPOfOneServiceAddUp(t *testing.T) {
	h := newHarness(t, nil)
	at := t0.Add(10 * time.Second)
	// UDP: pod-a 80, pod-b 20; TCP: pod-a 0, pod-b 100 → 80 / 120 of 200.
	h.consume(withTransport(agentBatch(at, "ns", "dns", []podCounters{
		{pod: "pod-a", node: "n1", conns: 80, reqs: 80, bytes: 800}, {pod: "pod-b", node: "n1", conns: 20, reqs: 20, bytes: 200}}), "udp"))
	h.consume(withTransport(agentBatch(at, "ns", "dns", []podCounters{
		{pod: "pod-a", node: "n1", conns: 0, reqs: 0, bytes: 0}, {pod: "pod-b", node: "n1", conns: 100, reqs: 100, bytes: 1000}}), "tcp"))
	attrs := map[string]string{"k8s.namespace.name": "ns", "k8s.service.name": "dns", "k8s.pod.name": "pod-a", "lbpath.signal": "connections"}
	near(t, "share pod-a", h.value("lbpath.lb.share", attrs), 0.4, 1e-9)
}
