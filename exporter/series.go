package exporter

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
)

// Bounded series (docs/TELEMETRY.md, "Series limits and expiry").
//
// The per-pod instruments live in a "generation": their own MeterProvider
// read by a ManualReader, whose output the exporting PeriodicReader pulls
// as a Producer at every collection. lbpath admits attribute sets into
// the generation itself, up to --max-series-per-metric per family, and
// records whatever does not fit into one overflow series
// (otel.metric.overflow=true, as the SDK would), counting every such
// measurement in lbpath.agent.series_overflow.
//
//   - delta: the SDK forgets a series that had no measurement in an
//     interval; lbpath's admitted sets are per interval too, so a deleted
//     pod's series is gone after one collection.
//   - cumulative: the SDK keeps every series of a provider for its life.
//     When the sets with no measurement for --series-expiry outnumber the
//     live ones (and are at least resetMinStale), or a family overflowed
//     while stale sets held its slots, the collection exports the old
//     generation's final values and the next starts a new generation:
//     every per-pod series restarts from zero with a new start time, which
//     Prometheus (rate/increase) and the lbpath processors read as a
//     counter reset. The self-metrics live in the long-lived provider and
//     never reset.
//
// Records hold gate for reading; a collection holds it for writing while it
// collects and swaps, so every measurement falls in exactly one interval
// and one generation.

// resetMinStale is how many stale sets a family needs before they can
// trigger a reset: a handful of dead series is not worth restarting every
// counter for.
const resetMinStale = 64

// Families of attribute sets: the connection metrics share the sets of
// lbpath.connections, the request metrics those of lbpath.requests.
const (
	famConn = iota
	famReq
	nFamilies
)

// Indexes of the per-pod metrics in the overflow and series counts.
const (
	mConnections = iota
	mBytes
	mConnDuration
	mRTT
	mRetransmits
	mRequests
	mRequestDuration
	nSeriesMetrics
)

var seriesMetricNames = [nSeriesMetrics]string{
	MetricConnections, MetricBytes, MetricConnectionDuration, MetricRTT, MetricRetransmits,
	MetricRequests, MetricRequestDuration,
}

// seriesEntry is one admitted attribute set: all, to_server, to_client.
type seriesEntry struct {
	sets [3]attribute.Set
	last int64 // collection time (unix ns) that opened its last measured interval
}

// overflowSets take what does not fit; bytes keep their direction.
var overflowSets = [3]attribute.Set{
	attribute.NewSet(attribute.Bool("otel.metric.overflow", true)),
	attribute.NewSet(attribute.Bool("otel.metric.overflow", true), attribute.String("lbpath.direction", "to_server")),
	attribute.NewSet(attribute.Bool("otel.metric.overflow", true), attribute.String("lbpath.direction", "to_client")),
}

// generation is one set of per-pod instruments and their provider.
type generation struct {
	mp              *sdkmetric.MeterProvider
	reader          *sdkmetric.ManualReader
	connections     metric.Int64Counter
	requests        metric.Int64Counter
	bytes           metric.Int64Counter
	requestDuration metric.Float64Histogram
	connDuration    metric.Float64Histogram
	rtt             metric.Float64Histogram
	retransmits     metric.Int64Counter
	// The ingress proxy hop (ingress.go).
	ingressRequests    metric.Int64Counter
	ingressDuration    metric.Float64Histogram
	ingressConnections metric.Int64Counter
	ingressLinks       metric.Int64Counter
}

// series admits attribute sets, owns the current generation and produces
// its data for the exporting reader.
type series struct {
	cfg *Config
	max int // sets per family
	now func() time.Time

	gate sync.RWMutex // records: read; collection: write
	gen  *generation

	mu      sync.Mutex // the table, under gate's read lock
	table   [nFamilies]map[setKey]*seriesEntry
	clock   int64                  // time of the last collection (unix ns)
	spilled [nFamilies]atomic.Bool // a set was refused in this interval

	overflow [nSeriesMetrics]atomic.Uint64 // measurements folded into the overflow series
	exported [nSeriesMetrics]atomic.Int64  // series in the last collection
	resets   atomic.Uint64                 // generations restarted (cumulative)
}

