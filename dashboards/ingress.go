package dashboards

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// Series of the aggregate ingress edge proxy pod → backend Service →
// backend pod (exporter/ingress.go; docs/TELEMETRY.md "Ingress proxy hop"),
// counted at the backend pod.
const (
	metricIngressRequests = "lbpath_ingress_requests_total"
	metricIngressDuration = "lbpath_ingress_request_duration_seconds"
	lIngressName          = "lbpath_ingress_name"
	lIngressRoute         = "lbpath_ingress_route"
)

// byIngressBackend is one row: an Ingress route to one backend pod.
var byIngressBackend = lIngressName + ", " + lIngressRoute + ", " + lNamespace + ", " + lService + ", " + lPod

// ingressShareExpr is each backend pod's share of its route's requests over
// the time range.
var ingressShareExpr = fmt.Sprintf("sum by (%[1]s) (%[3]s) / on (%[2]s) group_left sum by (%[2]s) (%[3]s)",
	byIngressBackend, lIngressName+", "+lIngressRoute, increaseRange(metricIngressRequests, mSvc))

// withIngress adds the route → backend pod view: which backend pod each
// Ingress route's requests reached and their latency behind the proxy.
func withIngress(b *dashboard.DashboardBuilder) *dashboard.DashboardBuilder {
	return b.WithRow(row("Through an ingress proxy")).
		WithPanel(tablePanel("Ingress route → backend pod share and latency",
			"Per Ingress route and backend pod (the Service's pods behind an ingress proxy): its share of the route's requests over the time range, counted at the backend pod, and p50 / p90 latency behind the proxy (first request byte read → first response byte written at the backend pod). A hot backend pod behind an ingress shows here, not only as traffic from the proxy.", 24, 8,
			instantQuery("A", ingressShareExpr, ""),
			instantQuery("B", quantile(0.5, metricIngressDuration, byIngressBackend, mSvc), ""),
			instantQuery("C", quantile(0.9, metricIngressDuration, byIngressBackend, mSvc), "")).
			WithTransformation(dashboard.DataTransformerConfig{Id: "merge", Options: map[string]any{}}))
}
