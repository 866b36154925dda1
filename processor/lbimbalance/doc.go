// Package lbimbalance implements the lbimbalance metrics processor: from the
// lbpath agents' lbpath.connections, lbpath.requests and lbpath.bytes it
// computes, per Kubernetes Service and over a sliding window, how evenly the
// load balancer spread traffic over the Service's pods and nodes, and flags
// hot pods.
//
// Inputs:
//
//	lbpath.connections, lbpath.requests, lbpath.bytes  sum    agents; cumulative or delta
//	lbpath.service.endpoint.ready                      gauge  cluster receiver (lbsignals); optional
//
// Sums may be cumulative (the agents' default) or delta
// (--metrics-temporality=delta). Delta points are added as they come, so a
// collector replica is right from the first point it receives; behind a
// load-balancing gateway, where a replica may take over a Service's streams
// from a dead one, run the agents with delta. Cumulative points are
// differenced per stream: a stream's first point counts in full only if it
// began within the window, after the collector started, or after an earlier
// export of the same agent (same resource and start time) that did not
// carry it; otherwise it is a baseline and its first interval is lost. A
// replica that takes over a cumulative stream from an agent it already
// hears from therefore counts that stream's history once.
//
// lbpath.service.endpoint.ready (value 1 per ready endpoint per transport,
// attributes k8s.namespace.name, k8s.service.name, k8s.pod.name,
// k8s.node.name, network.transport; all of one report with one timestamp)
// adds every ready endpoint of a Service without traffic in the window as a
// pod with zero traffic: a Service of 10 ready pods with all traffic on one
// has that pod hot, max_mean_ratio 10. An endpoint counts while it is in the
// latest report (over all Services, to within a second); a Service missing
// from it has no ready endpoint. Pods with traffic count whether or not the
// gauge lists them. Without the gauge for stale_after (no receiver), only
// pods with traffic are known, as before, and lbpath.lb.idle_pods is
// absent. The gauge alone does not recompute a Service: the next agents'
// batch does.
//
// The input passes through unchanged; the results are appended as one
// ResourceMetrics with service.name=lbpath-collector:
//
//	lbpath.lb.share           gauge  namespace, service, pod, node, lbpath.signal
//	lbpath.lb.max_mean_ratio  gauge  namespace, service, lbpath.signal
//	lbpath.lb.cv              gauge  namespace, service, lbpath.signal
//	lbpath.lb.hot             gauge  namespace, service, pod, node (1/0)
//	lbpath.lb.node_share      gauge  namespace, service, node, lbpath.signal
//	lbpath.lb.pods            gauge  namespace, service (with traffic, plus idle ready endpoints)
//	lbpath.lb.idle_pods       gauge  namespace, service (ready endpoints without traffic; only with the gauge)
//	lbpath.lb.hot_transitions sum    namespace, service
//	lbpath.lb.evictions       sum    lbpath.reason
//
// lbpath.signal is connections, requests or bytes. Only server-side points
// (lbpath.role=server or absent) count. lbpath.reason is service_limit,
// pod_limit, stream_limit, stale_service, stale_pod, stale_stream,
// endpoint_limit (ready endpoints or their Services over max_services /
// max_pods_per_service) or stale_endpoints (a Service's ready endpoints not
// reported for stale_after).
package lbimbalance
