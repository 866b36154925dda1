package conntrack

import (
	"time"

	"github.com/lbpath/lbpath/agent/capture"
)

// monoClock reads CLOCK_MONOTONIC without a system call. capture.MonoNow
// is a clock_gettime syscall; per conntrack event it was 11 % of the agent's
// CPU under new-connection load (pprof, docs/PERFORMANCE.md). Go's own
// monotonic reading is the same clock (the runtime reads CLOCK_MONOTONIC
// through the vDSO), so a base taken once plus time.Since is that clock,
// NTP slewing included; the base is the midpoint of two Go readings around
// one kernel reading, within a microsecond.
type monoClock struct {
	base  time.Time
	mono0 uint64
}

func newMonoClock() monoClock {
	t0 := time.Now()
	m := capture.MonoNow()
	t1 := time.Now()
	return monoClock{base: t0.Add(t1.Sub(t0) / 2), mono0: m}
}

// now is CLOCK_MONOTONIC now, in nanoseconds (capture.MonoNow's unit).
func (c monoClock) now() uint64 { return c.mono0 + uint64(time.Since(c.base)) }

// clock is the package's monotonic clock, sampled at start.
var clock = newMonoClock()
