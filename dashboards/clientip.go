package dashboards

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// snatShareExpr is, per Service, the share of connections whose client
// address the pod never saw.
var snatShareExpr = fmt.Sprintf("sum by (%s, %s) (%s) / sum by (%s, %s) (%s)",
	lNamespace, lService, rate(metricConnections, roleServer, snatYes, mSvc),
	lNamespace, lService, rate(metricConnections, roleServer, mSvc))

func clientIP() *dashboard.DashboardBuilder {
	b := newBoard("lbpath-client-ip", "lbpath / Client IP",
		"Where the client's address is lost: connections whose source was rewritten (SNAT) before they reached the pod, by Service and entry.",
		scopeService)
	b = b.WithRow(row("Client IP lost to SNAT")).
		WithPanel(ts("SNAT connections by Service and entry", "Counted once per connection at its entry node.", "cps", 12, 8,
			promQuery("A", entryView(lNamespace+", "+lService+", lbpath_entry", snatYes, mSvc), "{{k8s_namespace_name}}/{{k8s_service_name}} via {{lbpath_entry}}"))).
		WithPanel(ts("Share of clients lost", "Per Service: connections whose pod saw a node address instead of the client's.", "percentunit", 12, 8,
			promQuery("A", snatShareExpr, "{{k8s_namespace_name}}/{{k8s_service_name}}"))).
		WithPanel(tablePanel("Where the client IP was lost", "SNAT connections over the time range by the node that rewrote the source. Links open the pod's connection traces (span event client_ip_lost_snat).", 12, 9,
			instantQuery("A", fmt.Sprintf("sum by (%s, %s, lbpath_entry_node, %s) (%s) > 0", lNamespace, lService, lPod, increaseRange(metricConnections, roleServer, snatYes, mSvc)), "")).
			DataLinks(traceLinks(lPod))).
		WithPanel(tablePanel("Services that must keep the client IP", "Services listed in the lbpath:client_ip_required recording rule (Helm value clientIP.required) and their current SNAT share: anything above 0 breaks their promise. Empty when none are listed.", 12, 9,
			instantQuery("A", fmt.Sprintf("(%s) and on (%s, %s) %s", snatShareExpr, lNamespace, lService, recordClientIPRequired), "")))
	return b
}
