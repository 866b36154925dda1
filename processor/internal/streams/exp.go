package streams

import (
	"math"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
)

// ExpBuckets holds the non-negative side of a base-2 exponential histogram:
// Counts[i] is the number of observations in (base^(Offset+i),
// base^(Offset+i+1)] with base = 2^(2^-Scale), Zero those in the zero
// bucket. Latencies are never negative, so the negative side is not kept.
//
// Two ExpBuckets can only be added or compared at one scale. Lowering the
// scale by one merges pairs of buckets exactly (bucket i becomes i>>1), so
// the common scale of two histograms is the lower of their scales and no
// observation changes side in the process.
type ExpBuckets struct {
	Scale  int32
	Zero   uint64
	Offset int32
	Counts []uint64
}

// Reset empties b, keeping its backing array.
func (b *ExpBuckets) Reset(scale int32) {
	b.Scale, b.Zero, b.Offset, b.Counts = scale, 0, 0, b.Counts[:0]
}

// Total is the number of observations held.
func (b *ExpBuckets) Total() uint64 {
	n := b.Zero
	for _, c := range b.Counts {
		n += c
	}
	return n
}

// CopyFrom sets b to the positive side and zero count of dp.
func (b *ExpBuckets) CopyFrom(dp pmetric.ExponentialHistogramDataPoint) {
	pos := dp.Positive()
	b.Scale, b.Zero, b.Offset = dp.Scale(), dp.ZeroCount(), pos.Offset()
	b.Counts = resize(b.Counts, pos.BucketCounts().Len())
	for i := range b.Counts {
		b.Counts[i] = pos.BucketCounts().At(i)
	}
	b.trim()
}

// Downscale lowers b's scale to scale (no-op if b is already at or below
// it), merging buckets in place.
func (b *ExpBuckets) Downscale(scale int32) {
	if scale >= b.Scale {
		return
	}
	shift := uint(b.Scale - scale)
	b.Scale = scale
	if len(b.Counts) == 0 {
		b.Offset = 0
		return
	}
	lo := b.Offset >> shift // arithmetic shift: floor for negative indexes too
	out := -1
	for i, c := range b.Counts {
		// j ≤ i, so writing j never overwrites a bucket not yet read
		j := int((b.Offset+int32(i))>>shift - lo)
		if j != out {
			out = j
			b.Counts[j] = 0
		}
		b.Counts[j] += c
	}
	b.Counts = b.Counts[:out+1]
	b.Offset = lo
}

// MaxBuckets bounds the dense range a merge of histograms may hold: twice
// the agent's 160 buckets, so two full SDK histograms merge without losing
// a scale. Without a bound, deltas are the trap: the SDK starts every
// interval's histogram at scale 20, so two intervals whose requests took
// 10 ms and 20 ms, added at that scale, span 2^20 buckets (8 MB per
// histogram; scale-out collectors were OOM-killed by it).
const MaxBuckets = 320

// minScale is the lowest scale OpenTelemetry defines.
const minScale = -10

// CommonScale is the highest scale, at most the lowest of the non-empty
// histograms' scales, at which the union of their ranges spans at most limit
// buckets. Lowering the scale by one halves the span, so at most a few
// steps are taken.
func CommonScale(limit int, hs ...*ExpBuckets) int32 {
	s := int32(math.MaxInt32)
	for _, h := range hs {
		if len(h.Counts) > 0 {
			s = min(s, h.Scale)
		}
	}
	if s == math.MaxInt32 {
		// Only zero buckets: any scale holds them; keep the lowest given.
		for _, h := range hs {
			s = min(s, h.Scale)
		}
		return s
	}
	for ; s > minScale; s-- {
		lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
		for _, h := range hs {
			if len(h.Counts) == 0 {
				continue
			}
			shift := uint(h.Scale - s)
			lo = min(lo, int64(h.Offset>>shift))
			hi = max(hi, int64((h.Offset+int32(len(h.Counts))-1)>>shift)+1)
		}
		if hi-lo <= int64(limit) {
			break
		}
	}
	return s
}