func newSeries(cfg *Config) (*series, error) {
	s := &series{cfg: cfg, max: cfg.MaxSeries, now: cfg.now}
	if s.max == 0 {
		s.max = DefaultMaxSeries
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.clock = s.now().UnixNano()
	g, err := s.newGeneration()
	if err != nil {
		return nil, err
	}
	s.gen = g
	s.clear()
	return s, nil
}

func (s *series) clear() {
	for f := range s.table {
		s.table[f] = make(map[setKey]*seriesEntry)
		s.spilled[f].Store(false)
	}
}

// newGeneration builds the per-pod instruments in a fresh provider.
// Exemplars are off: lbpath records with no span context, and the default
// reservoir would still be allocated per series (20 slots per exponential
// histogram). The SDK's own cardinality limit is above what lbpath admits
// (bytes carries two directions per set), so it never folds silently.
func (s *series) newGeneration() (*generation, error) {
	r := sdkmetric.NewManualReader(sdkmetric.WithTemporalitySelector(s.cfg.temporality))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r), sdkmetric.WithView(s.cfg.views()...),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter), sdkmetric.WithCardinalityLimit(2*s.max+4))
	g := &generation{mp: mp, reader: r}
	if err := g.init(mp.Meter(meterName)); err != nil {
		return nil, err
	}
	return g, nil
}

const meterName = "github.com/lbpath/lbpath/exporter"

// admit returns the sets of k, building and admitting them if there is
// room in k's family; nil when there is none (record into overflowSets).
// Called under gate's read lock.
func (s *series) admit(fam int, k setKey, build func() [3]attribute.Set) *[3]attribute.Set {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.table[fam]
	if e, ok := t[k]; ok {
		e.last = s.clock
		return &e.sets
	}
	if len(t) >= s.max {
		s.spilled[fam].Store(true)
		return nil
	}
	e := &seriesEntry{sets: build(), last: s.clock}
	t[k] = e
	return &e.sets
}

// Produce is called by the exporting reader at every collection: it
// collects the generation (and, under cumulative, decides a reset) with
// recording held off, so no measurement falls between two intervals.
func (s *series) Produce(ctx context.Context) ([]metricdata.ScopeMetrics, error) {
	s.gate.Lock()
	defer s.gate.Unlock()
	var rm metricdata.ResourceMetrics
	if err := s.gen.reader.Collect(ctx, &rm); err != nil {
		return nil, fmt.Errorf("collect per-pod metrics: %w", err)
	}
	now := s.now().UnixNano()
	if s.cfg.delta() {
		// The SDK forgot every set with no measurement in this interval;
		// so does lbpath's admission.
		s.clear()
	} else if s.stale(now) {
		g, err := s.newGeneration()
		if err != nil {
			return nil, err
		}
		old := s.gen
		s.gen = g
		s.clear()
		s.resets.Add(1)
		_ = old.mp.Shutdown(ctx) // a ManualReader: nothing left to send
	}
	s.clock = now
	s.count(rm.ScopeMetrics)
	return rm.ScopeMetrics, nil
}

// stale reports whether the generation should restart: in some family
// the sets with no measurement for the expiry outnumber the live ones
// (and are at least resetMinStale), or the family refused a set while
// stale ones held its slots.
func (s *series) stale(now int64) bool {
	expiry := s.cfg.seriesExpiry()
	reset := false
	for f := range s.table {
		var stale int
		for _, e := range s.table[f] {
			if now-e.last > int64(expiry) {
				stale++
			}
		}
		live := len(s.table[f]) - stale
		if (stale >= resetMinStale && stale > live) || (stale > 0 && s.spilled[f].Load()) {
			reset = true
		}
		s.spilled[f].Store(false)
	}
	return reset
}

// count records how many series each per-pod metric exported.
func (s *series) count(sms []metricdata.ScopeMetrics) {
	var n [nSeriesMetrics]int64
	for _, sm := range sms {
		for _, m := range sm.Metrics {
			for i, name := range seriesMetricNames {
				if m.Name == name {
					n[i] += int64(points(m.Data))
				}
			}
		}
	}
	for i := range n {
		s.exported[i].Store(n[i])
	}
}

