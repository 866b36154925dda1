package exporter

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// stitchedShare is the share of connections, with SYNs spread evenly over
// one epoch, whose entry-node and pod-node spans get the same trace ID when
// the pod node's clock is off by skew and its SYN estimate (handshake
// completion minus the sRTT at close) is off by rttErr (sRTT at close
// minus the handshake's RTT).
func stitchedShare(skew, rttErr time.Duration) float64 {
	e, s := twoViews()
	const rtt = 300 * time.Microsecond
	base := time.Unix(1_700_000_000/EpochSeconds*EpochSeconds, 0) // an epoch boundary
	const steps = 6400                                            // one SYN every 10 ms
	same := 0
	for i := range steps {
		syn := base.Add(time.Duration(i) * EpochSeconds * time.Second / steps)
		fwd, srv := e.Conn, s.Conn
		fwd.Start = syn // the entry node confirms the NAT entry as the SYN passes
		// The pod node's clock conversion is shifted by skew: every time it
		// reports is; its handshake completes one RTT after the SYN.
		srv.Start = syn.Add(rtt + skew)
		srv.SRTTMicros = uint32((rtt + rttErr) / time.Microsecond)
		if TraceID(fwd.WireKey(), synTime(&fwd)) == TraceID(srv.WireKey(), synTime(&srv)) {
			same++
		}
	}
	return float64(same) / steps
}

// TestTraceIDUnderClockSkew: a node whose wall clock is off shifts the SYN
// time it derives the trace ID from. The doc comment of TraceID claims a
// miss probability of |skew|/64 s (plus the error of the RTT estimate); this
// measures it: the share of connections whose two nodes' spans still land
// in one trace is 1-|skew|/64 s, and none do from 64 s of skew on.
func TestTraceIDUnderClockSkew(t *testing.T) {
	for _, tc := range []struct {
		skew, rttErr time.Duration
	}{
		{0, 0},
		{time.Millisecond, 0},
		{-time.Millisecond, 0},
		{100 * time.Millisecond, 0},
		{time.Second, 0},
		{-10 * time.Second, 0},
		{32 * time.Second, 0},
		{63 * time.Second, 0},
		{64 * time.Second, 0},
		{-90 * time.Second, 0},
		{0, 20 * time.Millisecond}, // sRTT at close 20 ms above the handshake's RTT
	} {
		t.Run(fmt.Sprintf("skew=%v,rtt_err=%v", tc.skew, tc.rttErr), func(t *testing.T) {
			got := stitchedShare(tc.skew, tc.rttErr)
			off := (tc.skew - tc.rttErr).Seconds()
			want := math.Max(0, 1-math.Abs(off)/EpochSeconds)
			// One grid step (10 ms of 64 s) of slack.
			if math.Abs(got-want) > 1.0/6400+1e-9 {
				t.Errorf("stitched %.5f of connections, want 1-|%.3fs|/64s = %.5f", got, off, want)
			}
			t.Logf("stitched into one trace: %.4f (miss %.4f)", got, 1-got)
		})
	}
}
