// Package otlpsink is an OTLP receiver for tests: it accepts traces and
// metrics over gRPC and HTTP (protobuf), on loopback or a given address, and keeps what arrived,
// decoded with the collector's own pdata, so tests assert on exactly what
// crossed the wire.
package otlpsink

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"

	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/grpc"
)

// Sink holds what was received.
type Sink struct {
	GRPCAddr string // host:port
	HTTPAddr string // host:port; POST /v1/traces and /v1/metrics

	grpc *grpc.Server
	http *http.Server

	mu      sync.Mutex
	traces  []ptrace.Traces
	metrics []pmetric.Metrics
	// Fail makes every export answer with an error (to test retries and
	// drop counting).
	fail bool
	// hold, when set, makes trace exports wait until it is closed (a
	// collector stalled on traces while metrics still flow).
	hold chan struct{}
	// discard keeps only counts (benchmarks measure the sender, not the sink).
	discard        bool
	spanCount      int
	dataPointCount int
}

// Discard makes the sink count what arrives instead of keeping it.
func (s *Sink) Discard() {
	s.mu.Lock()
	s.discard = true
	s.mu.Unlock()
}

// Counts returns spans and data points received (also when discarding).
func (s *Sink) Counts() (spans, dataPoints int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spanCount, s.dataPointCount
}

// Start listens on loopback ports chosen by the kernel.
func Start() (*Sink, error) { return StartOn("127.0.0.1") }

// StartOn listens on ports chosen by the kernel on host, e.g. an address
// that pods of the test bed can reach.
func StartOn(host string) (*Sink, error) {
	s := &Sink{}
	gl, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("otlpsink grpc listen: %w", err)
	}
	hl, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		gl.Close()
		return nil, fmt.Errorf("otlpsink http listen: %w", err)
	}
	s.GRPCAddr, s.HTTPAddr = gl.Addr().String(), hl.Addr().String()
	s.grpc = grpc.NewServer()
	ptraceotlp.RegisterGRPCServer(s.grpc, &traceSrv{s: s})
	pmetricotlp.RegisterGRPCServer(s.grpc, &metricSrv{s: s})
	go s.grpc.Serve(gl)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", s.httpTraces)
	mux.HandleFunc("POST /v1/metrics", s.httpMetrics)
	s.http = &http.Server{Handler: mux}
	go s.http.Serve(hl)
	return s, nil
}

// HoldTraces makes trace exports wait, unanswered, until the returned
// release is called; metric exports are not held. An export whose client
// gave up while held is not recorded (the client counts it as failed).
func (s *Sink) HoldTraces() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := make(chan struct{})
	s.hold = h
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hold == h {
				s.hold = nil
			}
			s.mu.Unlock()
			close(h)
		})
	}
}

// Stop closes both servers.
func (s *Sink) Stop() {
	s.mu.Lock()
	if s.hold != nil {
		close(s.hold)
		s.hold = nil
	}
	s.mu.Unlock()
	s.grpc.Stop()
	s.http.Close()
}

// SetFail makes exports fail (true) or succeed again.
func (s *Sink) SetFail(f bool) {
	s.mu.Lock()
	s.fail = f
	s.mu.Unlock()
}

// Traces returns copies of every traces payload received.
func (s *Sink) Traces() []ptrace.Traces {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ptrace.Traces(nil), s.traces...)
}

// Metrics returns every metrics payload received.
func (s *Sink) Metrics() []pmetric.Metrics {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]pmetric.Metrics(nil), s.metrics...)
}

func (s *Sink) addTraces(ctx context.Context, t ptrace.Traces) error {
	s.mu.Lock()
	hold := s.hold
	s.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return fmt.Errorf("otlpsink: failing on purpose")
	}
	s.spanCount += t.SpanCount()
	if s.discard {
		return nil
	}
	c := ptrace.NewTraces()
	t.CopyTo(c)
	s.traces = append(s.traces, c)
	return nil
}

func (s *Sink) addMetrics(m pmetric.Metrics) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return fmt.Errorf("otlpsink: failing on purpose")
	}
	s.dataPointCount += m.DataPointCount()
	if s.discard {
		return nil
	}
	c := pmetric.NewMetrics()
	m.CopyTo(c)
	s.metrics = append(s.metrics, c)
	return nil
}

type traceSrv struct {
	ptraceotlp.UnimplementedGRPCServer
	s *Sink
}

func (t *traceSrv) Export(ctx context.Context, req ptraceotlp.ExportRequest) (ptraceotlp.ExportResponse, error) {
	return ptraceotlp.NewExportResponse(), t.s.addTraces(ctx, req.Traces())
}

type metricSrv struct {
	pmetricotlp.UnimplementedGRPCServer
	s *Sink
}

func (m *metricSrv) Export(_ context.Context, req pmetricotlp.ExportRequest) (pmetricotlp.ExportResponse, error) {
	return pmetricotlp.NewExportResponse(), m.s.addMetrics(req.Metrics())
}

