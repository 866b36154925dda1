package deployregression

import (
	"math"
)

// quantile estimates the q-quantile of an explicit-bucket histogram by
// linear interpolation inside the bucket holding the q·N-th observation
// (the same estimate as PromQL's histogram_quantile). The first bucket's
// lower edge is taken as 0 when its upper bound is positive, since these
// are latencies; the overflow bucket has no upper edge, so a quantile that
// falls into it is reported as the highest finite bound. NaN when empty.
func quantile(q float64, bounds []float64, counts []uint64) float64 {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 || len(counts) != len(bounds)+1 {
		return math.NaN()
	}
	rank := q * float64(total)
	var cum float64
	for i, c := range counts {
		if c == 0 {
			continue
		}
		next := cum + float64(c)
		if next >= rank {
			if i == len(bounds) {
				if len(bounds) == 0 {
					return math.NaN()
				}
				return bounds[len(bounds)-1]
			}
			upper := bounds[i]
			lower := 0.0
			if i > 0 {
				lower = bounds[i-1]
			} else if upper <= 0 {
				return upper
			}
			return lower + (upper-lower)*(rank-cum)/float64(c)
		}
		cum = next
	}
	return bounds[len(bounds)-1]
}

// chiSquareHomogeneity tests whether two histograms over the same buckets
// come from the same distribution: Pearson's chi-square test of
// homogeneity on the 2×k table of bucket counts. Adjacent buckets are
// merged until every cell's expected count is at least 5 (Cochran's rule),
// without which the chi-square approximation overstates significance in
// sparse tails. It returns the statistic, the degrees of freedom and the
// p-value; with fewer than two usable cells there is nothing to test and
// the p-value is 1.
func chiSquareHomogeneity(a, b []uint64) (stat float64, df int, p float64) {
	var na, nb float64
	for i := range a {
		na += float64(a[i])
		nb += float64(b[i])
	}
	n := na + nb
	if na == 0 || nb == 0 {
		return 0, 0, 1
	}
	// Expected count of a column with total t in the smaller row is
	// t·min(na,nb)/n; merge until that reaches 5.
	minColumn := 5 * n / math.Min(na, nb)
	type cell struct{ a, b float64 }
	var cells []cell
	var cur cell
	for i := range a {
		cur.a += float64(a[i])
		cur.b += float64(b[i])
		if cur.a+cur.b >= minColumn {
			cells = append(cells, cur)
			cur = cell{}
		}
	}
	if cur.a+cur.b > 0 {
		if len(cells) == 0 {
			cells = append(cells, cur)
		} else {
			last := &cells[len(cells)-1]
			last.a += cur.a
			last.b += cur.b
		}
	}
	if len(cells) < 2 {
		return 0, 0, 1
	}
	for _, c := range cells {
		t := c.a + c.b
		ea, eb := t*na/n, t*nb/n
		stat += (c.a-ea)*(c.a-ea)/ea + (c.b-eb)*(c.b-eb)/eb
	}
	df = len(cells) - 1
	return stat, df, chiSquareSurvival(stat, df)
}

// chiSquareSurvival is P(X ≥ x) for X ~ χ²(df): the regularised upper
// incomplete gamma function Q(df/2, x/2).
func chiSquareSurvival(x float64, df int) float64 {
	if x <= 0 {
		return 1
	}
	return gammaQ(float64(df)/2, x/2)
}

// gammaQ is the regularised upper incomplete gamma function. Below x = a+1
// the power series for P converges fast; above it, the continued fraction
// for Q does (evaluated with the modified Lentz method). Both stop at
// double-precision convergence.
func gammaQ(a, x float64) float64 {
	const (
		eps     = 1e-15
		tiny    = 1e-300
		maxIter = 10000
	)
	lg, _ := math.Lgamma(a)
	prefix := math.Exp(-x + a*math.Log(x) - lg)
	if x < a+1 {
		sum, term := 1/a, 1/a
		for n := 1; n < maxIter; n++ {
			term *= x / (a + float64(n))
			sum += term
			if math.Abs(term) < math.Abs(sum)*eps {
				break
			}
		}
		return math.Max(0, 1-sum*prefix)
	}
	b := x + 1 - a
	c := 1 / tiny
	d := 1 / b
	h := d
	for i := 1; i < maxIter; i++ {
		an := -float64(i) * (float64(i) - a)
		b += 2
		d = an*d + b
		if math.Abs(d) < tiny {
			d = tiny
		}
		c = b + an/c
		if math.Abs(c) < tiny {
			c = tiny
		}
		d = 1 / d
		del := d * c
		h *= del
		if math.Abs(del-1) < eps {
			break
		}
	}
	return prefix * h
}
