package capture

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Before it loads anything the agent checks that the kernel offers what
// the one required program (on_state) uses, and names what is missing:
// otherwise a missing feature surfaces as a verifier log, or a BTF error
// deep in program loading, and exit status 1.

// BTFPath is where the kernel exposes its own BTF. CO-RE relocations and
// tp_btf attach points are resolved against it.
const BTFPath = "/sys/kernel/btf/vmlinux"

// MinKernel is the oldest mainline release with everything on_state uses:
// tp_btf programs (5.5), BPF ring buffers and their helpers (5.8),
// bpf_skc_to_tcp_sock (5.9) and bpf_get_socket_cookie in tracing programs
// (5.12, the newest of them). The optional programs hook newer tracepoints
// and are left out, each with its reason, where they are missing.
//
// Each of those features is probed, and the probes decide: distributions
// backport BPF features into older version numbers (cilium/ebpf warns
// against deciding from the version). An older version whose probes all
// pass is a warning; with a probe failing, the version explains it.
var MinKernel = KernelVersion{5, 12, 0}

// KernelVersion is a kernel release as major, minor, patch.
type KernelVersion [3]int

func (v KernelVersion) String() string { return fmt.Sprintf("%d.%d", v[0], v[1]) }

// Less reports whether v is older than w.
func (v KernelVersion) Less(w KernelVersion) bool {
	for i := range v {
		if v[i] != w[i] {
			return v[i] < w[i]
		}
	}
	return false
}

// Requirement is one kernel feature the agent cannot run without.
type Requirement struct {
	// What names the feature as the message shows it.
	What string
	// Since is the mainline release that brought it.
	Since KernelVersion
	// Err is why it is missing; nil when present.
	Err error
}

// KernelCheck is what CheckKernel found.
type KernelCheck struct {
	// Release is the kernel's release string (uname -r).
	Release string
	// Version is the release as numbers; zero if it could not be read.
	Version KernelVersion
	// Requirements lists every feature probed, in order. A probe that
	// cannot run without an earlier one (every tp_btf probe needs BTF) is
	// not listed when that one is missing.
	Requirements []Requirement
}

// CheckKernel probes the running kernel for what on_state needs. It
// loads three tiny programs and creates one small map, all closed again
// before it returns.
func CheckKernel() KernelCheck {
	k := KernelCheck{}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		k.Release = unix.ByteSliceToString(uts.Release[:])
	}
	if code, err := features.LinuxVersionCode(); err == nil {
		k.Version = KernelVersion{int(code >> 16), int(code >> 8 & 0xff), int(code & 0xff)}
	}
	btfErr := checkBTF()
	k.Requirements = append(k.Requirements,
		Requirement{What: "kernel BTF at " + BTFPath, Since: KernelVersion{5, 5, 0}, Err: btfErr},
		Requirement{What: "BPF ring buffer maps", Since: KernelVersion{5, 8, 0}, Err: features.HaveMapType(ebpf.RingBuf)},
	)
	if btfErr != nil {
		return k
	}
	// cilium/ebpf's own Tracing probe attaches fentry to bpf_init, which
	// kernels may refuse where tp_btf works (the project's VMs do: fentry
	// loads fail with EPERM), so tp_btf is probed at on_state's own hook.
	tpErr := probeTPBTF()
	k.Requirements = append(k.Requirements, Requirement{What: "tp_btf programs at inet_sock_set_state", Since: KernelVersion{5, 5, 0}, Err: tpErr})
	if tpErr != nil {
		return k
	}
	k.Requirements = append(k.Requirements,
		Requirement{What: "bpf_get_socket_cookie in tp_btf programs", Since: KernelVersion{5, 12, 0}, Err: probeTPBTF(asm.FnGetSocketCookie)},
		Requirement{What: "bpf_skc_to_tcp_sock in tp_btf programs", Since: KernelVersion{5, 9, 0}, Err: probeTPBTF(asm.FnSkcToTcpSock)},
		Requirement{What: "bpf_sk_storage_get in tp_btf programs", Since: KernelVersion{5, 11, 0}, Err: probeTPBTFStorage()},
	)
	return k
}