func (s *Sink) httpTraces(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := ptraceotlp.NewExportRequest()
	if err := req.UnmarshalProto(body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := s.addTraces(r.Context(), req.Traces()); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	out, _ := ptraceotlp.NewExportResponse().MarshalProto()
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func (s *Sink) httpMetrics(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := pmetricotlp.NewExportRequest()
	if err := req.UnmarshalProto(body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := s.addMetrics(req.Metrics()); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	out, _ := pmetricotlp.NewExportResponse().MarshalProto()
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

// Span is a flattened span for assertions.
type Span struct {
	TraceID, SpanID, ParentID string
	Name, Kind                string
	TraceState                string // W3C tracestate, e.g. "ot=th:f"
	Flags                     uint32 // OTLP span flags: W3C trace flags in the low byte
	Resource, Attrs           map[string]any
	Events                    []string
}

// Spans flattens every span received.
func (s *Sink) Spans() []Span {
	var out []Span
	for _, t := range s.Traces() {
		for i := 0; i < t.ResourceSpans().Len(); i++ {
			rs := t.ResourceSpans().At(i)
			res := rs.Resource().Attributes().AsRaw()
			for j := 0; j < rs.ScopeSpans().Len(); j++ {
				ss := rs.ScopeSpans().At(j)
				for k := 0; k < ss.Spans().Len(); k++ {
					sp := ss.Spans().At(k)
					var evs []string
					for e := 0; e < sp.Events().Len(); e++ {
						evs = append(evs, sp.Events().At(e).Name())
					}
					out = append(out, Span{TraceID: sp.TraceID().String(), SpanID: sp.SpanID().String(),
						ParentID: sp.ParentSpanID().String(), Name: sp.Name(), Kind: sp.Kind().String(),
						TraceState: sp.TraceState().AsRaw(), Flags: sp.Flags(),
						Resource: res, Attrs: sp.Attributes().AsRaw(), Events: evs})
				}
			}
		}
	}
	return out
}

// Point is a flattened metric data point (sum or gauge value, or a
// histogram's count and sum).
type Point struct {
	Metric       string
	Resource     map[string]any
	Attrs        map[string]any
	Value        float64
	Count        uint64
	Sum          float64
	BucketCounts []uint64
	Bounds       []float64
	// Exponential histograms: Exponential is set, Scale, ZeroCount and
	// the positive buckets (counts from index Offset) hold the buckets.
	Exponential bool
	Scale       int32
	ZeroCount   uint64
	Offset      int32
	// Delta is the point's temporality (sums and histograms), StartNanos
	// its start time.
	Delta      bool
	StartNanos uint64
}

// Points flattens every data point received, in arrival order.
func (s *Sink) Points() []Point {
	var out []Point
	for _, m := range s.Metrics() {
		for i := 0; i < m.ResourceMetrics().Len(); i++ {
			rm := m.ResourceMetrics().At(i)
			res := rm.Resource().Attributes().AsRaw()
			for j := 0; j < rm.ScopeMetrics().Len(); j++ {
				sm := rm.ScopeMetrics().At(j)
				for k := 0; k < sm.Metrics().Len(); k++ {
					mt := sm.Metrics().At(k)
					switch mt.Type() {
					case pmetric.MetricTypeSum:
						dps := mt.Sum().DataPoints()
						for d := 0; d < dps.Len(); d++ {
							out = append(out, Point{Metric: mt.Name(), Resource: res, Attrs: dps.At(d).Attributes().AsRaw(), Value: numValue(dps.At(d)),
								Delta: mt.Sum().AggregationTemporality() == pmetric.AggregationTemporalityDelta, StartNanos: uint64(dps.At(d).StartTimestamp())})
						}
					case pmetric.MetricTypeGauge:
						dps := mt.Gauge().DataPoints()
						for d := 0; d < dps.Len(); d++ {
							out = append(out, Point{Metric: mt.Name(), Resource: res, Attrs: dps.At(d).Attributes().AsRaw(), Value: numValue(dps.At(d))})
						}
					case pmetric.MetricTypeHistogram:
						dps := mt.Histogram().DataPoints()
						for d := 0; d < dps.Len(); d++ {
							dp := dps.At(d)
							out = append(out, Point{Metric: mt.Name(), Resource: res, Attrs: dp.Attributes().AsRaw(),
								Count: dp.Count(), Sum: dp.Sum(), BucketCounts: dp.BucketCounts().AsRaw(), Bounds: dp.ExplicitBounds().AsRaw(),
								Delta: mt.Histogram().AggregationTemporality() == pmetric.AggregationTemporalityDelta, StartNanos: uint64(dp.StartTimestamp())})
						}
					case pmetric.MetricTypeExponentialHistogram:
						dps := mt.ExponentialHistogram().DataPoints()
						for d := 0; d < dps.Len(); d++ {
							dp := dps.At(d)
							out = append(out, Point{Metric: mt.Name(), Resource: res, Attrs: dp.Attributes().AsRaw(),
								Count: dp.Count(), Sum: dp.Sum(), Exponential: true, Scale: dp.Scale(), ZeroCount: dp.ZeroCount(),
								Offset: dp.Positive().Offset(), BucketCounts: dp.Positive().BucketCounts().AsRaw(),
								Delta: mt.ExponentialHistogram().AggregationTemporality() == pmetric.AggregationTemporalityDelta, StartNanos: uint64(dp.StartTimestamp())})
						}
					}
				}
			}
		}
	}
	return out
}

func numValue(dp pmetric.NumberDataPoint) float64 {
	if dp.ValueType() == pmetric.NumberDataPointValueTypeInt {
		return float64(dp.IntValue())
	}
	return dp.DoubleValue()
}
