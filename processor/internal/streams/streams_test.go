package streams

import (
	"testing"

	"go.opentelemetry.io/collector/pdata/pcommon"
)

func TestHasherIgnoresAttributeOrder(t *testing.T) {
	a, b, c := pcommon.NewMap(), pcommon.NewMap(), pcommon.NewMap()
	a.PutStr("k8s.pod.name", "p1")
	a.PutStr("lbpath.role", "server")
	b.PutStr("lbpath.role", "server")
	b.PutStr("k8s.pod.name", "p1")
	c.PutStr("k8s.pod.name", "p2")
	c.PutStr("lbpath.role", "server")
	var h Hasher
	if h.Stream(1, "m", a) != h.Stream(1, "m", b) {
		t.Fatal("same attributes in another order hash differently")
	}
	if h.Stream(1, "m", a) == h.Stream(1, "m", c) {
		t.Fatal("different pods share a key")
	}
	if h.Stream(1, "m", a) == h.Stream(2, "m", a) || h.Stream(1, "m", a) == h.Stream(1, "n", a) {
		t.Fatal("resource or metric name not part of the key")
	}
}

func TestTrackerSum(t *testing.T) {
	tr := NewTracker(10, 60)
	steps := []struct {
		start, ts pcommon.Timestamp
		v, want   float64
		res       Result
	}{
		{100, 110, 5, 5, Delta}, // new, fresh: counts in full
		{100, 120, 8, 3, Delta}, // increase
		{100, 120, 8, 0, Skip},  // duplicate
		{100, 115, 7, 0, Skip},  // out of order
		{100, 130, 2, 2, Delta}, // value dropped: reset
		{125, 140, 4, 4, Delta}, // start changed: reset even though 4 > 2
		{125, 150, 4, 0, Delta}, // unchanged
	}
	for i, s := range steps {
		got, res := tr.Sum(1, s.start, s.ts, s.v)
		if got != s.want || res != s.res {
			t.Fatalf("step %d: got (%v, %v), want (%v, %v)", i, got, res, s.want, s.res)
		}
	}
	if _, res := tr.Sum(2, 10, 1000, 50); res != Skip {
		t.Fatal("a stream that began long before its first point must be a baseline")
	}
	if d, _ := tr.Sum(2, 10, 1010, 60); d != 10 {
		t.Fatalf("after baseline delta = %v, want 10", d)
	}
}

func TestTrackerHistogram(t *testing.T) {
	tr := NewTracker(10, 60)
	counts := pcommon.NewUInt64Slice()
	var dst []uint64
	obs := func(start, ts pcommon.Timestamp, c ...uint64) ([]uint64, Result) {
		counts.FromRaw(c)
		var n uint64
		for _, v := range c {
			n += v
		}
		var r Result
		dst, r = tr.Histogram(7, start, ts, n, counts, dst)
		return append([]uint64(nil), dst...), r
	}
	eq := func(a, b []uint64) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	if d, r := obs(100, 110, 1, 2, 3); r != Delta || !eq(d, []uint64{1, 2, 3}) {
		t.Fatalf("first = %v %v", d, r)
	}
	if d, r := obs(100, 120, 2, 2, 5); r != Delta || !eq(d, []uint64{1, 0, 2}) {
		t.Fatalf("delta = %v %v", d, r)
	}
	// total grew but one bucket shrank: only a reset explains that
	if d, r := obs(100, 130, 0, 4, 9); r != Delta || !eq(d, []uint64{0, 4, 9}) {
		t.Fatalf("reset = %v %v", d, r)
	}
	if _, r := obs(100, 130, 0, 4, 9); r != Skip {
		t.Fatal("duplicate not skipped")
	}
}

