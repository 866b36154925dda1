package deployregression

import (
	"testing"
	"time"
)

func within(t *testing.T, what string, got, lo, hi float64) {
	t.Helper()
	if !(got >= lo && got <= hi) {
		t.Fatalf("%s = %v, want in [%v, %v]", what, got, lo, hi)
	}
}

// simulateRollout drives ten minutes of revision aaa, then a rolling update to bbb
// whose latency is factor × aaa's, for `afterSteps` 10 s steps. onStep is
// called after each post-deploy batch with the step number (1-based).
func simulateRollout(h *harness, seed uint64, factor float64, afterSteps int, onStep func(int)) {
	c := newCluster(seed)
	oldPods := revisionPods("aaa", 5, 1, 1)
	newPods := revisionPods("bbb", 5, 1, factor)
	k := 1
	for ; k <= 60; k++ {
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), oldPods))
	}
	for i := 1; i <= afterSteps; i++ {
		// surge one new pod per step while old ones drain
		up := min(i, len(newPods))
		pods := append(append([]podSpec{}, oldPods[up:]...), newPods[:up]...)
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), pods))
		k++
		if onStep != nil {
			onStep(i)
		}
	}
}

func TestDetectsTwiceSlowerRollout(t *testing.T) {
	h := newHarness(t, nil)
	flaggedAt := 0
	simulateRollout(h, 42, 2, 36, func(i int) {
		if v, n := h.find("lbpath.deploy.regression", dep()); flaggedAt == 0 && n == 1 && v == 1 {
			flaggedAt = i
		}
	})
	// Evaluated continuously: flagged within the first two minutes, long
	// before the five-minute window closes.
	if flaggedAt == 0 || flaggedAt > 12 {
		t.Fatalf("regression first flagged at step %d, want within 12 steps of the deploy", flaggedAt)
	}
	if got := h.value("lbpath.deploy.regression", dep()); got != 1 {
		t.Fatalf("final regression = %v, want 1", got)
	}
	t.Logf("flagged at step %d; p=%g; p90 delta=%.3f; p90 before=%.4f after=%.4f",
		flaggedAt, h.value("lbpath.deploy.p_value", dep()), h.value("lbpath.deploy.latency.delta", dep("lbpath.quantile", "p90")),
		h.value("lbpath.deploy.latency.p90", dep("lbpath.revision", "before")), h.value("lbpath.deploy.latency.p90", dep("lbpath.revision", "after")))
	if p := h.value("lbpath.deploy.p_value", dep()); p > 1e-6 {
		t.Fatalf("p-value = %v for a 2x shift over thousands of requests", p)
	}
	within(t, "p90 delta", h.value("lbpath.deploy.latency.delta", dep("lbpath.quantile", "p90")), 1.6, 2.4)
	within(t, "p50 delta", h.value("lbpath.deploy.latency.delta", dep("lbpath.quantile", "p50")), 1.6, 2.4)
	// Log-normal, median 50 ms, sigma 0.5: p90 = 50 ms × e^(0.5·1.2816) ≈ 95 ms.
	within(t, "p90 before", h.value("lbpath.deploy.latency.p90", dep("lbpath.revision", "before", "lbpath.pod_template_hash", "aaa")), 0.075, 0.12)
	within(t, "p90 after", h.value("lbpath.deploy.latency.p90", dep("lbpath.revision", "after", "lbpath.pod_template_hash", "bbb")), 0.15, 0.24)
	within(t, "p90 current", h.value("lbpath.deploy.latency.p90", dep("lbpath.revision", "current", "lbpath.pod_template_hash", "bbb")), 0.13, 0.26)
	within(t, "before samples", h.value("lbpath.deploy.samples", dep("lbpath.revision", "before")), 2700, 3300)
	// deploy at step 61, now at step 96: 350 s
	if got := h.value("lbpath.deploy.time_since", dep()); got != 350 {
		t.Fatalf("time_since = %v, want 350", got)
	}
	if got := h.value("lbpath.deploy.rollouts", dep()); got != 1 {
		t.Fatalf("rollouts = %v, want 1", got)
	}
	if got := h.value("lbpath.deploy.regressions", dep()); got != 1 {
		t.Fatalf("regressions = %v, want 1 (an edge, not one per batch)", got)
	}
	if n := h.logs.FilterMessage("rollout detected").FilterField(stringField("lbpath.pod_template_hash", "bbb")).Len(); n != 1 {
		t.Fatalf("%d rollout log records for bbb, want 1", n)
	}
	if n := h.logs.FilterMessage("latency regression after rollout").Len(); n != 1 {
		t.Fatalf("%d regression log records, want 1", n)
	}
}

