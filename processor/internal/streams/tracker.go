package streams

import (
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
)

// Tracker remembers the last cumulative value of each stream so that the
// next point can be turned into a delta. It is bounded: when MaxStreams is
// reached the least recently seen tenth is dropped (their next point is then
// a baseline, losing at most one interval), and Sweep drops streams that
// stopped reporting. Both are counted. Not safe for concurrent use.
type Tracker struct {
	// Fresh bounds how far a never-seen stream's StartTimestamp may lie
	// before its Timestamp for its whole value to count as a delta. Older
	// streams (typically: the collector restarted) are only baselined, so a
	// restart does not replay all history into the current interval.
	Fresh pcommon.Timestamp
	// Since is when the tracker started. A never-seen stream that started
	// after it is new, not history, whatever its age: an agent's SDK gives
	// every series of an instrument the instrument's start time, so a pod
	// that appears an hour after the agent started has a "old" start time
	// although all its points are new to us.
	Since pcommon.Timestamp
	// MaxStreams bounds the number of streams held.
	MaxStreams int

	// EvictedCapacity counts streams dropped because MaxStreams was reached.
	EvictedCapacity uint64
	// EvictedStale counts streams dropped by Sweep.
	EvictedStale uint64

	m map[Key]*entry
	// sources remembers, per resource (one agent) and start time, the
	// first export seen; cur is the resource whose points are being
	// tracked, last the source entry used most recently (points of one
	// resource nearly always share a start time).
	sources   map[sourceKey]*source
	cur       uint64
	last      *source
	lastKey   sourceKey
	evictions uint64 // capacity evictions so far (generation for sources)
}

type sourceKey struct {
	resource uint64
	start    pcommon.Timestamp
}

type source struct {
	first, last pcommon.Timestamp
	evictions   uint64
}

type entry struct {
	start, ts pcommon.Timestamp
	sum       float64
	count     uint64
	buckets   []uint64
	exp       *ExpBuckets // exponential histograms only
}

// NewTracker returns an empty Tracker.
func NewTracker(maxStreams int, fresh pcommon.Timestamp) *Tracker {
	return &Tracker{Fresh: fresh, Since: pcommon.NewTimestampFromTime(time.Now()), MaxStreams: maxStreams, m: make(map[Key]*entry), sources: make(map[sourceKey]*source)}
}

// Len reports how many streams are held.
func (t *Tracker) Len() int { return len(t.m) }

// Sweep drops streams whose last point is older than before.
func (t *Tracker) Sweep(before pcommon.Timestamp) {
	for k, e := range t.m {
		if e.ts < before {
			delete(t.m, k)
			t.EvictedStale++
		}
	}
	for k, s := range t.sources {
		if s.last < before {
			delete(t.sources, k)
		}
	}
	t.last = nil
}

// Source says which resource (Hasher.Attributes of one agent's resource)
// the following points come from. Call it before each ResourceMetrics'
// points; a tracker that is never told treats all points as one source.
func (t *Tracker) Source(resource uint64) { t.cur = resource }

// touch records a point of the current source with its start time and
// reports whether the same source sent an earlier export with that start
// time. A cumulative SDK exports every series it holds on every
// collection, so a stream missing from that earlier export began after it:
// its whole value is new. The rule is off once streams were evicted for
// capacity since the source was first seen (an evicted stream coming back
// would count its history twice).
func (t *Tracker) touch(start, ts pcommon.Timestamp) bool {
	k := sourceKey{t.cur, start}
	s := t.last
	if s == nil || t.lastKey != k {
		s = t.sources[k]
		if s == nil {
			if len(t.sources) >= t.MaxStreams {
				EvictOldest(t.sources, EvictionBatch(t.MaxStreams), func(s *source) pcommon.Timestamp { return s.last }, nil)
			}
			s = &source{first: ts, last: ts, evictions: t.evictions}
			t.sources[k] = s
		}
		t.last, t.lastKey = s, k
	}
	if ts > s.last {
		s.last = ts
	}
	return s.first < ts && s.evictions == t.evictions
}

// Result says what a point contributed.
type Result int

const (
	// Skip means the point adds nothing: a baseline for an old stream, a
	// duplicate, or an out-of-order point older than the last one seen.
	Skip Result = iota
	// Delta means the returned value is the increase since the previous
	// point (or the whole value of a new or reset stream).
	Delta
)

func (t *Tracker) lookup(key Key) (*entry, bool) {
	e, ok := t.m[key]
	if ok {
		return e, true
	}
	if len(t.m) >= t.MaxStreams {
		t.EvictedCapacity += uint64(EvictOldest(t.m, EvictionBatch(t.MaxStreams), func(e *entry) pcommon.Timestamp { return e.ts }, nil))
		t.evictions++
	}
	e = &entry{}
	t.m[key] = e
	return e, false
}

// newStreamCounts reports whether the first point seen for a stream should
// count in full: when the agent says the stream began recently, or began
// after the tracker did, or the same agent's previous export did not have
// it (seenSource). Otherwise it is a baseline: history from before the
// collector started (or before this replica received the stream) is not
// replayed into the current interval, at the cost of the stream's first
// interval.
func (t *Tracker) newStreamCounts(start, ts pcommon.Timestamp, earlier bool) bool {
	return start != 0 && start <= ts && (ts-start <= t.Fresh || start >= t.Since || earlier)
}

// stale reports whether a point is not newer than the one already held.
// Cumulative points from one stream are ordered; anything else is a retry
// or a reordering and would otherwise look like a reset.
func stale(e *entry, start, ts pcommon.Timestamp) bool {
	return start == e.start && ts <= e.ts
}

// Sum returns the increase of a monotonic cumulative sum.
func (t *Tracker) Sum(key Key, start, ts pcommon.Timestamp, value float64) (float64, Result) {
	earlier := t.touch(start, ts)
	e, known := t.lookup(key)
	if !known {
		e.start, e.ts, e.sum = start, ts, value
		if t.newStreamCounts(start, ts, earlier) {
			return value, Delta
		}
		return 0, Skip
	}
	if stale(e, start, ts) {
		return 0, Skip
	}
	prev := e.sum
	reset := start != e.start || value < prev
	e.start, e.ts, e.sum = start, ts, value
	if reset {
		return value, Delta
	}
	return value - prev, Delta
}

// Histogram writes the per-bucket increase of a cumulative explicit-bucket
// histogram into dst (resized to len(counts)) and returns it. A change in
// the number of buckets is treated as a reset.
func (t *Tracker) Histogram(key Key, start, ts pcommon.Timestamp, count uint64, counts pcommon.UInt64Slice, dst []uint64) ([]uint64, Result) {
	n := counts.Len()
	dst = resize(dst, n)
	earlier := t.touch(start, ts)
	e, known := t.lookup(key)
	if known && stale(e, start, ts) {
		return dst, Skip
	}
	reset := !known || start != e.start || count < e.count || len(e.buckets) != n
	if !reset {
		for i := range n {
			if counts.At(i) < e.buckets[i] {
				reset = true
				break
			}
		}
	}
	for i := range n {
		c := counts.At(i)
		if reset {
			dst[i] = c
		} else {
			dst[i] = c - e.buckets[i]
		}
	}
	e.buckets = resize(e.buckets, n)
	for i := range n {
		e.buckets[i] = counts.At(i)
	}
	e.start, e.ts, e.count = start, ts, count
	if !known && !t.newStreamCounts(start, ts, earlier) {
		return dst, Skip
	}
	return dst, Delta
}

// resize returns s resized to n, reusing its backing array when it can.
func resize(s []uint64, n int) []uint64 {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]uint64, n)
}
