package main

import (
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/capture"
)

// startupChecks raises RLIMIT_MEMLOCK where the kernel still needs it and
// checks the kernel's features, before anything is loaded. It logs each
// failure, naming what is missing, and says whether the agent can go on
// (if not, it exits 2: the node, not the agent, has to change).
func startupChecks(log *slog.Logger) bool {
	// Memlock first: on the kernels where it matters the probes' own maps
	// and programs are charged to it.
	memErr := rlimit.RemoveMemlock()
	k := capture.CheckKernel()
	kernelErr := k.Err()
	if memlockMatters(memErr, kernelErr, k.Version) {
		log.Error("start-up check failed", "check", "memlock", "err", memlockError(memErr, currentMemlock()))
	}
	if kernelErr != nil {
		log.Error("start-up check failed", "check", "kernel", "err", kernelErr)
	}
	if w := k.Warning(); w != "" {
		log.Warn(w)
	}
	return kernelErr == nil && !memlockMatters(memErr, kernelErr, k.Version)
}

// memlockMatters decides whether a failed RemoveMemlock is the problem.
// Its probe creates a map with the limit at zero and takes a refusal for
// memlock accounting; a process without CAP_BPF is refused too. So when
// the kernel probes fail as well on a kernel that accounts BPF memory to
// the memory cgroup (5.11 on), the refusal was the privilege, which the
// kernel check names, and the memlock message would mislead.
func memlockMatters(memErr, kernelErr error, v capture.KernelVersion) bool {
	if memErr == nil {
		return false
	}
	return kernelErr == nil || v == (capture.KernelVersion{}) || v.Less(capture.KernelVersion{5, 11, 0})
}

// memlockError explains a failed raise. rlimit.RemoveMemlock does nothing
// (and needs no privilege) where BPF memory is charged to the memory
// cgroup (Linux 5.11 on); it only fails where the kernel still charges
// RLIMIT_MEMLOCK and the limit cannot be lifted.
func memlockError(err error, limit string) error {
	return fmt.Errorf("RLIMIT_MEMLOCK: this kernel charges BPF maps and programs to the locked-memory limit "+
		"(no memory-cgroup accounting for them before Linux 5.11) and lifting the limit (%s) failed: %w; "+
		"grant the agent CAP_SYS_RESOURCE, or raise the limit before it starts (ulimit -l unlimited, "+
		"systemd LimitMEMLOCK=infinity, the container runtime's default ulimits). "+
		"Without CAP_BPF the probe behind this decision fails the same way", limit, err)
}

func currentMemlock() string {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &r); err != nil {
		return "unknown"
	}
	f := func(v uint64) string {
		if v == unix.RLIM_INFINITY {
			return "unlimited"
		}
		return fmt.Sprintf("%d KiB", v/1024)
	}
	return "soft " + f(r.Cur) + ", hard " + f(r.Max)
}
