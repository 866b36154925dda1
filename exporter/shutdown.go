package exporter

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// A pod has terminationGracePeriodSeconds to stop; with the collector
// unreachable, the SDK would spend its own timeouts (10 s per export, then
// retries) flushing, and the kubelet kills the agent before it logs what
// was lost. Shutdown therefore works within the caller's deadline, and
// what the SDK would have dropped silently at that deadline is counted.

// spanLedger follows spans from their start to their export's outcome:
// spans the SDK still holds when Shutdown's deadline passes are dropped
// by it without a word, and only the difference shows them.
type spanLedger struct {
	started atomic.Uint64 // spans started; every one reaches one export
	failed  *atomic.Uint64

	mu      sync.Mutex
	settled uint64 // spans whose export returned, delivered or not
	closed  bool   // close counted the rest; later outcomes are not counted
}

// start counts n spans about to be started. It is called before the first
// of a connection's spans starts, so a connection whose spans are only
// half made when the deadline passes is counted whole.
func (l *spanLedger) start(n int) { l.started.Add(uint64(n)) }

// settle records an export of n spans; err says it failed.
func (l *spanLedger) settle(n int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return // already counted as not flushed
	}
	l.settled += uint64(n)
	if err != nil {
		l.failed.Add(uint64(n))
	}
}

// close counts every started span whose export has not returned as failed
// and returns how many that was.
func (l *spanLedger) close() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	lost := l.started.Load() - l.settled
	l.failed.Add(lost)
	return lost
}

// countingSpans reports every export's outcome to the ledger: spans the
// OTLP exporter could not deliver after its retries are counted failed.
//
// Until the collector has answered once, a refused connection is retried
// within the export's deadline instead of failing: at install the agents
// usually start before the collector's pods, and the collector's Service
// refuses connections until it has an endpoint. Without this a fresh
// install could count its first spans as lost and raise the export alert
// (seen once in e2e TestRealNode). Any other error (TLS, a hung
// collector), and every error after the first success, fails at once.
type countingSpans struct {
	sdktrace.SpanExporter
	ledger   *spanLedger
	answered atomic.Bool
}

// refusedRetry is how long a refused export waits before it is tried again.
const refusedRetry = 500 * time.Millisecond

func (c *countingSpans) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := c.SpanExporter.ExportSpans(ctx, spans)
	for err != nil && !c.answered.Load() && refused(err) {
		select {
		case <-ctx.Done():
		case <-time.After(refusedRetry):
			err = c.SpanExporter.ExportSpans(ctx, spans)
			continue
		}
		break
	}
	if err == nil {
		c.answered.Store(true)
	}
	c.ledger.settle(len(spans), err)
	return err
}

// refused reports a connection the collector's address refused (no
// listener, or a Service without endpoints), as the gRPC and HTTP
// exporters report it.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused")
}

// countingMetrics counts failed metric exports, and every attempt, so
// that Shutdown can tell a final export that failed (counted here) from
// one that never started because the deadline had passed.
type countingMetrics struct {
	sdkmetric.Exporter
	failed   *atomic.Uint64
	attempts atomic.Uint64
}

func (c *countingMetrics) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	c.attempts.Add(1)
	err := c.Exporter.Export(ctx, rm)
	if err != nil {
		c.failed.Add(1)
	}
	return err
}

// Shutdown exports what is queued and flushes both pipelines, all within
// ctx's deadline. What is not delivered by then is counted as failed
// export and logged once: spans of connections still queued and spans
// the SDK still held (spans_failed), and the final metrics export
// (metric_exports_failed). The deadline is the caller's whole budget:
// traces and metrics flush at the same time, not one after the other.
func (e *Exporter) Shutdown(ctx context.Context) error {
	var err error
	e.once.Do(func() { err = e.shutdown(ctx) })
	return err
}

func (e *Exporter) shutdown(ctx context.Context) error {
	close(e.queue)
	drained := make(chan struct{})
	go func() { e.wg.Wait(); close(drained) }()
	var queued, queuedSpans uint64
	select {
	case <-drained:
	case <-ctx.Done():
		// run is blocked handing spans to an SDK that cannot export:
		// stop it taking more, and count what it will never reach.
		e.abandon.Store(true)
		for q := range e.queue {
			queued++
			queuedSpans += uint64(spanCount(&q.p))
		}
		e.Stats.SpansFailed.Add(queuedSpans)
	}
	var wg sync.WaitGroup
	var terr, merr error
	if e.tp != nil {
		wg.Add(1)
		go func() { defer wg.Done(); terr = e.tp.Shutdown(ctx) }()
	}
	metricsFailed := e.Stats.MetricsFailed.Load()
	if e.mp != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			before := e.metrics.attempts.Load()
			merr = e.mp.Shutdown(ctx)
			// A final export that ran counted its own failure; one the
			// deadline prevented from starting is counted here.
			if merr != nil && e.metrics.attempts.Load() == before {
				e.Stats.MetricsFailed.Add(1)
			}
		}()
	}
	wg.Wait()
	lost := e.spans.close()
	metricsLost := e.Stats.MetricsFailed.Load() - metricsFailed
	err := errors.Join(terr, merr)
	switch {
	case queued > 0 || lost > 0 || metricsLost > 0:
		e.log.Warn("otlp export at shutdown: not everything was delivered within the budget; counted as failed export",
			"connections_still_queued", queued, "spans_not_delivered", lost+queuedSpans,
			"metric_exports_not_delivered", metricsLost, "spans_failed", e.Stats.SpansFailed.Load(),
			"metric_exports_failed", e.Stats.MetricsFailed.Load(), "err", err)
	case err != nil:
		e.log.Warn("otlp export at shutdown: everything was delivered, closing the exporter failed", "err", err)
	}
	return err
}