// probeTPBTFStorage loads a tp_btf program at inet_sock_set_state that
// creates socket local storage on the hook's struct sock *, as on_state
// does for a server socket's request state.
func probeTPBTFStorage() error {
	// Socket storage maps must carry BTF for their key and value.
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SkStorage, KeySize: 4, ValueSize: 8, Flags: unix.BPF_F_NO_PREALLOC,
		Key: &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}, Value: &btf.Int{Name: "u64", Size: 8}})
	if err != nil {
		return fmt.Errorf("socket storage map: %w", err)
	}
	defer m.Close()
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.DWord), // r2 = ctx[0] = sk
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 1), // BPF_SK_STORAGE_GET_F_CREATE
		asm.FnSkStorageGet.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "inet_sock_set_state",
		License: "GPL", Instructions: insns,
	}, ebpf.ProgramOptions{LogLevel: ebpf.LogLevelBranch})
	if err != nil {
		return err
	}
	return p.Close()
}

func checkBTF() error {
	f, err := os.Open(BTFPath)
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("not found: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y, and in a container /sys must be the host's sysfs")
	}
	if err != nil {
		return err
	}
	defer f.Close()
	// BTF starts with the magic 0xeB9F in the kernel's byte order.
	var magic [2]byte
	if _, err := f.Read(magic[:]); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !(magic[0] == 0x9f && magic[1] == 0xeb) && !(magic[0] == 0xeb && magic[1] == 0x9f) {
		return fmt.Errorf("%s is not BTF (starts with % x)", BTFPath, magic)
	}
	return nil
}

// probeTPBTF loads a tp_btf program at inet_sock_set_state that calls each
// helper on the hook's struct sock * (the first argument), as on_state does.
func probeTPBTF(helpers ...asm.BuiltinFunc) error {
	insns := asm.Instructions{asm.LoadMem(asm.R6, asm.R1, 0, asm.DWord)} // r6 = ctx[0] = sk
	for _, h := range helpers {
		insns = append(insns, asm.Mov.Reg(asm.R1, asm.R6), h.Call())
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return())
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "inet_sock_set_state",
		License: "GPL", Instructions: insns,
	}, ebpf.ProgramOptions{LogLevel: ebpf.LogLevelBranch})
	if err != nil {
		return err
	}
	return p.Close()
}

// Missing lists the requirements that are not met.
func (k KernelCheck) Missing() []Requirement {
	var out []Requirement
	for _, r := range k.Requirements {
		if r.Err != nil {
			out = append(out, r)
		}
	}
	return out
}

// Err names every missing requirement with the release that brought it
// and the kernel's reason, on one line; nil when nothing is missing.
func (k KernelCheck) Err() error {
	missing := k.Missing()
	if len(missing) == 0 {
		return nil
	}
	parts := make([]string, len(missing))
	for i, r := range missing {
		parts[i] = fmt.Sprintf("%s (Linux %s): %s", r.What, r.Since, reason(r.Err))
	}
	return fmt.Errorf("kernel %s: the agent cannot use what it needs (Linux %s, or these features backported): %s",
		k.releaseName(), MinKernel, strings.Join(parts, "; "))
}

// Warning is set when the kernel reports a version older than MinKernel
// and still has every feature: worth a line in the log, not a refusal.
func (k KernelCheck) Warning() string {
	if k.Err() != nil || k.Version == (KernelVersion{}) || !k.Version.Less(MinKernel) {
		return ""
	}
	return fmt.Sprintf("kernel %s is older than Linux %s, but every feature the agent needs is present (backported); continuing", k.releaseName(), MinKernel)
}

func (k KernelCheck) releaseName() string {
	if k.Release != "" {
		return k.Release
	}
	if k.Version != (KernelVersion{}) {
		return fmt.Sprintf("%d.%d.%d", k.Version[0], k.Version[1], k.Version[2])
	}
	return "unknown"
}

// reason says what a probe's error means for the user: a refusal to load
// is usually missing privilege, not a missing feature.
func reason(err error) string {
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i] // the verifier log's first line says it
	}
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		return "not supported by this kernel: " + msg
	case errors.Is(err, unix.EPERM):
		// cilium/ebpf suggests memlock for any EPERM; the agent handles
		// memlock itself, and a refusal here is the privilege.
		msg = strings.Replace(msg, " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)", "", 1)
		return msg + " (the agent needs CAP_BPF and CAP_PERFMON)"
	}
	return msg
}
