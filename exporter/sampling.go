package exporter

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
)

// Span sampling follows OpenTelemetry's consistent probability sampling
// (TraceState: Probability Sampling): the randomness R is the trace ID's
// 56 least-significant bits, a probability p becomes the rejection
// threshold T = (1-p)·2^56, and a span is kept when R >= T. Every node that
// sees a connection derives the same trace ID (TraceID), so every node
// takes the same decision for the same probability without talking to
// the others; the threshold goes into the span's tracestate (ot=th:…) so
// that a backend counts each kept span as 1/p connections.

// Sampling configures which connections become spans. Metrics count every
// connection whatever is sampled.
type Sampling struct {
	// Enabled turns sampling on. Off (the zero value), every connection
	// becomes spans; the agent's flags always turn it on.
	Enabled bool
	// Probability is the fraction of healthy connections kept as spans, in
	// [0, 1]. 0 keeps only the connections that are always kept.
	Probability float64
	// SlowThreshold: a connection that lasted longer is always kept
	// (0: no connection is kept for being slow).
	SlowThreshold time.Duration
}

// DefaultSpanSampling is the agent's default probability. A power of two
// is an exact, short threshold (1/32: th:f8). BenchmarkExportSampled
// measures the export cost per connection at 5.2–6.7 µs with 1/32 against
// 7.7–7.9 µs with 1/16 (metrics only 4.8–5.2 µs, every span 45–52 µs): 1/32
// stays under the 8 µs budget on a busy node, 1/16 only on a quiet one
// (docs/PERFORMANCE.md). At 20k new connections/s it still keeps 625
// connections' spans a second, plus every failed, diagnosed or slow one.
const DefaultSpanSampling = 1.0 / 32

// DefaultSlowThreshold is the agent's default slow threshold. Connections
// lasting longer are kept at most (open connections / threshold) per
// second, so keeping all of them stays cheap.
const DefaultSlowThreshold = time.Second

func (s Sampling) validate() error {
	if math.IsNaN(s.Probability) || s.Probability < 0 || s.Probability > 1 {
		return fmt.Errorf("span-sampling: %v must be between 0 and 1", s.Probability)
	}
	if s.SlowThreshold < 0 {
		return fmt.Errorf("slow-threshold: %v must not be negative", s.SlowThreshold)
	}
	return nil
}

// maxThreshold is 2^56: one more than the largest randomness value.
const maxThreshold = uint64(1) << 56

// thPrecision is the number of significant hex digits of a threshold, the
// OpenTelemetry SDKs' recommended default.
const thPrecision = 4

// Threshold is a rejection threshold with its tracestate encoding.
type Threshold struct {
	t  uint64
	th string // "" when nothing is ever kept (probability 0)
	ts trace.TraceState
}

// AlwaysKeep is the threshold of probability 1 (th:0).
var AlwaysKeep = ThresholdFor(1)

// ThresholdFor converts a probability to a rejection threshold with four
// significant hex digits, more for small probabilities (as the
// specification's algorithm does). A probability of 0 (or below 2^-56)
// keeps nothing; 1 keeps everything.
func ThresholdFor(p float64) Threshold {
	if p >= 1 {
		return newThreshold(0)
	}
	if !(p > 0) {
		return Threshold{t: maxThreshold}
	}
	p = max(p, 0x1p-56)
	_, exp := math.Frexp(p) // p = m·2^exp, m in [0.5, 1): leading f digits
	prec := min(12, max(1, thPrecision+(-exp)/4))
	t := maxThreshold - uint64(math.Round(p*float64(maxThreshold)))
	shift := uint(4 * (14 - prec))
	t = (t + 1<<(shift-1)) >> shift << shift
	if t >= maxThreshold {
		t = (maxThreshold - 1) >> shift << shift
	}
	return newThreshold(t)
}

func newThreshold(t uint64) Threshold {
	th := strings.TrimRight(fmt.Sprintf("%014x", t), "0")
	if th == "" {
		th = "0"
	}
	ts, err := trace.TraceState{}.Insert("ot", "th:"+th)
	if err != nil {
		panic(fmt.Sprintf("tracestate ot=th:%s: %v", th, err)) // the encoding is fixed: cannot happen
	}
	return Threshold{t: t, th: th, ts: ts}
}

// TH is the threshold's tracestate value (the part after "ot=th:"), "" for
// probability 0.
func (t Threshold) TH() string { return t.th }