func TestEquallyFastRolloutIsNotARegression(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4, 5} {
		h := newHarness(t, nil)
		simulateRollout(h, seed, 1, 36, nil)
		if got := h.value("lbpath.deploy.rollouts", dep()); got != 1 {
			t.Fatalf("seed %d: rollouts = %v, want 1", seed, got)
		}
		// Not once during the window, despite re-evaluating every batch.
		if got := h.value("lbpath.deploy.regressions", dep()); got != 0 {
			t.Fatalf("seed %d: regressions = %v for an equally fast rollout", seed, got)
		}
		if got := h.value("lbpath.deploy.regression", dep()); got != 0 {
			t.Fatalf("seed %d: regression = %v", seed, got)
		}
		t.Logf("seed %d: p=%.3f p90 delta=%.3f", seed, h.value("lbpath.deploy.p_value", dep()), h.value("lbpath.deploy.latency.delta", dep("lbpath.quantile", "p90")))
		within(t, "p90 delta", h.value("lbpath.deploy.latency.delta", dep("lbpath.quantile", "p90")), 0.85, 1.15)
		if p := h.value("lbpath.deploy.p_value", dep()); p < 0.001 {
			t.Fatalf("seed %d: p-value = %v for identical distributions", seed, p)
		}
	}
}

func TestTailOnlyRegressionIsDetected(t *testing.T) {
	// A chi-square test on the buckets sees a slow tail that leaves the
	// median alone: 20% of requests on 2 of 5 new pods are 5x slower.
	h := newHarness(t, nil)
	c := newCluster(9)
	oldPods := revisionPods("aaa", 5, 1, 1)
	for k := 1; k <= 60; k++ {
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), oldPods))
	}
	newPods := revisionPods("bbb", 5, 1, 1)
	newPods[0].factor, newPods[0].rate = 5, 0.5
	newPods[1].factor, newPods[1].rate = 5, 0.5
	newPods[2].rate, newPods[3].rate, newPods[4].rate = 4.0/3, 4.0/3, 4.0/3
	for k := 61; k <= 96; k++ {
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), newPods))
	}
	t.Logf("tail: p=%g p50 delta=%.3f p90 delta=%.3f", h.value("lbpath.deploy.p_value", dep()),
		h.value("lbpath.deploy.latency.delta", dep("lbpath.quantile", "p50")), h.value("lbpath.deploy.latency.delta", dep("lbpath.quantile", "p90")))
	within(t, "p50 delta", h.value("lbpath.deploy.latency.delta", dep("lbpath.quantile", "p50")), 0.9, 1.3)
	if got := h.value("lbpath.deploy.regression", dep()); got != 1 {
		t.Fatalf("regression = %v for a 5x slower 20%% tail", got)
	}
}

func TestNoVerdictBelowMinSamples(t *testing.T) {
	h := newHarness(t, nil)
	c := newCluster(3)
	for k := 1; k <= 60; k++ {
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), revisionPods("aaa", 2, 1, 1)))
	}
	// 0.1 req/s for 30 s: a handful of requests on the new revision.
	for k := 61; k <= 63; k++ {
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), revisionPods("bbb", 1, 0.1, 3)))
	}
	if _, n := h.find("lbpath.deploy.regression", dep()); n != 0 {
		t.Fatal("regression verdict emitted with fewer than min_samples requests")
	}
	within(t, "after samples", h.value("lbpath.deploy.samples", dep("lbpath.revision", "after")), 0, 49)
	if got := h.value("lbpath.deploy.time_since", dep()); got != 20 {
		t.Fatalf("time_since = %v, want 20", got)
	}
}

