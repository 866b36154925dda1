package lbsignals

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
)

// lbAddress is one address a LoadBalancer Service's status publishes: an
// IP, or a hostname for load balancers known by a DNS name (AWS ELB/NLB),
// which are provisioned, not pending.
type lbAddress struct {
	Namespace, Service string
	Address            string
	// Type is ip or hostname.
	Type string
}

// lbAddresses lists every ingress IP and hostname of the LoadBalancer
// Services, sorted. An entry with both gives two addresses.
func lbAddresses(svcs []*corev1.Service) []lbAddress {
	var out []lbAddress
	for _, s := range svcs {
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			continue
		}
		for _, in := range s.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				out = append(out, lbAddress{s.Namespace, s.Name, in.IP, "ip"})
			}
			if in.Hostname != "" {
				out = append(out, lbAddress{s.Namespace, s.Name, in.Hostname, "hostname"})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace+"/"+a.Service != b.Namespace+"/"+b.Service {
			return a.Namespace+"/"+a.Service < b.Namespace+"/"+b.Service
		}
		return a.Address < b.Address
	})
	return out
}
