package dashboards

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// cpuNote says why the health dashboard has no CPU or memory panel.
const cpuNote = `lbpath does not export process metrics: the agent's OTLP metrics are the ones in docs/TELEMETRY.md, and the collector runs with its own telemetry off (service.telemetry.metrics.level: none). Per-agent CPU and memory therefore come from the kubelet's cAdvisor metrics, e.g.
` + "`sum by (pod) (rate(container_cpu_usage_seconds_total{container=\"agent\", pod=~\"lbpath-agent-.*\"}[5m]))`" + ` and
` + "`container_memory_working_set_bytes{container=\"agent\", pod=~\"lbpath-agent-.*\"}`" + `,
which are not part of lbpath's telemetry and so are not queried here.`

func health() *dashboard.DashboardBuilder {
	byNode := lNode
	b := newBoard("lbpath-health", "lbpath / health",
		"Is lbpath itself seeing everything? Every loss the agents count (lbpath_agent_dropped_total by stage and reason), export failures, unattributed connections, the nodes' own traffic by class, and the collector processors' evictions.",
		scopeCluster)
	b = b.WithRow(row("Agents")).
		WithPanel(statPanel("Agents reporting", "Agents whose self-metrics reached the collector in the last 5 minutes.", "none", 6, 4, nil,
			instantQuery("A", fmt.Sprintf("count(count by (%s) (last_over_time(%s%s[5m])))", byNode, metricExported, sel(mCluster)), ""))).
		WithPanel(statPanel("Connections exported/s", "", "cps", 6, 4, nil,
			instantQuery("A", fmt.Sprintf("sum(%s)", rate(metricExported, mCluster)), ""))).
		WithPanel(statPanel("Items dropped/s", "Everything lost, all stages.", "none", 6, 4, steps("green", 0.001, "red"),
			instantQuery("A", fmt.Sprintf("sum(%s)", rate(metricDropped, mCluster)), ""))).
		WithPanel(statPanel("Unattributed share", "Connections exported without pod/Service names (metadata not found in time) per connection exported.", "percentunit", 6, 4,
			steps("green", 0.01, "yellow", 0.1, "red"),
			instantQuery("A", fmt.Sprintf("sum(%s) / sum(%s)", rate(metricDropped, `lbpath_stage="metadata"`, `lbpath_reason="unattributed"`, mCluster), rate(metricExported, mCluster)), ""))).
		WithPanel(ts("Dropped by stage and reason", "Ring buffer per eBPF program, kernel connection table, decode, conntrack overflow, flow tables, metadata, export.", "none", 24, 9,
			promQuery("A", fmt.Sprintf("sum by (lbpath_stage, lbpath_reason) (%s) > 0", rate(metricDropped, mCluster)), "{{lbpath_stage}}/{{lbpath_reason}}"))).
		WithPanel(ts("Export failures per agent", "Spans or metric exports that failed, and connections whose spans were dropped because the span queue was full (their metrics are recorded).", "none", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (%s, lbpath_reason) (%s)", byNode, rate(metricDropped, `lbpath_stage="export"`, mCluster)), "{{k8s_node_name}} {{lbpath_reason}}"))).
		WithPanel(ts("Unattributed per agent", "Connections or requests the agent could not name (pod unknown to its informers in time); watch errors.", "none", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (%s, lbpath_reason) (%s)", byNode, rate(metricDropped, `lbpath_stage="metadata"`, mCluster)), "{{k8s_node_name}} {{lbpath_reason}}"))).
		WithPanel(ts("Connections exported per agent", "", "cps", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (%s) (%s)", byNode, rate(metricExported, mCluster)), "{{k8s_node_name}}"))).
		WithPanel(ts("The node's own connections per agent", "Connections that touch no pod and no Service, by class: node_local (loopback, the node's own addresses), apiserver (to a kube-apiserver endpoint), kubelet (port 10250 on a node), external (egress, sshd, other nodes). Counted, not lost: they are not in the per-pod metrics and become spans only with --spans=all.", "cps", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (%s, lbpath_connection_class) (%s)", byNode, rate(metricNodeConns, mCluster)), "{{k8s_node_name}} {{lbpath_connection_class}}"))).
		WithPanel(note("Agent CPU and memory", cpuNote, 12, 8)).
		WithRow(row("Node conntrack")).
		WithPanel(ts("Conntrack table fill per node", "Entries in the node's conntrack table per nf_conntrack_max (one host-wide limit). LbpathConntrackNearlyFull fires above 90% for 10 minutes; at 100% the kernel drops new connections' SYNs.", "percentunit", 12, 8,
			promQuery("A", fmt.Sprintf("max by (%s) (%s%s) / on (%s) max by (%s) (%s%s)", byNode, metricConntrackEntries, sel(mCluster), byNode, byNode, metricConntrackMax, sel(mCluster)), "{{k8s_node_name}}"))).
		WithPanel(ts("Conntrack drops per node", "Packets that needed a conntrack entry and did not get one (drop: table full, nothing evictable; early_drop: an unassured entry evicted to make room; insert_failed: an insert race). Connections dropped this way never reach a socket or NAT entry: they appear only here and as failed client records.", "pps", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (%s, lbpath_reason) (%s) > 0", byNode, rate(metricConntrackDrops, mCluster)), "{{k8s_node_name}} {{lbpath_reason}}"))).
		WithRow(row("Collector processors")).
		WithPanel(ts("Processor state evictions", "State entries the lbimbalance and deployregression processors dropped because of their bounds or staleness (and points deployregression rejected).", "none", 24, 8,
			promQuery("A", fmt.Sprintf("sum by (lbpath_reason) (%s)", rate(metricLBEvictions, mCluster)), "lbimbalance {{lbpath_reason}}"),
			promQuery("B", fmt.Sprintf("sum by (lbpath_reason) (%s)", rate(metricDeployEvictions, mCluster)), "deployregression {{lbpath_reason}}")))
	return b
}
