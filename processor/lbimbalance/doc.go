// Package lbimbalance implements the lbimbalance metrics processor: from the
// lbpath agents' cumulative lbpath.connections, lbpath.requests and
// lbpath.bytes it computes, per Kubernetes Service and over a sliding
// window, how evenly the load balancer spread traffic over the Service's
// pods and nodes, and flags hot pods.
//
// The input passes through unchanged; the results are appended as one
// ResourceMetrics with service.name=lbpath-collector:
//
//	lbpath.lb.share           gauge  namespace, service, pod, node, lbpath.signal
//	lbpath.lb.max_mean_ratio  gauge  namespace, service, lbpath.signal
//	lbpath.lb.cv              gauge  namespace, service, lbpath.signal
//	lbpath.lb.hot             gauge  namespace, service, pod, node (1/0)
//	lbpath.lb.node_share      gauge  namespace, service, node, lbpath.signal
//	lbpath.lb.pods            gauge  namespace, service
//	lbpath.lb.hot_transitions sum    namespace, service
//	lbpath.lb.evictions       sum    lbpath.reason
//
// lbpath.signal is connections, requests or bytes. Only server-side points
// (lbpath.role=server or absent) count.
package lbimbalance
