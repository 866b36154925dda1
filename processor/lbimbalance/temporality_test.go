package lbimbalance

import (
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
)

// deltaBatch is agentBatch with --metrics-temporality=delta: the values
// are the increase over the export interval ending at `at`.
func deltaBatch(at time.Time, interval time.Duration, ns, svc string, pods []podCounters) pmetric.Metrics {
	md := agentBatch(at, ns, svc, pods)
	rms := md.ResourceMetrics()
	for i := 0; i < rms.Len(); i++ {
		ms := rms.At(i).ScopeMetrics().At(0).Metrics()
		for j := 0; j < ms.Len(); j++ {
			s := ms.At(j).Sum()
			s.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
			for k := 0; k < s.DataPoints().Len(); k++ {
				s.DataPoints().At(k).SetStartTimestamp(pcommon.NewTimestampFromTime(at.Add(-interval)))
			}
		}
	}
	return md
}

// Delta input gives the same figures as cumulative input of the same traffic.
func TestDeltaTemporalityMatchesCumulative(t *testing.T) {
	cum, del := newHarness(t, nil), newHarness(t, nil)
	for k := 1; k <= 3; k++ {
		at := t0.Add(time.Duration(k) * 10 * time.Second)
		cum.consume(agentBatch(at, "shop", "cart", skewedStep(k)))
		del.consume(deltaBatch(at, 10*time.Second, "shop", "cart", skewedStep(1)))
	}
	for _, sig := range []string{"connections", "requests", "bytes"} {
		for _, pod := range []string{"pod-a", "pod-b", "pod-c"} {
			want := cum.value("lbpath.lb.share", svcAttrs("k8s.pod.name", pod, "lbpath.signal", sig))
			near(t, "delta share "+pod+" "+sig, del.value("lbpath.lb.share", svcAttrs("k8s.pod.name", pod, "lbpath.signal", sig)), want, 1e-12)
		}
		want := cum.value("lbpath.lb.cv", svcAttrs("lbpath.signal", sig))
		near(t, "delta cv "+sig, del.value("lbpath.lb.cv", svcAttrs("lbpath.signal", sig)), want, 1e-12)
	}
	if got := del.value("lbpath.lb.hot", svcAttrs("k8s.pod.name", "pod-a")); got != 1 {
		t.Fatalf("delta: pod-a hot = %v, want 1", got)
	}
}

// Scale-out: replica A aggregated shop/cart until it died after step 30;
// the gateway now routes shop/cart to replica B, which has been getting the
// same agents' streams of another Service all along. Until the takeover the
// two pods got 20 connections a step each; from step 31 pod-a gets 30 and
// pod-b 10, so B's window (steps 31-36) must read 0.75 for pod-a.
func TestStreamFirstSeenMidLife(t *testing.T) {
	agentStart := t0.Add(-time.Hour) // agents running long before either replica saw them
	at := func(k int) time.Time { return t0.Add(time.Duration(k) * 10 * time.Second) }
	perStep := func(k int) (a, b float64) {
		if k <= 30 {
			return 20, 20
		}
		return 30, 10
	}
	cumulative := func(k int) []podCounters {
		var a, b float64
		for i := 1; i <= k; i++ {
			da, db := perStep(i)
			a, b = a+da, b+db
		}
		return []podCounters{{pod: "pod-a", node: "n1", conns: a, start: agentStart}, {pod: "pod-b", node: "n2", conns: b, start: agentStart}}
	}
	other := func(k int) []podCounters {
		return []podCounters{{pod: "db-0", node: "n1", conns: float64(5 * k), start: agentStart}, {pod: "db-1", node: "n2", conns: float64(5 * k), start: agentStart}}
	}
	share := func(h *harness) float64 {
		return h.value("lbpath.lb.share", svcAttrs("k8s.pod.name", "pod-a", "lbpath.signal", "connections"))
	}

	t.Run("delta: exact from the first point", func(t *testing.T) {
		b := newHarness(t, nil)
		for k := 31; k <= 36; k++ {
			da, db := perStep(k)
			b.consume(deltaBatch(at(k), 10*time.Second, "shop", "cart", []podCounters{{pod: "pod-a", node: "n1", conns: da}, {pod: "pod-b", node: "n2", conns: db}}))
		}
		near(t, "pod-a share on B", share(b), 0.75, 1e-12)
	})
	t.Run("cumulative, agents new to B: first point is a baseline", func(t *testing.T) {
		b := newHarness(t, nil)
		for k := 31; k <= 36; k++ {
			b.consume(agentBatch(at(k), "shop", "cart", cumulative(k)))
		}
		// step 31 lost (baseline), steps 32-36 exact: still 0.75, no history
		near(t, "pod-a share on B", share(b), 0.75, 1e-12)
	})
	t.Run("cumulative, agents known to B: the stream's history counts (use delta behind a gateway)", func(t *testing.T) {
		b := newHarness(t, nil)
		for k := 1; k <= 30; k++ {
			b.consume(agentBatch(at(k), "shop", "db", other(k)))
		}
		for k := 31; k <= 36; k++ {
			md := agentBatch(at(k), "shop", "db", other(k))
			// one export per agent carries both Services, as the agents send them
			cart := agentBatch(at(k), "shop", "cart", cumulative(k))
			for i := 0; i < cart.ResourceMetrics().Len(); i++ {
				src := cart.ResourceMetrics().At(i).ScopeMetrics().At(0).Metrics()
				dst := md.ResourceMetrics().At(i).ScopeMetrics().At(0).Metrics()
				src.MoveAndAppendTo(dst)
			}
			b.consume(md)
		}
		// A new stream of an agent whose earlier export B saw is new traffic
		// by the cumulative SDK's rules, so B counts pod-a's 600+30 and
		// pod-b's 600+10 of step 31 in full: (630+150)/(630+150+610+50) =
		// 0.54 where the window's own traffic says 0.75.
		near(t, "pod-a share on B", share(b), 780.0/1440, 1e-12)
	})
}
