package dashboards

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// rolloutAnnotationExpr marks each rollout the deployregression processor
// detected: its rollouts counter steps up once per new pod-template hash.
var rolloutAnnotationExpr = fmt.Sprintf("changes(%s%s[2m]) > 0", metricDeployRollouts, sel(mDeploy))

func deploys() *dashboard.DashboardBuilder {
	byDep := lNamespace + ", " + lDeployment
	b := newBoard("lbpath-deploys", "lbpath / Deploys",
		"Latency of each Deployment's new revision against the previous one, from the deployregression collector processor: before (baseline revision), after (new revision since the deploy) and current (new revision, trailing window).",
		scopeDeployment)
	b = b.Annotation(dashboard.NewAnnotationQueryBuilder().Name("Rollouts").Datasource(promDS).Enable(true).
		IconColor("purple").Expr(rolloutAnnotationExpr).Step("30s").
		TitleFormat("rollout {{k8s_namespace_name}}/{{k8s_deployment_name}}").TagKeys(lDeployment))
	b = b.WithRow(row("Latest rollout")).
		WithPanel(statPanel("Regression", "1 when the new revision's latency is significantly worse than the previous one (p < alpha and p90 up by more than min_increase).", "none", 6, 5,
			steps("green", 1.0, "red"),
			instantQuery("A", metricDeployRegression+sel(mDeploy), "{{k8s_deployment_name}}"))).
		WithPanel(statPanel("p90 after / before", "Ratio of the new revision's p90 to the previous revision's.", "percentunit", 6, 5,
			steps("green", 1.1, "yellow", 1.5, "red"),
			instantQuery("A", metricDeployDelta+sel(`lbpath_quantile="p90"`, mDeploy), "{{k8s_deployment_name}}"))).
		WithPanel(statPanel("Time since deploy", "", "s", 6, 5, nil,
			instantQuery("A", metricDeployTimeSince+sel(mDeploy), "{{k8s_deployment_name}}"))).
		WithPanel(statPanel("p-value", "Chi-square homogeneity test of the latency histograms, before vs after.", "none", 6, 5, nil,
			instantQuery("A", metricDeployPValue+sel(mDeploy), "{{k8s_deployment_name}}"))).
		WithPanel(ts("p90 latency: before / after / current", "The previous revision's p90 (before), the new one's since the deploy (after) and over the trailing window (current).", "s", 12, 9,
			promQuery("A", metricDeployP90+sel(mDeploy), "{{k8s_deployment_name}} {{lbpath_revision}} ({{lbpath_pod_template_hash}})"))).
		WithPanel(ts("p50 / p99 latency by revision", "", "s", 12, 9,
			promQuery("A", metricDeployP50+sel(mDeploy), "p50 {{k8s_deployment_name}} {{lbpath_revision}}"),
			promQuery("B", metricDeployP99+sel(mDeploy), "p99 {{k8s_deployment_name}} {{lbpath_revision}}"))).
		WithPanel(ts("After / before ratio", "Per quantile; 1 = unchanged.", "percentunit", 12, 8,
			promQuery("A", metricDeployDelta+sel(mDeploy), "{{k8s_deployment_name}} {{lbpath_quantile}}"))).
		WithPanel(ts("Samples per side", "Requests behind each side of the comparison; the test needs min_samples on both.", "none", 12, 8,
			promQuery("A", metricDeploySamples+sel(mDeploy), "{{k8s_deployment_name}} {{lbpath_revision}}"))).
		WithPanel(ts("p90 at the pods by revision", "Straight from the agents' histograms, per pod-template hash: shows both revisions side by side during the rollout.", "s", 12, 8,
			promQuery("A", quantile(0.9, metricRequestDuration, byDep+", lbpath_pod_template_hash", mDeploy), "{{k8s_deployment_name}} {{lbpath_pod_template_hash}}"))).
		WithPanel(tablePanel("Rollouts and regressions", "Over the time range.", 12, 8,
			instantQuery("A", fmt.Sprintf("sum by (%s) (%s)", byDep, increaseRange(metricDeployRollouts, mDeploy)), ""),
			instantQuery("B", fmt.Sprintf("sum by (%s) (%s)", byDep, increaseRange(metricDeployRegressions, mDeploy)), "")).
			WithTransformation(dashboard.DataTransformerConfig{Id: "merge", Options: map[string]any{}}).
			OverrideByName("Value #A", []dashboard.DynamicConfigValue{{Id: "displayName", Value: "rollouts"}}).
			OverrideByName("Value #B", []dashboard.DynamicConfigValue{{Id: "displayName", Value: "regressions"}}))
	return b
}
