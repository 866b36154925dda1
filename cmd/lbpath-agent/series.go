package main

import (
	"github.com/lbpath/lbpath/agent/health"
	"github.com/lbpath/lbpath/exporter"
)

// seriesFamilies renders the per-pod metrics' series bookkeeping under the
// Prometheus names of the OTLP self-metrics lbpath.agent.series,
// lbpath.agent.series_overflow and lbpath.agent.series_resets, from the
// same counters. Without metrics export it renders nothing.
func seriesFamilies(exp *exporter.Exporter) []health.Family {
	counts := exp.Series()
	if counts == nil {
		return nil
	}
	series := health.Family{Name: "lbpath_agent_series", Type: "gauge",
		Help: "Series each per-pod metric exported at the last collection"}
	overflow := health.Family{Name: "lbpath_agent_series_overflow_total", Type: "counter",
		Help: "Measurements recorded into a per-pod metric's overflow series because --max-series-per-metric was reached"}
	for _, c := range counts {
		l := []health.Label{{Name: "lbpath_metric", Value: c.Metric}}
		series.Samples = append(series.Samples, health.Sample{Labels: l, Value: float64(c.Series)})
		overflow.Samples = append(overflow.Samples, health.Sample{Labels: l, Value: float64(c.Overflow)})
	}
	resets := health.Family{Name: "lbpath_agent_series_resets_total", Type: "counter",
		Help:    "Times the per-pod cumulative series restarted with a new start time to expire stale series",
		Samples: []health.Sample{{Value: float64(exp.SeriesResets())}}}
	return []health.Family{series, overflow, resets}
}
