package exporter

import (
	"fmt"
	"os"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Metric temporality (--metrics-temporality) and latency histogram kind
// (--latency-histogram). docs/TELEMETRY.md, "Temporality" and "Histograms".
const (
	TemporalityCumulative = "cumulative"
	TemporalityDelta      = "delta"

	HistogramExponential = "exponential"
	HistogramExplicit    = "explicit"
)

// Exponential histogram parameters of the latency instruments.
//
// The SDK picks the finest scale at which a series' observed range fits in
// expoMaxSize buckets, so the size, not the scale, sets the precision: a
// series spanning 1–100 ms (6.6 doublings) fits 160 buckets at scale 4
// (16 buckets per doubling, base 2^(1/16)): a quantile read at a bucket's
// midpoint is off by at most (base-1)/(base+1) = 2.2 %. A narrower series
// (e.g. 20–45 ms) gets scale 7, 0.27 %. 80 buckets would give scale 3 at
// 1–100 ms (4.3 %), too close to the 5 % the deploy verdict must hold;
// 320 buckets would halve the error (1.1 %) for twice the memory. A full
// series costs 160 × 8 bytes of counts (the SDK grows the array as the
// range widens), ≈1.3 KiB per series per histogram (docs/PERFORMANCE.md,
// "Series churn", has the measured cost). The maximum scale is the SDK's
// limit, 20: it only matters for series whose values are all within a few
// per cent of each other; Prometheus caps native histograms at scale 8 and
// downscales on ingest.
const (
	expoMaxSize  = 160
	expoMaxScale = 20
)

// latencyInstruments are the histograms --latency-histogram applies to.
var latencyInstruments = []string{MetricRequestDuration, MetricConnectionDuration, MetricRTT}

// validateMetrics checks the metric pipeline's fields and names the flag.
func (c *Config) validateMetrics() error {
	switch c.Temporality {
	case "", TemporalityCumulative, TemporalityDelta:
	default:
		return fmt.Errorf("metrics-temporality: %q is not cumulative or delta", c.Temporality)
	}
	switch c.LatencyHistogram {
	case "", HistogramExponential, HistogramExplicit:
	default:
		return fmt.Errorf("latency-histogram: %q is not exponential or explicit", c.LatencyHistogram)
	}
	// The agent's flag decides; the SDK's variable would be overridden
	// without a word.
	if v := os.Getenv(envTemporality); v != "" {
		return fmt.Errorf("%s: not read by lbpath-agent; set --metrics-temporality", envTemporality)
	}
	if c.MaxSeries < 0 || c.MaxSeries > maxSeriesLimit {
		return fmt.Errorf("max-series-per-metric: %d must be between 1 and %d", c.MaxSeries, maxSeriesLimit)
	}
	// A set's last measurement is known to one collection interval: an
	// expiry within it would take every set for stale at every collection.
	interval := c.MetricInterval
	if interval == 0 {
		interval = 10 * time.Second
	}
	if c.SeriesExpiry < 0 || (c.SeriesExpiry > 0 && c.SeriesExpiry < 2*interval) {
		return fmt.Errorf("series-expiry: %v must be at least twice metric-interval (%v)", c.SeriesExpiry, interval)
	}
	return nil
}

const envTemporality = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"

// Bounds and defaults of the series fields.
const (
	// DefaultMaxSeries: see docs/TELEMETRY.md "Series limits" for the
	// arithmetic (memory per series, series per node).
	DefaultMaxSeries    = 4000
	maxSeriesLimit      = 1 << 20
	DefaultSeriesExpiry = 5 * time.Minute
)

// seriesExpiry is SeriesExpiry, or by default DefaultSeriesExpiry but at
// least two collection intervals.
func (c *Config) seriesExpiry() time.Duration {
	if c.SeriesExpiry != 0 {
		return c.SeriesExpiry
	}
	interval := c.MetricInterval
	if interval == 0 {
		interval = 10 * time.Second
	}
	return max(DefaultSeriesExpiry, 2*interval)
}

// delta reports whether the pipeline exports delta temporality.
func (c *Config) delta() bool { return c.Temporality == TemporalityDelta }

// temporality is the selector of --metrics-temporality. Delta follows the
// OTLP exporter specification's "delta" preference: counters and
// histograms delta, up-down counters cumulative (their value is a level,
// not a rate). Gauges have no temporality.
func (c *Config) temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	if !c.delta() {
		return metricdata.CumulativeTemporality
	}
	switch k {
	case sdkmetric.InstrumentKindUpDownCounter, sdkmetric.InstrumentKindObservableUpDownCounter:
		return metricdata.CumulativeTemporality
	}
	return metricdata.DeltaTemporality
}

// views makes the latency instruments exponential histograms unless
// --latency-histogram=explicit (then their advisory bucket boundaries in
// instruments.go apply).
func (c *Config) views() []sdkmetric.View {
	if c.LatencyHistogram == HistogramExplicit {
		return nil
	}
	vs := make([]sdkmetric.View, 0, len(latencyInstruments))
	for _, name := range latencyInstruments {
		vs = append(vs, sdkmetric.NewView(sdkmetric.Instrument{Name: name},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{
				MaxSize: expoMaxSize, MaxScale: expoMaxScale}}))
	}
	return vs
}

// temporalExporter is the OTLP exporter with the agent's temporality: the
// periodic reader asks its exporter which temporality to aggregate in.
type temporalExporter struct {
	sdkmetric.Exporter
	cfg *Config
}

func (t temporalExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return t.cfg.temporality(k)
}
