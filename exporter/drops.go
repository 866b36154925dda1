package exporter

// Drops lists the exporter's own loss counters as they appear in
// lbpath.agent.dropped (stage "export"). The agent's health endpoint serves
// this same list, so its /metrics and the OTLP self-metric cannot disagree.
func (e *Exporter) Drops() []Drop {
	return []Drop{
		{"export", "queue_full", e.Stats.QueueFull.Load()},
		{"export", "spans_failed", e.Stats.SpansFailed.Load()},
		{"export", "metric_exports_failed", e.Stats.MetricsFailed.Load()},
		{"export", "node_stats_failed", e.Stats.NodeStatsFailed.Load()},
	}
}