// Add adds o into b. Both must be at one scale (Downscale first).
func (b *ExpBuckets) Add(o *ExpBuckets) {
	b.Zero += o.Zero
	if len(o.Counts) == 0 {
		return
	}
	if len(b.Counts) == 0 {
		b.Offset = o.Offset
		b.Counts = append(b.Counts[:0], o.Counts...)
		return
	}
	b.cover(o.Offset, o.Offset+int32(len(o.Counts)))
	base := int(o.Offset - b.Offset)
	for i, c := range o.Counts {
		b.Counts[base+i] += c
	}
}

// cover widens b's dense range to include bucket indexes [lo, hi).
func (b *ExpBuckets) cover(lo, hi int32) {
	end := b.Offset + int32(len(b.Counts))
	if lo < b.Offset {
		grow := int(b.Offset - lo)
		b.Counts = append(make([]uint64, grow, grow+len(b.Counts)), b.Counts...)
		b.Offset = lo
	}
	if hi > end {
		b.Counts = append(b.Counts, make([]uint64, hi-end)...)
	}
}

// At is the count of bucket index i (0 outside the dense range).
func (b *ExpBuckets) At(i int32) uint64 {
	j := i - b.Offset
	if j < 0 || int(j) >= len(b.Counts) {
		return 0
	}
	return b.Counts[j]
}

// trim drops empty buckets at either end so that sparse SDK output (a wide
// offset range with zeros around the data) costs nothing to keep.
func (b *ExpBuckets) trim() {
	lo, hi := 0, len(b.Counts)
	for lo < hi && b.Counts[lo] == 0 {
		lo++
	}
	for hi > lo && b.Counts[hi-1] == 0 {
		hi--
	}
	if lo == hi {
		b.Counts, b.Offset = b.Counts[:0], 0
		return
	}
	if lo > 0 {
		copy(b.Counts, b.Counts[lo:hi])
	}
	b.Counts = b.Counts[:hi-lo]
	b.Offset += int32(lo)
}

// ExpHistogram writes into dst the increase of a cumulative exponential
// histogram point since the stream's previous point, at the lower of the two
// points' scales (an SDK lowers a stream's scale as its range widens, never
// raises it without a reset). A bucket that shrank, a lower count or a
// changed start time is a reset: the whole point counts. The first point of
// a stream follows the same rule as Sum.
func (t *Tracker) ExpHistogram(key Key, start, ts pcommon.Timestamp, dp pmetric.ExponentialHistogramDataPoint, dst *ExpBuckets) Result {
	dst.CopyFrom(dp)
	earlier := t.touch(start, ts)
	e, known := t.lookup(key)
	if known && stale(e, start, ts) {
		return Skip
	}
	prev := e.exp
	reset := !known || prev == nil || start != e.start || dp.Count() < e.count
	if prev == nil {
		prev = &ExpBuckets{}
		e.exp = prev
	}
	if !reset {
		reset = !subtract(dst, prev)
	}
	if reset {
		dst.CopyFrom(dp)
	}
	prev.CopyFrom(dp)
	e.start, e.ts, e.count = start, ts, dp.Count()
	if !known && !t.newStreamCounts(start, ts, earlier) {
		return Skip
	}
	return Delta
}

// subtract sets cur to cur−prev at their common scale; false (cur then
// undefined) if any bucket of prev exceeds cur's, which only a reset explains.
func subtract(cur, prev *ExpBuckets) bool {
	scale := min(cur.Scale, prev.Scale)
	cur.Downscale(scale)
	var p ExpBuckets
	if prev.Scale != scale {
		p = ExpBuckets{Scale: prev.Scale, Zero: prev.Zero, Offset: prev.Offset, Counts: append([]uint64(nil), prev.Counts...)}
		p.Downscale(scale)
		prev = &p
	}
	if prev.Zero > cur.Zero {
		return false
	}
	cur.Zero -= prev.Zero
	for i, c := range prev.Counts {
		idx := prev.Offset + int32(i)
		if c == 0 {
			continue
		}
		if cur.At(idx) < c {
			return false
		}
		cur.Counts[idx-cur.Offset] -= c
	}
	cur.trim()
	return true
}
