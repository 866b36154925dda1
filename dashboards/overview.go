package dashboards

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// rate is rate(metric{matchers}[$__rate_interval]).
func rate(metric string, matchers ...string) string {
	return fmt.Sprintf("rate(%s%s[$__rate_interval])", metric, sel(matchers...))
}

// increaseRange is increase(metric{matchers}[$__range]): totals over the
// dashboard's time range for tables.
func increaseRange(metric string, matchers ...string) string {
	return fmt.Sprintf("increase(%s%s[$__range])", metric, sel(matchers...))
}

// Role filters. One connection yields one "server" record (the pod's node)
// and, when it crossed nodes, one "forward" record on the entry node. Per-pod
// and share panels count server records only, so nothing is counted twice.
const (
	roleServer  = `lbpath_role="server"`
	roleForward = `lbpath_role="forward"`
	crossNo     = `lbpath_cross_node="false"`
	crossYes    = `lbpath_cross_node="true"`
	snatYes     = `lbpath_snat="true"`
)

// entryView is the rate of connections as their entry node saw them: the
// entry node's forward record when the connection crossed nodes, else the
// (local) server record. Only these know how the client came in
// (lbpath_entry); the pod's node of a cross-node hop only sees the entry
// node's address. Each connection appears exactly once.
func entryView(by string, matchers ...string) string {
	fwd := append([]string{roleForward}, matchers...)
	local := append([]string{roleServer, crossNo}, matchers...)
	return fmt.Sprintf("sum by (%s) (%s or %s)", by, rate(metricConnections, fwd...), rate(metricConnections, local...))
}

func overview() *dashboard.DashboardBuilder {
	all := fmt.Sprintf("sum(%s)", rate(metricConnections, roleServer, mSvc))
	b := newBoard("lbpath-overview", "lbpath / LB path overview",
		"How TCP connections reach pods: the entry (LoadBalancer, NodePort, ClusterIP), the node that translated them, whether they hopped to another node and whether SNAT hid the client.",
		scopeService)
	b = b.WithRow(row("Traffic entry → node → pod")).
		WithPanel(statPanel("Connections/s", "Connections accepted by the selected Services' pods.", "cps", 6, 4, nil,
			instantQuery("A", all, ""))).
		WithPanel(statPanel("Cross-node share", "Share of connections whose entry node was not the pod's node (an extra hop, and SNAT under externalTrafficPolicy Cluster).", "percentunit", 6, 4,
			steps("green", 0.25, "yellow", 0.5, "red"),
			instantQuery("A", fmt.Sprintf("(sum(%s) or vector(0)) / %s", rate(metricConnections, roleServer, crossYes, mSvc), all), ""))).
		WithPanel(statPanel("SNAT share", "Share of connections whose client address was rewritten before reaching the pod: the pod saw a node address, not the client.", "percentunit", 6, 4,
			steps("green", 0.01, "yellow", 0.5, "red"),
			instantQuery("A", fmt.Sprintf("(sum(%s) or vector(0)) / %s", rate(metricConnections, roleServer, snatYes, mSvc), all), ""))).
		WithPanel(statPanel("Failed connections/s", "Connections that were refused, reset, timed out or otherwise failed, on any node.", "cps", 6, 4,
			steps("green", 0.1, "red"),
			instantQuery("A", fmt.Sprintf(`sum(%s)`, rate(metricConnections, `lbpath_outcome!~"ok|forwarded"`, mSvc)), ""))).
		WithPanel(ts("Connections by entry", "How clients came in (lbpath_entry), counted once per connection at its entry node.", "cps", 12, 8,
			promQuery("A", entryView("lbpath_entry", mSvc), "{{lbpath_entry}}"))).
		WithPanel(ts("Connections by entry node", "The node that received each connection (lbpath_entry_node), whether or not it served it.", "cps", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (lbpath_entry_node) (%s)", rate(metricConnections, roleServer, mSvc)), "{{lbpath_entry_node}}"))).
		WithPanel(ts("Cross-node and SNAT share by Service", "Per Service: share of connections that hopped nodes, and share whose client IP was lost.", "percentunit", 12, 8,
			promQuery("A", shareBy(crossYes), "cross-node {{k8s_namespace_name}}/{{k8s_service_name}}"),
			promQuery("B", shareBy(snatYes), "SNAT {{k8s_namespace_name}}/{{k8s_service_name}}"))).
		WithPanel(ts("Failures by outcome", "Connections that did not complete normally, by outcome and role (reject: this node's kernel refused the SYN).", "cps", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (lbpath_outcome, lbpath_role) (%s)", rate(metricConnections, `lbpath_outcome!~"ok|forwarded"`, mSvc)), "{{lbpath_outcome}} ({{lbpath_role}})"))).
		WithPanel(tablePanel("Paths: entry → node → pod", "Connections over the time range per path. Links open the pod's connection traces.", 24, 10,
			instantQuery("A", fmt.Sprintf("sum by (%s, %s, lbpath_entry_node, %s, %s, lbpath_cross_node, lbpath_snat) (%s)",
				lNamespace, lService, lNode, lPod, increaseRange(metricConnections, roleServer, mSvc)), "")).
			DataLinks(traceLinks(lPod))).
		WithRow(row("Traces")).
		WithPanel(tracesTable("Failed connection traces", ` && status=error`))
	return b
}

// shareBy is the per-Service share of server connections matching sel. The
// matching series are completed with the others times zero, so a Service
// with none (no cross-node hop, no SNAT) shows 0 rather than no data.
func shareBy(sel string) string {
	all := rate(metricConnections, roleServer, mSvc)
	return fmt.Sprintf("sum by (%s, %s) (%s or %s * 0) / sum by (%s, %s) (%s)",
		lNamespace, lService, rate(metricConnections, roleServer, sel, mSvc), all, lNamespace, lService, all)
}
