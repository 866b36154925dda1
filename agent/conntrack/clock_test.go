package conntrack

import (
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
)

// TestMonoClockIsClockMonotonic: the syscall-free clock reads the kernel's
// CLOCK_MONOTONIC (what the BPF programs stamp and the join compares with):
// between two kernel readings, over 200 ms, it never leaves them by more
// than the sampling error of its base.
func TestMonoClockIsClockMonotonic(t *testing.T) {
	c := newMonoClock()
	for range 20 {
		k0 := capture.MonoNow()
		v := c.now()
		k1 := capture.MonoNow()
		// The base is within a microsecond; 50 µs allows a preemption
		// between the readings on a busy machine.
		if v+50_000 < k0 || v > k1+50_000 {
			t.Fatalf("clock %d outside kernel readings [%d, %d]", v, k0, k1)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func BenchmarkMonoClock(b *testing.B) {
	b.Run("vdso", func(b *testing.B) {
		for range b.N {
			clock.now()
		}
	})
	b.Run("syscall", func(b *testing.B) {
		for range b.N {
			capture.MonoNow()
		}
	})
}