func points(d metricdata.Aggregation) int {
	switch d := d.(type) {
	case metricdata.Sum[int64]:
		return len(d.DataPoints)
	case metricdata.Sum[float64]:
		return len(d.DataPoints)
	case metricdata.Histogram[float64]:
		return len(d.DataPoints)
	case metricdata.ExponentialHistogram[float64]:
		return len(d.DataPoints)
	}
	return 0
}

// SeriesCount is one per-pod metric's series bookkeeping: the series it
// exported at the last collection and the measurements folded into its
// overflow series because --max-series-per-metric was reached.
type SeriesCount struct {
	Metric   string
	Series   int64
	Overflow uint64
}

// Series lists the per-pod metrics' series counts (nil without metrics).
// The health endpoint serves the same numbers as the OTLP self-metrics.
func (e *Exporter) Series() []SeriesCount {
	s := e.inst.series
	if s == nil {
		return nil
	}
	out := make([]SeriesCount, nSeriesMetrics)
	for i, name := range seriesMetricNames {
		out[i] = SeriesCount{Metric: name, Series: s.exported[i].Load(), Overflow: s.overflow[i].Load()}
	}
	return out
}

// SeriesResets is how many times the per-pod series restarted (cumulative
// temporality's expiry).
func (e *Exporter) SeriesResets() uint64 {
	if e.inst.series == nil {
		return 0
	}
	return e.inst.series.resets.Load()
}

// meterProvider builds the exporting pipeline: one PeriodicReader with
// the agent's temporality, holding the self-metrics, and pulling the
// per-pod generation as a producer.
func (e *Exporter) meterProvider(res *resource.Resource) (*sdkmetric.MeterProvider, error) {
	s, err := newSeries(&e.cfg)
	if err != nil {
		return nil, err
	}
	e.inst.series = s
	return sdkmetric.NewMeterProvider(
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(temporalExporter{e.metrics, &e.cfg},
			sdkmetric.WithInterval(e.cfg.MetricInterval), sdkmetric.WithProducer(s),
			sdkmetric.WithMaxExportBatchSize(maxExportPoints))),
	), nil
}

// maxExportPoints splits a collection into OTLP requests of at most this
// many data points. A collector's OTLP receiver refuses a gRPC message over
// 4 MiB by default (max_recv_msg_size_mib), and one collection of a busy
// node is larger: 1,000 pods just created made one of 5.6 MB (≈400 bytes
// a point; BenchmarkSeriesChurn), refused whole. A full 160-bucket
// exponential point with long names is under 1 KiB, so 2,000 points stay
// under 2 MiB.
const maxExportPoints = 2000

// initSeries registers the series self-metrics. They are read at the
// start of a collection, before the producer runs: lbpath.agent.series
// is the previous collection's count.
func initSeries(m metric.Meter, e *Exporter) error {
	count, err := m.Int64ObservableGauge(MetricSeries, metric.WithUnit("{series}"),
		metric.WithDescription("Series each per-pod metric exported at the previous collection, by lbpath.metric"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricSeries, err)
	}
	overflow, err := m.Int64ObservableCounter(MetricSeriesOverflow, metric.WithUnit("{measurement}"),
		metric.WithDescription("Measurements recorded into a per-pod metric's overflow series (otel.metric.overflow=true) because --max-series-per-metric was reached, by lbpath.metric"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricSeriesOverflow, err)
	}
	resets, err := m.Int64ObservableCounter(MetricSeriesResets, metric.WithUnit("{reset}"),
		metric.WithDescription("Times the per-pod cumulative series restarted with a new start time to expire stale series"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricSeriesResets, err)
	}
	attrs := make([]metric.ObserveOption, nSeriesMetrics)
	for i, name := range seriesMetricNames {
		attrs[i] = metric.WithAttributes(attribute.String("lbpath.metric", name))
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for i, c := range e.Series() {
			o.ObserveInt64(count, c.Series, attrs[i])
			o.ObserveInt64(overflow, int64(c.Overflow), attrs[i])
		}
		o.ObserveInt64(resets, int64(e.SeriesResets()))
		return nil
	}, count, overflow, resets)
	if err != nil {
		return fmt.Errorf("register series self-metrics: %w", err)
	}
	return nil
}
