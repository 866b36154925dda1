package dashboards

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// Series of the collector's lbsignals receiver (receiver/lbsignals). Only
// the Lease-holding collector emits them; after a failover the old
// replica's exporter serves its last values until they expire, so every
// query aggregates with max/min by Service and node, never by instance.
const (
	metricLBServices    = "lbpath_loadbalancer_services"
	metricLBPending     = "lbpath_loadbalancer_pending"
	metricLBPendingAge  = "lbpath_loadbalancer_pending_age_seconds"
	metricEndpointReady = "lbpath_service_endpoint_ready"
	metricHCStatus      = "lbpath_service_health_check_status"
	metricHCHealthy     = "lbpath_service_health_check_healthy"
	metricHCLocal       = "lbpath_service_health_check_local_endpoints"
	metricHCErrors      = "lbpath_service_health_check_errors_total"
	// From the agents, not the receiver: the load balancer's probes that
	// reached each node (class lb_health_check; exporter/lbprobes.go).
	metricLBProbes        = "lbpath_loadbalancer_health_probes_total"
	manyLoadBalancersHint = 25 // LbpathManyLoadBalancers' threshold (deploy/rules)
)

var (
	bySvc     = lNamespace + ", " + lService
	bySvcNode = lNamespace + ", " + lService + ", " + lNode
)