func TestRevisionsPresentAtStartAreNotRollouts(t *testing.T) {
	h := newHarness(t, nil)
	c := newCluster(4)
	// Collector starts mid-rollout: both revisions in the first batches.
	pods := append(revisionPods("aaa", 2, 1, 1), revisionPods("bbb", 2, 1, 1)...)
	for k := 1; k <= 10; k++ {
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), pods))
	}
	if got := h.value("lbpath.deploy.rollouts", dep()); got != 0 {
		t.Fatalf("rollouts = %v, want 0", got)
	}
	if _, n := h.find("lbpath.deploy.time_since", dep()); n != 0 {
		t.Fatal("time_since emitted without a rollout")
	}
	if n := h.logs.FilterMessage("rollout detected").Len(); n != 0 {
		t.Fatalf("%d rollout log records", n)
	}
}

func TestRetentionExpiresState(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Before, c.After, c.Resolution, c.Retention = 2*time.Minute, time.Minute, 10*time.Second, 3*time.Minute
	})
	c := newCluster(5)
	k := 1
	for ; k <= 12; k++ {
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), revisionPods("aaa", 2, 1, 1)))
	}
	deployedAt := k
	for ; k <= deployedAt+17; k++ { // 170 s after the deploy: still reported
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), revisionPods("bbb", 2, 1, 1)))
	}
	if _, n := h.find("lbpath.deploy.time_since", dep()); n != 1 {
		t.Fatal("rollout not reported within retention")
	}
	for ; k <= deployedAt+25; k++ {
		h.consume(c.step(t0.Add(time.Duration(k)*10*time.Second), revisionPods("bbb", 2, 1, 1)))
	}
	if _, n := h.find("lbpath.deploy.time_since", dep()); n != 0 {
		t.Fatal("rollout still reported after retention")
	}
	if got := h.value("lbpath.deploy.evictions", map[string]string{"lbpath.reason": "stale_revision"}); got != 1 {
		t.Fatalf("stale_revision evictions = %v, want 1 (aaa)", got)
	}
	if got := h.value("lbpath.deploy.evictions", map[string]string{"lbpath.reason": "stale_stream"}); got != 2 {
		t.Fatalf("stale_stream evictions = %v, want 2 (aaa's pods)", got)
	}
}

func TestMaxDeploymentsEvictionCounted(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxDeployments = 2 })
	for i, name := range []string{"a", "b", "c"} {
		c := newCluster(uint64(i))
		c.dep = name
		h.consume(c.step(t0.Add(time.Duration(i+1)*10*time.Second), revisionPods("aaa", 1, 1, 1)))
	}
	if got := h.value("lbpath.deploy.evictions", map[string]string{"lbpath.reason": "deployment_limit"}); got != 1 {
		t.Fatalf("deployment_limit evictions = %v, want 1", got)
	}
}

func TestBoundsMismatchRejected(t *testing.T) {
	h := newHarness(t, nil)
	c := newCluster(6)
	h.consume(c.step(t0.Add(10*time.Second), revisionPods("aaa", 1, 1, 1)))
	md := c.step(t0.Add(20*time.Second), revisionPods("aaa", 1, 1, 1))
	dp := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).Histogram().DataPoints().At(0)
	dp.ExplicitBounds().FromRaw([]float64{0.1, 1})
	dp.BucketCounts().FromRaw([]uint64{1, 2, 3})
	c2 := newCluster(7)
	c2.dep = "other" // keep the batch touching something
	md2 := c2.step(t0.Add(20*time.Second), revisionPods("zzz", 1, 1, 1))
	md2.ResourceMetrics().At(0).CopyTo(md.ResourceMetrics().AppendEmpty())
	h.consume(md)
	if got := h.value("lbpath.deploy.evictions", map[string]string{"lbpath.reason": "bounds_mismatch"}); got != 1 {
		t.Fatalf("bounds_mismatch = %v, want 1", got)
	}
}
