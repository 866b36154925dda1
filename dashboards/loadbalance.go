package dashboards

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// mSignal selects the lbimbalance signal (connections, requests, bytes).
const mSignal = `lbpath_signal="$signal"`

// hotPodsExpr returns the connection share of every pod lbimbalance flags as
// hot, so the table shows how hot it is.
var hotPodsExpr = fmt.Sprintf("%s%s and on (%s, %s, %s) (%s%s == 1)",
	metricLBShare, sel(`lbpath_signal="connections"`, mSvc), lNamespace, lService, lPod, metricLBHot, sel(mSvc))

func serviceBalance() *dashboard.DashboardBuilder {
	b := newBoard("lbpath-service-balance", "lbpath / Service load balance",
		"How evenly each Service's load balancing spreads traffic over its pods and nodes, from the lbimbalance collector processor (sliding window).",
		scopeService)
	b = b.WithVariable(dashboard.NewCustomVariableBuilder("signal").Label("signal").
		Values(dashboard.StringOrMap{String: cog.ToPtr("connections,requests,bytes")}).
		Current(dashboard.VariableOption{Selected: cog.ToPtr(true), Text: dashboard.StringOrArrayOfString{String: cog.ToPtr("connections")}, Value: dashboard.StringOrArrayOfString{String: cog.ToPtr("connections")}}))
	b = b.WithRow(row("Per-pod share")).
		WithPanel(ts("Share of traffic per pod", "Fraction of the Service's $signal in the window that each pod served. With N pods a fair share is 1/N.", "percentunit", 24, 9,
			promQuery("A", metricLBShare+sel(mSignal, mSvc), "{{k8s_namespace_name}}/{{k8s_service_name}} {{k8s_pod_name}}")).
			DataLinks(traceLinks(lPod))).
		WithPanel(ts("Busiest pod / mean", "Busiest pod's $signal divided by the mean over the Service's pods (1 = perfectly even).", "none", 8, 8,
			promQuery("A", metricLBMaxMean+sel(mSignal, mSvc), "{{k8s_namespace_name}}/{{k8s_service_name}}"))).
		WithPanel(ts("Coefficient of variation", "Standard deviation / mean of per-pod $signal: 0 is even; above ~0.5 a few pods carry most of the load.", "none", 8, 8,
			promQuery("A", metricLBCV+sel(mSignal, mSvc), "{{k8s_namespace_name}}/{{k8s_service_name}}"))).
		WithPanel(ts("Pods and idle pods", "Pods of the Service in the window: those that served traffic plus its ready endpoints that got none (idle). Idle pods come from the lbsignals receiver's ready endpoints; without it the series is absent and only pods with traffic count.", "none", 8, 8,
			promQuery("A", metricLBPods+sel(mSvc), "pods {{k8s_namespace_name}}/{{k8s_service_name}}"),
			promQuery("B", metricLBIdlePods+sel(mSvc), "idle {{k8s_namespace_name}}/{{k8s_service_name}}"))).
		WithPanel(tablePanel("Hot pods", "Pods whose connection share exceeds hot_factor × the fair share now, with that share. Links open their connection traces.", 12, 8,
			instantQuery("A", hotPodsExpr, "")).DataLinks(traceLinks(lPod))).
		WithPanel(tablePanel("Pods turning hot", "How many times a pod of the Service turned hot over the time range.", 12, 8,
			instantQuery("A", fmt.Sprintf("sum by (%s, %s) (%s) > 0", lNamespace, lService, increaseRange(metricLBTransitions, mSvc)), ""))).
		WithRow(row("Per-node share")).
		WithPanel(ts("Share of traffic per node", "Fraction of the Service's $signal served by pods on each node. Under externalTrafficPolicy Local the LoadBalancer spreads over nodes, not pods: a node with one pod gets the same share as a node with five, so node share explains pod skew.", "percentunit", 24, 8,
			promQuery("A", metricLBNodeShare+sel(mSignal, mSvc), "{{k8s_namespace_name}}/{{k8s_service_name}} {{k8s_node_name}}")))
	return b
}
