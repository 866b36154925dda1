package streams

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
)

// expIndex is the bucket of v at scale: base^i < v ≤ base^(i+1), from the
// definition in the OpenTelemetry data model (computed in the slow, obvious
// way on purpose, as ground truth for Downscale).
func expIndex(v float64, scale int32) int32 {
	return int32(math.Ceil(math.Log2(v)*math.Exp2(float64(scale)))) - 1
}

func bucketsOf(vals []float64, scale int32) ExpBuckets {
	var b ExpBuckets
	b.Scale = scale
	for _, v := range vals {
		one := ExpBuckets{Scale: scale, Offset: expIndex(v, scale), Counts: []uint64{1}}
		b.Add(&one)
	}
	return b
}

func TestDownscaleEqualsBucketingAtTheLowerScale(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var vals []float64
	for range 2000 {
		vals = append(vals, math.Exp(rng.NormFloat64()*3)) // spans ~2^-13..2^13: negative and positive indexes
	}
	for _, from := range []int32{8, 5, 3, 0} {
		for by := int32(0); by <= from+2; by++ {
			got := bucketsOf(vals, from)
			got.Downscale(from - by)
			want := bucketsOf(vals, from-by)
			got.trim()
			want.trim()
			if got.Scale != want.Scale || got.Offset != want.Offset || !slices.Equal(got.Counts, want.Counts) {
				t.Fatalf("scale %d downscaled by %d: offset %d %v, want offset %d %v", from, by, got.Offset, got.Counts, want.Offset, want.Counts)
			}
		}
	}
}

func TestAddWidensRangeBothWays(t *testing.T) {
	a := ExpBuckets{Scale: 2, Zero: 1, Offset: 5, Counts: []uint64{1, 2}}
	b := ExpBuckets{Scale: 2, Zero: 2, Offset: 3, Counts: []uint64{4, 0, 0, 0, 0, 7}}
	a.Add(&b)
	if a.Offset != 3 || !slices.Equal(a.Counts, []uint64{4, 0, 1, 2, 0, 7}) || a.Zero != 3 || a.Total() != 17 {
		t.Fatalf("sum = offset %d %v zero %d", a.Offset, a.Counts, a.Zero)
	}
}

func expPoint(start, ts pcommon.Timestamp, scale int32, zero uint64, offset int32, counts ...uint64) pmetric.ExponentialHistogramDataPoint {
	dp := pmetric.NewExponentialHistogramDataPoint()
	dp.SetStartTimestamp(start)
	dp.SetTimestamp(ts)
	dp.SetScale(scale)
	dp.SetZeroCount(zero)
	dp.Positive().SetOffset(offset)
	dp.Positive().BucketCounts().FromRaw(counts)
	n := zero
	for _, c := range counts {
		n += c
	}
	dp.SetCount(n)
	return dp
}

func TestTrackerExpHistogram(t *testing.T) {
	tr := NewTracker(10, 60)
	var d ExpBuckets
	check := func(step string, r, wantR Result, scale int32, zero uint64, offset int32, counts ...uint64) {
		t.Helper()
		d.trim()
		if r != wantR || (r == Delta && (d.Scale != scale || d.Zero != zero || d.Offset != offset || !slices.Equal(d.Counts, counts))) {
			t.Fatalf("%s: %v scale %d zero %d offset %d %v; want %v scale %d zero %d offset %d %v",
				step, r, d.Scale, d.Zero, d.Offset, d.Counts, wantR, scale, zero, offset, counts)
		}
	}
	check("new, fresh", tr.ExpHistogram(1, 100, 110, expPoint(100, 110, 3, 1, 10, 1, 2), &d), Delta, 3, 1, 10, 1, 2)
	check("growth", tr.ExpHistogram(1, 100, 120, expPoint(100, 120, 3, 1, 10, 2, 2, 0, 5), &d), Delta, 3, 0, 10, 1, 0, 0, 5)
	check("duplicate", tr.ExpHistogram(1, 100, 120, expPoint(100, 120, 3, 1, 10, 2, 2, 0, 5), &d), Skip, 0, 0, 0)
	// the SDK widened its range and lowered the scale: buckets 10,11 → 5
	// (2+2 before), 12,13 → 6 (5 before), 14,15 → 7 (none before)
	check("scale lowered", tr.ExpHistogram(1, 100, 130, expPoint(100, 130, 2, 1, 5, 4, 6, 9), &d), Delta, 2, 0, 6, 1, 9)
	check("reset", tr.ExpHistogram(1, 100, 140, expPoint(100, 140, 2, 0, 5, 1), &d), Delta, 2, 0, 5, 1)
	check("restart", tr.ExpHistogram(1, 135, 150, expPoint(135, 150, 4, 0, 40, 3), &d), Delta, 4, 0, 40, 3)
	if r := tr.ExpHistogram(2, 10, 1000, expPoint(10, 1000, 3, 0, 1, 50), &d); r != Skip {
		t.Fatal("a stream that began long before its first point must be a baseline")
	}
	check("after baseline", tr.ExpHistogram(2, 10, 1010, expPoint(10, 1010, 3, 0, 1, 60), &d), Delta, 3, 0, 1, 10)
}