// Probability is the fraction of trace IDs the threshold keeps.
func (t Threshold) Probability() float64 {
	return float64(maxThreshold-t.t) / float64(maxThreshold)
}

// Keep reports whether a trace ID's randomness passes the threshold.
func (t Threshold) Keep(id trace.TraceID) bool {
	return binary.BigEndian.Uint64(id[8:])&(maxThreshold-1) >= t.t
}

// ConnectionTraceID is the trace ID of a connection's spans as every node
// that sees it derives it.
func ConnectionTraceID(c *flow.Connection) trace.TraceID { return TraceID(c.WireKey(), synTime(c)) }

// KeepReason says why a connection's spans are kept whatever the
// probability; "" when the probability decides.
func KeepReason(p *path.Path, slow time.Duration) string {
	c := &p.Conn
	if c.Outcome != flow.OutcomeOK && c.Outcome != flow.OutcomeForwarded {
		return string(c.Outcome)
	}
	for _, d := range p.Diagnoses {
		// Client address lost to SNAT and a cross-node hop describe the
		// path every connection of a Cluster-policy Service may take, not
		// a problem: keeping them all would switch sampling off for most
		// traffic of a multi-node cluster.
		if d.Code != path.DiagSNAT && d.Code != path.DiagCrossNode {
			return "diagnosed"
		}
	}
	if slow > 0 && c.Role != flow.RoleForward && c.Role != flow.RoleReject && c.Duration() > slow {
		return "slow"
	}
	return ""
}

// sampler applies the configuration and the Services' overrides.
type sampler struct {
	cfg Sampling
	def Threshold
	// byP caches thresholds of the Services' probabilities (float64 →
	// *Threshold): one per distinct annotation value.
	byP sync.Map
}

func newSampler(cfg Sampling) *sampler {
	return &sampler{cfg: cfg, def: ThresholdFor(cfg.Probability)}
}

// decide returns the threshold p's spans carry, or nil when they are
// sampled out.
func (s *sampler) decide(p *path.Path, tid trace.TraceID) *Threshold {
	if !s.cfg.Enabled {
		return &AlwaysKeep
	}
	th, slow := &s.def, s.cfg.SlowThreshold
	if svc := p.Service; svc != nil {
		if svc.SlowThreshold != nil {
			slow = *svc.SlowThreshold
		}
		if svc.SpanSampling != nil {
			th = s.threshold(*svc.SpanSampling)
		}
	}
	if KeepReason(p, slow) != "" {
		return &AlwaysKeep
	}
	if th.Keep(tid) {
		return th
	}
	return nil
}

func (s *sampler) threshold(p float64) *Threshold {
	if v, ok := s.byP.Load(p); ok {
		return v.(*Threshold)
	}
	t := ThresholdFor(p)
	v, _ := s.byP.LoadOrStore(p, &t)
	return v.(*Threshold)
}

// stampSampler is the SDK sampler: the decision is taken before any span
// starts (sampler.decide), so it records every span it is asked about and
// stamps the threshold carried by the context into the tracestate.
type stampSampler struct{}

func (stampSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	ts := AlwaysKeep.ts
	if v, ok := p.ParentContext.Value(idsKey{}).(ids); ok && v.th != nil {
		ts = v.th.ts
	}
	return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: ts}
}

func (stampSampler) Description() string {
	return "lbpath consistent probability (decided per connection)"
}

// randomFlagContext makes a root span's trace flags carry W3C Level 2's
// "random" flag: the SDK takes a root's flags from the context's span
// context, which has no IDs here and so is no parent.
func randomFlagContext(ctx context.Context) context.Context {
	return trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceFlags: trace.FlagsRandom}))
}

// initSamplingMetrics registers lbpath.agent.spans_sampled_out.
func initSamplingMetrics(m metric.Meter, e *Exporter) error {
	out, err := m.Int64ObservableCounter(MetricSpansSampledOut, metric.WithUnit("{connection}"),
		metric.WithDescription("Connections whose spans the sampler left out (their metrics are recorded)"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricSpansSampledOut, err)
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(out, int64(e.Stats.SampledOut.Load()))
		return nil
	}, out)
	if err != nil {
		return fmt.Errorf("register %s: %w", MetricSpansSampledOut, err)
	}
	return nil
}

// MetricSpansSampledOut counts connections whose spans were sampled out.
const MetricSpansSampledOut = "lbpath.agent.spans_sampled_out"
