package capture

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock converts the kernel's CLOCK_MONOTONIC nanoseconds to wall time.
// The offset is sampled once: the agent reports connection times, for which
// a later NTP step of the wall clock matters less than a stable ordering.
type Clock struct {
	offset int64 // wall ns - monotonic ns
}

// NewClock samples the offset between wall time and CLOCK_MONOTONIC.
func NewClock() Clock {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	wall := time.Now().UnixNano()
	return Clock{offset: wall - ts.Nano()}
}

// Time returns the wall time of a monotonic kernel timestamp.
func (c Clock) Time(monoNs uint64) time.Time {
	return time.Unix(0, int64(monoNs)+c.offset)
}

// MonoNow returns CLOCK_MONOTONIC now, in the kernel's unit.
func MonoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
