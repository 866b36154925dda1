package capture

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/lbpath/lbpath/internal/testenv"
)

// TestCheckKernelHere: on this kernel (6.18 with BTF) every requirement is
// probed for real and present, so the agent starts; the probes load and
// unload for real (no program is left behind: each is closed).
func TestCheckKernelHere(t *testing.T) {
	testenv.Root(t)
	k := CheckKernel()
	if err := k.Err(); err != nil {
		t.Fatalf("this kernel has everything on_state uses, yet: %v", err)
	}
	if len(k.Requirements) != 6 {
		t.Errorf("probed %d requirements, want 6 (BTF, ring buffer, tp_btf, three helpers): %+v", len(k.Requirements), k.Requirements)
	}
	if k.Version.Less(MinKernel) || k.Release == "" {
		t.Errorf("version %v release %q", k.Version, k.Release)
	}
	if w := k.Warning(); w != "" {
		t.Errorf("warning on a current kernel: %s", w)
	}
}

// TestProbeTPBTFRefusesAMissingHelper: the helper probe really fails for a
// helper tracing programs cannot call — the same verifier answer an older
// kernel gives for bpf_get_socket_cookie — so a probe that passes means
// the helper is there.
func TestProbeTPBTFRefusesAMissingHelper(t *testing.T) {
	testenv.Root(t)
	err := probeTPBTF(99999) // no such helper
	if err == nil {
		t.Fatal("probe accepted a helper that does not exist")
	}
	if !strings.Contains(err.Error(), "invalid func") {
		t.Errorf("probe error %q does not carry the verifier's reason", err)
	}
}

// The decisions below are for kernels this machine cannot be: an old
// version, no ring buffer, a helper missing, no BPF privilege. A kernel
// cannot be swapped under a test, so the probe results are given and the
// message and the decision are checked.
func TestKernelCheckMessages(t *testing.T) {
	present := func() KernelCheck {
		return KernelCheck{Release: "6.1.0-test", Version: KernelVersion{6, 1, 0}, Requirements: []Requirement{
			{What: "kernel BTF at " + BTFPath, Since: KernelVersion{5, 5, 0}},
			{What: "BPF ring buffer maps", Since: KernelVersion{5, 8, 0}},
			{What: "tp_btf programs at inet_sock_set_state", Since: KernelVersion{5, 5, 0}},
			{What: "bpf_get_socket_cookie in tp_btf programs", Since: KernelVersion{5, 12, 0}},
			{What: "bpf_skc_to_tcp_sock in tp_btf programs", Since: KernelVersion{5, 9, 0}},
		}}
	}
	if err := present().Err(); err != nil {
		t.Fatalf("nothing missing, yet: %v", err)
	}

	// 5.10 (a long-term release): the socket-cookie helper is missing.
	k := present()
	k.Release, k.Version = "5.10.0-lts", KernelVersion{5, 10, 0}
	k.Requirements[3].Err = fmt.Errorf("load program: %w", errors.New("invalid argument: program of this type cannot use helper bpf_get_socket_cookie#46\nverifier log line 2"))
	msg := errString(k.Err())
	for _, want := range []string{"kernel 5.10.0-lts", "Linux 5.12", "bpf_get_socket_cookie in tp_btf programs (Linux 5.12)", "cannot use helper"} {
		if !strings.Contains(msg, want) {
			t.Errorf("5.10 message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "verifier log line 2") || strings.Contains(msg, "ring buffer") {
		t.Errorf("message has more than the missing feature's reason:\n%s", msg)
	}

	// No ring buffer (before 5.8): named as not supported.
	k = present()
	k.Version = KernelVersion{5, 4, 0}
	k.Requirements[1].Err = fmt.Errorf("detect support for RingBuf: %w", ebpf.ErrNotSupported)
	if msg := errString(k.Err()); !strings.Contains(msg, "BPF ring buffer maps (Linux 5.8): not supported by this kernel") {
		t.Errorf("ring buffer message:\n%s", msg)
	}

	// Without BPF privilege the probes fail with EPERM: the message says
	// which capabilities, not that the kernel is too old.
	k = present()
	k.Requirements[1].Err = fmt.Errorf("create map: %w", syscall.EPERM)
	if msg := errString(k.Err()); !strings.Contains(msg, "CAP_BPF and CAP_PERFMON") {
		t.Errorf("EPERM message:\n%s", msg)
	}

	// A 4.18 kernel with everything backported (as distributions do): a
	// warning, not a refusal.
	k = present()
	k.Release, k.Version = "4.18.0-553.el8", KernelVersion{4, 18, 0}
	if err := k.Err(); err != nil {
		t.Errorf("backported kernel refused: %v", err)
	}
	if w := k.Warning(); !strings.Contains(w, "4.18.0-553.el8") || !strings.Contains(w, "5.12") {
		t.Errorf("backported kernel warning: %q", w)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
