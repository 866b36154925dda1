package deployregression

import (
	"math"
	"testing"

	"github.com/lbpath/lbpath/processor/internal/streams"
)

// TestAddIntoStaysBounded: delta points arrive at the SDK's scale 20 when
// each interval's requests took one time; adding 10 ms and 20 ms intervals
// into one slot at that scale would hold 2^20 buckets (8 MB; scale-out
// collectors were OOM-killed by it). The slot stays within MaxBuckets, keeps
// every observation, and its median stays within the bound of the scale it
// settled at.
func TestAddIntoStaysBounded(t *testing.T) {
	idx := func(v float64) int32 { return int32(math.Ceil(math.Log2(v)*math.Exp2(20))) - 1 }
	var slot streams.ExpBuckets
	for i := range 100 {
		v := 0.010
		if i%2 == 1 {
			v = 0.020
		}
		addInto(&slot, &streams.ExpBuckets{Scale: 20, Offset: idx(v), Counts: []uint64{1}})
		if len(slot.Counts) > streams.MaxBuckets {
			t.Fatalf("after %d points: %d buckets at scale %d", i+1, len(slot.Counts), slot.Scale)
		}
	}
	if slot.Total() != 100 {
		t.Fatalf("%d observations, want 100", slot.Total())
	}
	bound := math.Exp2(math.Exp2(-float64(slot.Scale+1))) - 1
	for _, q := range []struct{ q, want float64 }{{0.25, 0.010}, {0.75, 0.020}} {
		got := expQuantile(q.q, &slot)
		if rel := math.Abs(got-q.want) / q.want; rel > bound {
			t.Errorf("q%.2f = %.5f s, want %.3f within %.2f%% (scale %d)", q.q, got, q.want, 100*bound, slot.Scale)
		}
	}
}
