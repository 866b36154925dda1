package lbsignals

import (
	"cmp"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// readyEndpoint is one ready pod of a Service for one transport.
type readyEndpoint struct {
	Namespace, Service, Pod, Node, Transport string
}

// pendingLB is a LoadBalancer Service without an ingress IP or hostname.
type pendingLB struct {
	Namespace, Service string
	Age                time.Duration
}

// snapshot is what one collection emits, read from the informers' caches.
type snapshot struct {
	Ready        []readyEndpoint
	LBServices   int
	Pending      []pendingLB
	LBAddresses  []lbAddress
	Probes       []probeTarget
	ProbeResults []probeResult
}

// isPending: a LoadBalancer Service is pending until its status carries
// an ingress with an IP or a hostname (AWS-style hostname LBs are done).
func isPending(svc *corev1.Service) bool {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return false
	}
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if in.IP != "" || in.Hostname != "" {
			return false
		}
	}
	return true
}

// loadBalancers counts LoadBalancer Services and lists the pending ones
// with their age: since creation, or since this process saw the Service
// become pending (type changed to LoadBalancer, ingress removed), whichever
// is later. Kubernetes records no time for a change of spec.type.
func loadBalancers(svcs []*corev1.Service, pendingSince map[string]time.Time, now time.Time) (int, []pendingLB) {
	n := 0
	var pending []pendingLB
	for _, s := range svcs {
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			continue
		}
		n++
		if !isPending(s) {
			continue
		}
		since := s.CreationTimestamp.Time
		if t, ok := pendingSince[s.Namespace+"/"+s.Name]; ok && t.After(since) {
			since = t
		}
		pending = append(pending, pendingLB{Namespace: s.Namespace, Service: s.Name, Age: max(now.Sub(since), 0)})
	}
	sort.Slice(pending, func(i, j int) bool {
		return pending[i].Namespace+"/"+pending[i].Service < pending[j].Namespace+"/"+pending[j].Service
	})
	return n, pending
}

// readyEndpoints lists each Service's ready pods once per transport. An
// endpoint counts as ready when conditions.ready is true or unset (the
// API's advice for an unknown state); serving-but-not-ready (terminating)
// endpoints are not ready. Endpoints that are not Pods (a selector-less
// Service's manual slices) have no pod to name and are left out, as are
// slices without the kubernetes.io/service-name label.
func readyEndpoints(eps []*discoveryv1.EndpointSlice) []readyEndpoint {
	seen := map[readyEndpoint]bool{}
	var out []readyEndpoint
	for _, sl := range eps {
		svc := sl.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		transports := sliceTransports(sl)
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" || ep.TargetRef.Name == "" {
				continue
			}
			node := ""
			if ep.NodeName != nil {
				node = *ep.NodeName
			}
			for _, tr := range transports {
				re := readyEndpoint{Namespace: sl.Namespace, Service: svc, Pod: ep.TargetRef.Name, Node: node, Transport: tr}
				if !seen[re] { // dual-stack Services have one slice per family
					seen[re] = true
					out = append(out, re)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b readyEndpoint) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Service, b.Service),
			cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.Transport, b.Transport))
	})
	return out
}

// sliceTransports are the distinct transports (network.transport) of a
// slice's ports; a port without a protocol is TCP, the API's default.
func sliceTransports(sl *discoveryv1.EndpointSlice) []string {
	var out []string
	for _, p := range sl.Ports {
		tr := "tcp"
		if p.Protocol != nil {
			tr = strings.ToLower(string(*p.Protocol))
		}
		if !contains(out, tr) {
			out = append(out, tr)
		}
	}
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// probeTargets are the (Service, node) pairs to probe: every
// LoadBalancer Service with externalTrafficPolicy Local and a
// healthCheckNodePort, on every node, as the cloud's health checks do.
// Nodes labelled node.kubernetes.io/exclude-from-external-load-balancers
// are not in any load balancer's pool and are skipped.
func probeTargets(svcs []*corev1.Service, nodes []*corev1.Node) []probeTarget {
	var out []probeTarget
	for _, s := range svcs {
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer || s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal ||
			s.Spec.HealthCheckNodePort == 0 {
			continue
		}
		for _, n := range nodes {
			if _, ok := n.Labels[corev1.LabelNodeExcludeBalancers]; ok {
				continue
			}
			out = append(out, probeTarget{Namespace: s.Namespace, Service: s.Name, Node: n.Name,
				Addr: nodeAddr(internalIPs(n), s.Spec.HealthCheckNodePort)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.Namespace+"/"+a.Service+"/"+a.Node < b.Namespace+"/"+b.Service+"/"+b.Node
	})
	return out
}

func internalIPs(n *corev1.Node) []string {
	var out []string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			out = append(out, a.Address)
		}
	}
	return out
}
