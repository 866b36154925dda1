package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/text"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Prometheus names of the series the dashboards read, as the collector's
// Prometheus exporter (and Prometheus' OTLP receiver) translate lbpath's
// OTLP names: counters get _total, unit s gets _seconds, unit 1 on a gauge
// gets _ratio, histograms _bucket/_sum/_count (classic) or one native
// histogram series under the base name (exponential). querycheck verifies each one
// against the names it derives from exporter/ and processor/ sources.
const (
	metricConnections     = "lbpath_connections_total"
	metricBytes           = "lbpath_bytes_total"
	metricRetransmits     = "lbpath_retransmits_total"
	metricRequests        = "lbpath_requests_total"
	metricRequestDuration = "lbpath_request_duration_seconds"
	metricConnDuration    = "lbpath_connection_duration_seconds"
	metricRTT             = "lbpath_rtt_seconds"
	metricDropped         = "lbpath_agent_dropped_total"
	metricExported        = "lbpath_agent_exported_total"
	metricNodeConns       = "lbpath_agent_node_connections_total"

	metricConntrackEntries = "lbpath_node_conntrack_entries"
	metricConntrackMax     = "lbpath_node_conntrack_max"
	metricConntrackDrops   = "lbpath_node_conntrack_drops_total"

	metricLBShare       = "lbpath_lb_share_ratio"
	metricLBMaxMean     = "lbpath_lb_max_mean_ratio"
	metricLBCV          = "lbpath_lb_cv_ratio"
	metricLBHot         = "lbpath_lb_hot"
	metricLBNodeShare   = "lbpath_lb_node_share_ratio"
	metricLBPods        = "lbpath_lb_pods"
	metricLBIdlePods    = "lbpath_lb_idle_pods"
	metricLBTransitions = "lbpath_lb_hot_transitions_total"
	metricLBEvictions   = "lbpath_lb_evictions_total"

	metricDeployP50         = "lbpath_deploy_latency_p50_seconds"
	metricDeployP90         = "lbpath_deploy_latency_p90_seconds"
	metricDeployP99         = "lbpath_deploy_latency_p99_seconds"
	metricDeployDelta       = "lbpath_deploy_latency_delta_ratio"
	metricDeployRegression  = "lbpath_deploy_regression"
	metricDeployPValue      = "lbpath_deploy_p_value"
	metricDeploySamples     = "lbpath_deploy_samples"
	metricDeployTimeSince   = "lbpath_deploy_time_since_seconds"
	metricDeployRollouts    = "lbpath_deploy_rollouts_total"
	metricDeployRegressions = "lbpath_deploy_regressions_total"
	metricDeployEvictions   = "lbpath_deploy_evictions_total"

	// recordClientIPRequired is the recording rule of deploy/rules that
	// lists the Services whose owners asked to keep the client IP.
	recordClientIPRequired = "lbpath:client_ip_required"
)

func ts(title, desc, unit string, w, h uint32, targets ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(desc).Datasource(promDS).Unit(unit).
		Span(w).Height(h).FillOpacity(10).
		Legend(common.NewVizLegendOptionsBuilder().ShowLegend(true).DisplayMode(common.LegendDisplayModeTable).
			Placement(common.LegendPlacementBottom).Calcs([]string{"mean", "max", "lastNotNull"}))
	for _, t := range targets {
		p = p.WithTarget(t)
	}
	return p
}

func statPanel(title, desc, unit string, w, h uint32, thresholds *dashboard.ThresholdsConfigBuilder, targets ...*prometheus.DataqueryBuilder) *stat.PanelBuilder {
	p := stat.NewPanelBuilder().Title(title).Description(desc).Datasource(promDS).Unit(unit).Span(w).Height(h).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}))
	if thresholds != nil {
		p = p.Thresholds(thresholds).ColorMode(common.BigValueColorModeBackground)
	}
	for _, t := range targets {
		p = p.WithTarget(t)
	}
	return p
}

func tablePanel(title, desc string, w, h uint32, targets ...*prometheus.DataqueryBuilder) *table.PanelBuilder {
	p := table.NewPanelBuilder().Title(title).Description(desc).Datasource(promDS).Span(w).Height(h).
		WithTransformation(dashboard.DataTransformerConfig{Id: "organize", Options: map[string]any{
			"excludeByName": map[string]bool{"Time": true, "__name__": true, "job": true, "instance": true,
				"otel_scope_name": true, "otel_scope_version": true, "otel_scope_schema_url": true},
		}})
	for _, t := range targets {
		p = p.WithTarget(t)
	}
	return p
}

func note(title, markdown string, w, h uint32) *text.PanelBuilder {
	return text.NewPanelBuilder().Title(title).Mode(text.TextModeMarkdown).Content(markdown).Span(w).Height(h)
}

func row(title string) *dashboard.RowBuilder {
	return dashboard.NewRowBuilder(title)
}

// steps builds a threshold set: base colour, then (value, colour) pairs.
func steps(base string, more ...any) *dashboard.ThresholdsConfigBuilder {
	s := []dashboard.Threshold{{Color: base}}
	for i := 0; i+1 < len(more); i += 2 {
		s = append(s, dashboard.Threshold{Value: cog.ToPtr(more[i].(float64)), Color: more[i+1].(string)})
	}
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(s)
}
