package streams

import (
	"math"
	"testing"
)

// index is the bucket of v at scale (values in (base^i, base^(i+1)]).
func index(v float64, scale int32) int32 {
	return int32(math.Ceil(math.Log2(v)*math.Exp2(float64(scale)))) - 1
}

// TestCommonScaleBoundsTheRange: two one-value histograms at scale 20 (what
// the SDK sends for an interval whose requests all took one time), 10 ms
// and 20 ms, are 2^20 buckets apart at that scale; CommonScale lowers the
// scale until their union fits MaxBuckets, and not one step further.
func TestCommonScaleBoundsTheRange(t *testing.T) {
	a := &ExpBuckets{Scale: 20, Offset: index(0.010, 20), Counts: []uint64{1}}
	b := &ExpBuckets{Scale: 20, Offset: index(0.020, 20), Counts: []uint64{1}}
	s := CommonScale(MaxBuckets, a, b)
	span := func(s int32) int64 {
		return int64(b.Offset>>uint(20-s)) - int64(a.Offset>>uint(20-s)) + 1
	}
	if span(s) > MaxBuckets {
		t.Fatalf("scale %d spans %d buckets, more than %d", s, span(s), MaxBuckets)
	}
	if span(s+1) <= MaxBuckets {
		t.Fatalf("scale %d spans %d: scale %d would have fit too (%d)", s, span(s), s+1, span(s+1))
	}
	a.Downscale(s)
	b.Downscale(s)
	a.Add(b)
	if len(a.Counts) > MaxBuckets || a.Total() != 2 {
		t.Fatalf("merged: %d buckets, %d observations", len(a.Counts), a.Total())
	}
	// Close ranges keep the lower of the two scales.
	c := &ExpBuckets{Scale: 5, Offset: index(0.010, 5), Counts: []uint64{1, 2, 3}}
	d := &ExpBuckets{Scale: 4, Offset: index(0.011, 4), Counts: []uint64{1}}
	if got := CommonScale(MaxBuckets, c, d); got != 4 {
		t.Fatalf("close ranges: scale %d, want 4", got)
	}
	// Empty histograms do not count.
	if got := CommonScale(MaxBuckets, c, &ExpBuckets{Scale: 20}); got != 5 {
		t.Fatalf("with an empty one: scale %d, want 5", got)
	}
}
