package dashboards

import (
	"fmt"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// Prometheus label names of the attributes the dashboards filter on, after
// the OTLP → Prometheus translation (dots become underscores). The query
// check derives the allowed set from lbpath's sources; these are only
// spelled once here so the queries below stay readable.
const (
	lCluster    = "k8s_cluster_name"
	lNamespace  = "k8s_namespace_name"
	lService    = "k8s_service_name"
	lPod        = "k8s_pod_name"
	lNode       = "k8s_node_name"
	lDeployment = "k8s_deployment_name"
)

// Matchers selecting the variables' values. allValue is ".*" for every
// variable, so "All" also matches series without the label (the
// processors' metrics carry k8s_cluster_name only where the collector adds
// it as a constant label, see deploy/helm).
const (
	mCluster = lCluster + `=~"$cluster"`
	mNS      = mCluster + `,` + lNamespace + `=~"$namespace"`
	mSvc     = mNS + `,` + lService + `=~"$service"`
	mDeploy  = mNS + `,` + lDeployment + `=~"$deployment"`
)

// sel joins matchers into a selector body, dropping empty ones.
func sel(ms ...string) string {
	var out []string
	for _, m := range ms {
		if m != "" {
			out = append(out, m)
		}
	}
	return "{" + strings.Join(out, ",") + "}"
}

// labelVar is a multi-value query variable over one label of metric.
func labelVar(name, label, metric, matchers string) *dashboard.QueryVariableBuilder {
	q := fmt.Sprintf("label_values(%s%s, %s)", metric, sel(matchers), label)
	return dashboard.NewQueryVariableBuilder(name).
		Label(name).
		Query(dashboard.StringOrMap{String: cog.ToPtr(q)}).
		Datasource(promDS).
		Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Sort(dashboard.VariableSortAlphabeticalAsc).
		Multi(true).
		IncludeAll(true).
		AllValue(".*").
		Current(dashboard.VariableOption{Selected: cog.ToPtr(true), Text: dashboard.StringOrArrayOfString{String: cog.ToPtr("All")}, Value: dashboard.StringOrArrayOfString{String: cog.ToPtr("$__all")}})
}

// scope says which filter variables a dashboard offers.
type scope int

const (
	scopeCluster    scope = iota // agent self-metrics: no namespace or Service
	scopeService                 // cluster, namespace, service
	scopeDeployment              // cluster, namespace, deployment
)

// newBoard starts a dashboard with lbpath's common settings and variables:
// datasource variables for Prometheus and the two tracing backends lbpath's
// spans go to (Tempo, Jaeger), then the filters of sc.
func newBoard(uid, title, desc string, sc scope) *dashboard.DashboardBuilder {
	b := dashboard.NewDashboardBuilder(title).
		Uid(uid).
		Description(desc).
		Tags([]string{"lbpath"}).
		Editable().
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Refresh("30s").
		Time("now-1h", "now").
		Timezone("browser").
		Link(dashboard.NewDashboardLinkBuilder("lbpath").Type(dashboard.DashboardLinkTypeDashboards).
			Tags([]string{"lbpath"}).AsDropdown(true).IncludeVars(true).KeepTime(true))
	b = b.WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Prometheus").Type("prometheus"))
	b = b.WithVariable(dashboard.NewDatasourceVariableBuilder("tempo").Label("Tempo").Type("tempo"))
	b = b.WithVariable(dashboard.NewDatasourceVariableBuilder("jaeger").Label("Jaeger").Type("jaeger"))
	b = b.WithVariable(labelVar("cluster", lCluster, metricConnections, ""))
	switch sc {
	case scopeService:
		b = b.WithVariable(labelVar("namespace", lNamespace, metricConnections, mCluster))
		b = b.WithVariable(labelVar("service", lService, metricConnections, mNS))
	case scopeDeployment:
		b = b.WithVariable(labelVar("namespace", lNamespace, metricDeployP90, mCluster))
		b = b.WithVariable(labelVar("deployment", lDeployment, metricDeployP90, mNS))
	}
	return b
}