func lbSignals() *dashboard.DashboardBuilder {
	b := newBoard("lbpath-lb-signals", "lbpath / LB signals",
		"The cluster's load balancers as Kubernetes and kube-proxy see them, from one leader-elected collector: LoadBalancer Services and the pending ones, ready endpoints, and under externalTrafficPolicy Local which nodes pass the load balancer's health check — and, from the agents, whether its probes arrive.",
		scopeService)
	b = b.WithRow(row("LoadBalancer Services")).
		WithPanel(statPanel("LoadBalancer Services", fmt.Sprintf("Services of type LoadBalancer: usually one cloud load balancer each. Orange from %d (LbpathManyLoadBalancers).", manyLoadBalancersHint+1), "none", 4, 5,
			steps("green", float64(manyLoadBalancersHint+1), "orange"),
			instantQuery("A", fmt.Sprintf("max by (%s) (%s%s)", lCluster, metricLBServices, sel(mCluster)), "{{k8s_cluster_name}}"))).
		WithPanel(statPanel("Pending", "LoadBalancer Services without an ingress IP or hostname (hostname load balancers are not pending).", "none", 4, 5,
			steps("green", 1.0, "red"),
			instantQuery("A", fmt.Sprintf("max by (%s) (%s%s)", lCluster, metricLBPending, sel(mCluster)), "{{k8s_cluster_name}}"))).
		WithPanel(note("Many LoadBalancers?", "Every `type: LoadBalancer` Service is usually its own cloud load balancer: its own cost, public address and quota. HTTP and TLS Services can share **one** load balancer through an **Ingress** controller or a **Gateway API** implementation that routes by host and path. `LbpathManyLoadBalancers` fires above 25 for an hour.", 6, 5)).
		WithPanel(tablePanel("Pending LoadBalancers", "Age: since creation, or since the receiver saw the Service become pending (type changed, ingress removed), whichever is later. LbpathLoadBalancerPending fires past 10 minutes.", 10, 5,
			instantQuery("A", fmt.Sprintf("max by (%s) (%s%s)", bySvc, metricLBPendingAge, sel(mSvc)), ""))).
		WithPanel(ts("LoadBalancer Services over time", "All and pending.", "none", 24, 6,
			promQuery("A", fmt.Sprintf("max by (%s) (%s%s)", lCluster, metricLBServices, sel(mCluster)), "LoadBalancer"),
			promQuery("B", fmt.Sprintf("max by (%s) (%s%s)", lCluster, metricLBPending, sel(mCluster)), "pending")))
	b = b.WithRow(row("externalTrafficPolicy Local: the load balancer's health checks")).
		WithPanel(tablePanel("Health check per node", "Each node's healthCheckNodePort answer as the load balancer sees it: 200 with local endpoints, 503 without (the load balancer skips the node). A node missing here did not answer (see probe errors).", 12, 9,
			instantQuery("A", fmt.Sprintf("max by (%s) (%s%s)", bySvcNode, metricHCStatus, sel(mSvc)), ""),
			instantQuery("B", fmt.Sprintf("max by (%s) (%s%s)", bySvcNode, metricHCLocal, sel(mSvc)), "")).
			WithTransformation(dashboard.DataTransformerConfig{Id: "merge", Options: map[string]any{}})).
		WithPanel(ts("Nodes passing the health check", "Per Local Service: nodes answering 200 (the load balancer's backends). 0 is an outage (LbpathLocalServiceNoHealthyNode).", "none", 12, 9,
			promQuery("A", fmt.Sprintf("sum by (%s) (max by (%s) (%s%s))", bySvc, bySvcNode, metricHCHealthy, sel(mSvc)), "{{k8s_namespace_name}}/{{k8s_service_name}}"))).
		WithPanel(tablePanel("Ready pods on nodes failing the health check", "Nodes with ready endpoints of a Local Service whose health check does not answer 200: the load balancer sends them nothing, so those pods stay idle (LbpathLocalReadyPodsNotInLoadBalancer).", 12, 8,
			instantQuery("A", fmt.Sprintf("count by (%s) (%s%s) and on (%s) (max by (%s) (%s%s) == 0)",
				bySvcNode, metricEndpointReady, sel(mSvc), bySvcNode, bySvcNode, metricHCHealthy, sel(mSvc)), ""))).
		WithPanel(ts("Probe errors", "Health-check probes from the collector that got no usable answer, by error.type (timeout, connection_refused, connection, invalid_response, no_internal_ip). Never counted as healthy or unhealthy.", "reqps", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (%s, error_type) (%s)", bySvcNode, rate(metricHCErrors, mSvc)), "{{k8s_namespace_name}}/{{k8s_service_name}} {{k8s_node_name}} {{error_type}}"))).
		WithPanel(ts("Load-balancer probes arriving per node", "The other side of the health check, from each node's agent: connections to the Service's healthCheckNodePort from outside the node and not from a pod (the load balancer's health checker), by outcome (refused: nothing listened, kube-proxy down). A healthy cloud load balancer probes every node of its pool, passing or not; none anywhere means it does not probe the port (MetalLB) or its probes are dropped before the nodes.", "cps", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (%s, lbpath_outcome) (%s)", bySvcNode, rate(metricLBProbes, mSvc)), "{{k8s_namespace_name}}/{{k8s_service_name}} {{k8s_node_name}} {{lbpath_outcome}}"))).
		WithPanel(tablePanel("Passing nodes the load balancer does not probe", "Nodes answering 200 that got no load-balancer probe in the time range while other nodes of the Service did: the load balancer's backend pool lacks them (node added after the load balancer, excluded by label, stale pool), so their pods get no external traffic.", 12, 8,
			instantQuery("A", fmt.Sprintf("(max by (%[1]s) (%[3]s%[4]s) == 1) and on (%[1]s) (sum by (%[1]s) (%[5]s) == 0) and on (%[2]s) (sum by (%[2]s) (%[5]s) > 0)",
				bySvcNode, bySvc, metricHCHealthy, sel(mSvc), increaseRange(metricLBProbes, mSvc)), "")))
	b = b.WithRow(row("Ready endpoints")).
		WithPanel(ts("Ready pods per Service", "Ready endpoints (pods) from the EndpointSlices, traffic or not: what lbimbalance compares each pod's share against.", "none", 12, 8,
			promQuery("A", fmt.Sprintf("count by (%s) (max by (%s, %s) (%s%s))", bySvc, bySvc, lPod, metricEndpointReady, sel(mSvc)), "{{k8s_namespace_name}}/{{k8s_service_name}}"))).
		WithPanel(ts("Ready pods per node", "Where a Service's ready pods run: under Local policy, only these nodes should pass its health check.", "none", 12, 8,
			promQuery("A", fmt.Sprintf("count by (%s) (max by (%s, %s) (%s%s))", bySvcNode, bySvcNode, lPod, metricEndpointReady, sel(mSvc)), "{{k8s_namespace_name}}/{{k8s_service_name}} {{k8s_node_name}}")))
	return b
}
