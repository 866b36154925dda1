package deployregression

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestChiSquareSurvivalKnownValues(t *testing.T) {
	tests := []struct {
		x    float64
		df   int
		want float64
	}{
		{3.841458820694124, 1, 0.05}, // textbook critical values
		{6.634896601021214, 1, 0.01},
		{23.209251158954356, 10, 0.01},
		{5, 2, math.Exp(-2.5)}, // χ²(2) is exponential: closed form
		{0.5, 2, math.Exp(-0.25)},
		{124.342113404, 100, 0.05},
		{0, 3, 1},
	}
	for _, tt := range tests {
		if got := chiSquareSurvival(tt.x, tt.df); math.Abs(got-tt.want) > 1e-8 {
			t.Errorf("Q(χ²=%v, df=%d) = %v, want %v", tt.x, tt.df, got, tt.want)
		}
	}
}

func TestQuantileInterpolates(t *testing.T) {
	bounds := []float64{0.1, 0.2, 0.4}
	// 100 in (0,0.1], 100 in (0.1,0.2], 0 in (0.2,0.4], 0 overflow.
	counts := []uint64{100, 100, 0, 0}
	if got := quantile(0.5, bounds, counts); math.Abs(got-0.1) > 1e-12 {
		t.Errorf("p50 = %v, want 0.1", got)
	}
	if got := quantile(0.75, bounds, counts); math.Abs(got-0.15) > 1e-12 {
		t.Errorf("p75 = %v, want 0.15", got)
	}
	if got := quantile(0.25, bounds, counts); math.Abs(got-0.05) > 1e-12 {
		t.Errorf("p25 = %v, want 0.05 (first bucket starts at 0)", got)
	}
	if got := quantile(0.99, bounds, []uint64{1, 0, 0, 99}); got != 0.4 {
		t.Errorf("p99 in overflow = %v, want highest bound 0.4", got)
	}
	if got := quantile(0.5, bounds, []uint64{0, 0, 0, 0}); !math.IsNaN(got) {
		t.Errorf("empty = %v, want NaN", got)
	}
}

// TestChiSquareFalsePositiveRate checks calibration: under the null
// (both sides drawn from one log-normal latency distribution) about alpha
// of the tests must reject, and a 2x shift must be rejected every time.
func TestChiSquareFalsePositiveRate(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	bounds := defaultTestBounds
	const trials, n = 1000, 400
	rejectNull, rejectShift := 0, 0
	for range trials {
		a := sampleHist(rng, bounds, n, 0.05, 1)
		b := sampleHist(rng, bounds, n, 0.05, 1)
		if _, _, p := chiSquareHomogeneity(a, b); p < 0.01 {
			rejectNull++
		}
		c := sampleHist(rng, bounds, n, 0.05, 2)
		if _, _, p := chiSquareHomogeneity(a, c); p < 0.01 {
			rejectShift++
		}
	}
	t.Logf("null rejected %d/%d, 2x shift rejected %d/%d", rejectNull, trials, rejectShift, trials)
	// Binomial(1000, 0.01): mean 10, sd ≈ 3.1; 25 is ~5 sd out.
	if rejectNull > 25 {
		t.Errorf("null rejected %d/%d times at alpha=0.01", rejectNull, trials)
	}
	if rejectShift != trials {
		t.Errorf("2x shift rejected only %d/%d times", rejectShift, trials)
	}
}
