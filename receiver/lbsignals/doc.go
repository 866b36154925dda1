// Package lbsignals implements the lbsignals metrics receiver: from one
// place in the cluster (a leader-elected collector replica, not every
// agent) it watches Services, EndpointSlices and Nodes through client-go
// informers and, every collection interval, emits the cluster's
// load-balancer signals as metrics:
//
//	lbpath.service.endpoint.ready                gauge  namespace, service, pod, node, network.transport (1 per ready endpoint)
//	lbpath.loadbalancer.services                 gauge  (per cluster) Services of type LoadBalancer
//	lbpath.loadbalancer.pending                  gauge  (per cluster) of those, without an ingress IP or hostname
//	lbpath.loadbalancer.pending.age              gauge  namespace, service (s)
//	lbpath.loadbalancer.address                  gauge  namespace, service, lbpath.loadbalancer.address, .address.type (ip|hostname)
//	lbpath.service.health_check.status           gauge  namespace, service, node (HTTP status of healthCheckNodePort)
//	lbpath.service.health_check.healthy          gauge  namespace, service, node (1 for 200, 0 otherwise)
//	lbpath.service.health_check.local_endpoints  gauge  namespace, service, node (kube-proxy's localEndpoints)
//	lbpath.service.health_check.errors           sum    namespace, service, node, error.type
//
// Only the replica holding the coordination.k8s.io Lease emits, so several
// collector replicas do not double the series. The resource carries
// service.name=lbpath-collector and, when configured, k8s.cluster.name.
// docs/TELEMETRY.md documents each metric.
package lbsignals