func TestTrackerBoundedAndSwept(t *testing.T) {
	tr := NewTracker(10, 60)
	for k := range Key(25) {
		tr.Sum(k, 1, pcommon.Timestamp(100+k), 1)
	}
	if tr.Len() > 10 {
		t.Fatalf("tracker holds %d streams, bound 10", tr.Len())
	}
	if tr.EvictedCapacity != 25-uint64(tr.Len()) {
		t.Fatalf("EvictedCapacity = %d, want %d", tr.EvictedCapacity, 25-tr.Len())
	}
	// the newest survive
	if _, r := tr.Sum(24, 1, 200, 2); r != Delta {
		t.Fatal("most recent stream was evicted")
	}
	n := tr.Len()
	tr.Sweep(200)
	if tr.Len() != 1 || tr.EvictedStale != uint64(n-1) {
		t.Fatalf("after sweep: %d streams, %d stale evictions", tr.Len(), tr.EvictedStale)
	}
}

func TestAttrPrefersDataPoint(t *testing.T) {
	dp, res := pcommon.NewMap(), pcommon.NewMap()
	res.PutStr("k8s.node.name", "agent-node")
	res.PutStr("k8s.namespace.name", "shop")
	dp.PutStr("k8s.node.name", "pod-node")
	if got := Attr(dp, res, "k8s.node.name"); got != "pod-node" {
		t.Fatalf("got %q, want the data point's value", got)
	}
	if got := Attr(dp, res, "k8s.namespace.name"); got != "shop" {
		t.Fatalf("got %q, want the resource's value", got)
	}
	if !ServerSide(dp, res) {
		t.Fatal("no role must count as server side")
	}
	dp.PutStr("lbpath.role", "client")
	if ServerSide(dp, res) {
		t.Fatal("client role counted as server side")
	}
}

// A series that appears long after its agent started (a new pod) carries
// the instrument's old start time; if that start is after the tracker's own
// start, its first point is new data, not history.
func TestNewSeriesOfAnOldInstrumentCounts(t *testing.T) {
	tr := NewTracker(100, pcommon.Timestamp(30e9))
	tr.Since = 1000e9
	agentStart := pcommon.Timestamp(1001e9) // agent started after the collector
	if v, r := tr.Sum(Key(1), agentStart, 2000e9, 25); r != Delta || v != 25 {
		t.Errorf("new series of a running agent: %v %v, want its whole value", v, r)
	}
	restartedHistory := pcommon.Timestamp(500e9) // agent older than the collector
	if _, r := tr.Sum(Key(2), restartedHistory, 2000e9, 25); r != Skip {
		t.Errorf("history from before the collector started counted: %v", r)
	}
}

// A cumulative SDK exports every series it holds on every collection: a
// stream absent from an agent's earlier export (same resource, same start
// time) began after it, so its first point counts in full however old the
// agent is. A stream of an agent never seen before is a baseline, and so is
// any new stream once capacity evictions happened (an evicted stream coming
// back must not count its history again).
func TestNewStreamOfAnAgentSeenBeforeCounts(t *testing.T) {
	tr := NewTracker(100, pcommon.Timestamp(30e9))
	tr.Since = 5000e9               // the collector started after the agents
	start := pcommon.Timestamp(1e9) // agents started long ago
	tr.Source(7)
	if _, r := tr.Sum(Key(1), start, 6000e9, 40); r != Skip {
		t.Fatal("first point of an agent never seen must be a baseline")
	}
	if v, r := tr.Sum(Key(2), start, 6010e9, 3); r != Delta || v != 3 {
		t.Fatalf("stream new in the agent's second export: %v %v, want all of 3", v, r)
	}
	tr.Source(8) // another agent, first export
	if _, r := tr.Sum(Key(3), start, 6010e9, 9); r != Skip {
		t.Fatal("another agent's first export must be a baseline")
	}
	tr.Source(7)
	if _, r := tr.Sum(Key(4), start+1, 6020e9, 5); r != Skip {
		t.Fatal("a stream with another start time is another source: baseline")
	}
	small := NewTracker(2, pcommon.Timestamp(30e9))
	small.Since = 5000e9
	small.Source(7)
	small.Sum(Key(1), start, 6000e9, 1)
	small.Sum(Key(2), start, 6010e9, 1)
	small.Sum(Key(3), start, 6020e9, 1) // evicts for capacity
	if small.EvictedCapacity == 0 {
		t.Fatal("no capacity eviction")
	}
	if _, r := small.Sum(Key(1), start, 6030e9, 50); r != Skip {
		t.Fatal("after a capacity eviction a returning stream counted its history")
	}
}
