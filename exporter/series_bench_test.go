package exporter

import (
	"context"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
)

// churnRound is how many pods live and die between two collections.
const churnRound = 1000

// BenchmarkSeriesChurn: pods are created and deleted, a round of
// churnRound at a time; each pod serves four connections (two outcomes,
// a forward record, one without RTT: three connection sets) and five
// requests through the real exporter and OTLP/gRPC into a receiver on
// loopback, then never again. Each round ends with a collection that
// stands for one metric interval (1 h on the series clock; series expire
// after 2 h). One op is one pod's life. Reported: heap in use after GC at
// the second round, at its largest and at the end, the process's RSS at
// the end (test binary and receiver included), and the series
// lbpath.connections exported at their most and at the last round.
// "cumulative" and "delta" raise --max-series-per-metric out of the way:
// expiry alone keeps them flat. "noexpiry" is cumulative with an expiry
// longer than the run and the default limit: what the SDK alone would
// keep, bounded only by the limit, every later pod folded into overflow.
func BenchmarkSeriesChurn(b *testing.B) {
	for _, tc := range []struct {
		name   string
		temp   string
		expiry time.Duration
		max    int
	}{
		{"cumulative", TemporalityCumulative, 2 * time.Hour, 1 << 20},
		{"delta", TemporalityDelta, 0, 1 << 20},
		{"noexpiry", TemporalityCumulative, 1 << 20 * time.Hour, DefaultMaxSeries},
	} {
		b.Run(tc.name, func(b *testing.B) { benchChurn(b, tc.temp, tc.expiry, tc.max) })
	}
}

func benchChurn(b *testing.B, temp string, expiry time.Duration, maxSeries int) {
	sink := startSink(b)
	sink.Discard() // the receiver shares the heap: keep only counts
	clk := &fakeClock{t: t0}
	e := seriesExporter(b, sink, func(c *Config) {
		c.Temporality, c.SeriesExpiry, c.MaxSeries, c.now = temp, expiry, maxSeries, clk.now
	})
	var heap2, heapMax, seriesMax, seriesLast int64
	rounds := 0
	collect := func() {
		clk.add(time.Hour)
		if err := e.ForceFlush(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer() // the GCs and heap reading below are not the agent's
		defer b.StartTimer()
		rounds++
		seriesLast = e.Series()[mConnections].Series
		seriesMax = max(seriesMax, seriesLast)
		h := heapInUse()
		if rounds == 2 {
			heap2 = h
		}
		heapMax = max(heapMax, h)
		b.Logf("round %d: heap %.1f MiB, %d connection series, %d resets, overflow %d",
			rounds, float64(h)/(1<<20), seriesLast, e.SeriesResets(), e.Series()[mConnections].Overflow)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		churnPod(e, i)
		if i%churnRound == churnRound-1 {
			collect()
		}
	}
	b.StopTimer()
	heapLast := heapInUse()
	b.ReportMetric(float64(heap2)/(1<<20), "heap-round2-MiB")
	b.ReportMetric(float64(max(heapMax, heapLast))/(1<<20), "heap-max-MiB")
	b.ReportMetric(float64(heapLast)/(1<<20), "heap-last-MiB")
	b.ReportMetric(float64(rssBytes())/(1<<20), "rss-MiB")
	b.ReportMetric(float64(seriesMax), "series-max")
	b.ReportMetric(float64(seriesLast), "series-last")
	b.ReportMetric(float64(e.SeriesResets()), "resets")
	b.ReportMetric(float64(rounds), "rounds")
}

// churnPod is one pod's life: created, four connections and five
// requests, never seen again.
func churnPod(e *Exporter, i int) {
	p := &kube.Pod{Namespace: "churn", Name: "web-" + strconv.Itoa(i), Node: "node1", Deployment: "web",
		ReplicaSet: "web-" + strconv.Itoa(i/churnRound), TemplateHash: strconv.Itoa(i / churnRound)}
	ok := serverPath(p, time.Duration(1+i%100)*time.Millisecond)
	e.Path(ok)
	reset := serverPath(p, 3*time.Millisecond)
	reset.Conn.Outcome, reset.Conn.SRTTMicros = flow.OutcomeReset, 0
	e.Path(reset)
	fwd, _ := twoViews()
	fwd.Pod = p
	e.Path(&fwd)
	for j := range 5 {
		e.Request(&path.Request{Req: flow.Request{Latency: time.Duration(1+(i*7+j*13)%100) * time.Millisecond}, Pod: p, Service: svc})
	}
}

// BenchmarkSeriesMemory: the heap one attribute set costs while its series
// are held, for each histogram kind: a server connection set
// (lbpath.connections, .connection.duration, .rtt, .retransmits and two
// lbpath.bytes series) or a request set (lbpath.requests,
// .request.duration), every histogram filled with 50 values over
// 1–100 ms (≈107 of the 160 buckets at scale 4), plus lbpath's table entry.
// One op is one set; the limit is raised so that none overflows. This is
// what --max-series-per-metric bounds per family.
func BenchmarkSeriesMemory(b *testing.B) {
	for _, kind := range []string{HistogramExponential, HistogramExplicit} {
		for _, fam := range []string{"connection", "request"} {
			b.Run(kind+"/"+fam, func(b *testing.B) { benchSeriesMemory(b, kind, fam == "request") })
		}
	}
}

func benchSeriesMemory(b *testing.B, kind string, request bool) {
	sink := startSink(b)
	sink.Discard()
	e := seriesExporter(b, sink, func(c *Config) { c.LatencyHistogram, c.MaxSeries = kind, b.N+1 })
	before := heapInUse()
	b.ResetTimer()
	for i := range b.N {
		p := &kube.Pod{Namespace: "mem", Name: "web-" + strconv.Itoa(i), Node: "node1", Deployment: "web"}
		for j := range 50 {
			// Log-spaced, as real latencies spread over buckets.
			d := time.Duration(float64(time.Millisecond) * math.Pow(100, float64(j)/49))
			if request {
				e.Request(&path.Request{Req: flow.Request{Latency: d}, Pod: p, Service: svc})
				continue
			}
			sp := serverPath(p, d)
			sp.Conn.SRTTMicros = uint32(d.Microseconds())
			e.Path(sp)
		}
	}
	b.StopTimer()
	after := heapInUse()
	for _, c := range e.Series() {
		if c.Overflow != 0 {
			b.Fatalf("%s: %d overflowed", c.Metric, c.Overflow)
		}
	}
	b.ReportMetric(float64(after-before)/float64(b.N), "heap-B/set")
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// rssBytes is the process's resident set from /proc (0 where unreadable).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
