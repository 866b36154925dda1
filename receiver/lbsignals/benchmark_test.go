package lbsignals

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkSnapshotToMetrics is one collection's work besides the probes
// for a cluster of 2,000 Services × 10 ready pods (one slice each, TCP),
// 100 of them pending LoadBalancers: reading the cached objects into
// points and rendering the batch.
func BenchmarkSnapshotToMetrics(b *testing.B) {
	const services, pods = 2000, 10
	var svcs []*corev1.Service
	var slices []*discoveryv1.EndpointSlice
	yes, tcp, port := true, corev1.ProtocolTCP, int32(8080)
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, CreationTimestamp: metav1.NewTime(time.Now().Add(-time.Hour))}}
		if i%20 == 0 {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
		}
		svcs = append(svcs, s)
		sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			Ports: []discoveryv1.EndpointPort{{Port: &port, Protocol: &tcp}}}
		for j := range pods {
			node := fmt.Sprintf("node-%d", j%50)
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Conditions: discoveryv1.EndpointConditions{Ready: &yes}, NodeName: &node,
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: fmt.Sprintf("%s-%d", name, j)}})
		}
		slices = append(slices, sl)
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		var s snapshot
		s.LBServices, s.Pending = loadBalancers(svcs, nil, now)
		s.Ready = readyEndpoints(slices)
		md := toMetrics(s, newProbeErrors(now), "prod", now)
		if md.DataPointCount() != services*pods+2+services/20 {
			b.Fatalf("%d points", md.DataPointCount())
		}
	}
}
