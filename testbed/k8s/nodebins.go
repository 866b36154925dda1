package k8s

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/lbpath/lbpath/internal/toolcache"
)

// Versions of a real node's runtime and of the cluster DNS, which must match
// testbed/nodebins/go.mod and testbed/corednsbin/go.mod.
const (
	ContainerdVersion = "v2.4.2"
	CoreDNSVersion    = "v1.15.0"
	// corednsBuild names testbed/corednsbin's plugin set in the cache
	// key: a binary cached before a plugin was added must not be taken
	// for the new build. Bump it when the plugin list changes.
	corednsBuild = "chaos"
)

// NodeBinaries are the executables a real node runs besides kubelet and
// kube-proxy (which are in Binaries): containerd with its runc shim and ctr,
// and the CoreDNS binary that becomes the cluster DNS image.
type NodeBinaries struct {
	// ContainerdDir holds containerd, containerd-shim-runc-v2 and ctr; it
	// goes on containerd's PATH, which is how containerd finds the shim.
	ContainerdDir string
	Containerd    string
	Shim          string
	Ctr           string
	CoreDNS       string
}

// tool is one cached build from a tools module.
type tool struct {
	what    string // for logs: "containerd v2.4.2"
	cold    string // expected cold build time, for logs
	module  string // directory name next to this package: "nodebins"
	dir     string // cache dir
	env     []string
	flags   []string // go build flags besides -o
	pkgs    []string // main packages; one binary each, named after the last element
	outputs []string // file names the build writes
}

func containerdTool() tool {
	return tool{
		what: "containerd " + ContainerdVersion, cold: "~3 min", module: "nodebins",
		dir: filepath.Join(toolcache.Dir(), "containerd-"+ContainerdVersion),
		// Static binaries without the snapshotters that need C
		// libraries or kernel features this testbed does not use.
		env:   []string{"CGO_ENABLED=0"},
		flags: []string{"-tags", "no_btrfs no_devmapper no_zfs"},
		pkgs: []string{
			"github.com/containerd/containerd/v2/cmd/containerd",
			"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
			"github.com/containerd/containerd/v2/cmd/ctr"},
		outputs: []string{"containerd", "containerd-shim-runc-v2", "ctr"},
	}
}

func corednsTool() tool {
	return tool{
		what: "CoreDNS " + CoreDNSVersion + " (trimmed)", cold: "~2 min", module: "corednsbin",
		dir: filepath.Join(toolcache.Dir(), "coredns-"+CoreDNSVersion+"-"+corednsBuild),
		// Static: the image has no C library.
		env:     []string{"CGO_ENABLED=0"},
		pkgs:    []string{"github.com/lbpath/lbpath/testbed/corednsbin"},
		outputs: []string{"coredns"},
	}
}

func nodeBinariesIn(containerdDir, corednsDir string) NodeBinaries {
	return NodeBinaries{
		ContainerdDir: containerdDir,
		Containerd:    filepath.Join(containerdDir, "containerd"),
		Shim:          filepath.Join(containerdDir, "containerd-shim-runc-v2"),
		Ctr:           filepath.Join(containerdDir, "ctr"),
		CoreDNS:       filepath.Join(corednsDir, "coredns"),
	}
}

// Missing lists the node binaries that do not exist yet.
func (b NodeBinaries) Missing() []string {
	var out []string
	for _, p := range []string{b.Containerd, b.Shim, b.Ctr, b.CoreDNS} {
		if !isExecutable(p) {
			out = append(out, p)
		}
	}
	return out
}

// FindNodeBinaries returns the cached node binaries without building, or an
// error naming what is missing.
func FindNodeBinaries() (NodeBinaries, error) {
	b := nodeBinariesIn(containerdTool().dir, corednsTool().dir)
	if m := b.Missing(); len(m) > 0 {
		return b, fmt.Errorf("real-node binaries not built: %s missing (run `go run ./testbed/cmd/prebuild -only containerd,coredns`)",
			strings.Join(m, ", "))
	}
	return b, nil
}

// EnsureContainerd builds containerd, its runc shim and ctr from the module
// proxy via testbed/nodebins unless cached, and returns the directory.
func EnsureContainerd(ctx context.Context, log *slog.Logger) (string, error) {
	t := containerdTool()
	return t.dir, t.ensure(ctx, log)
}

// EnsureCoreDNS builds the trimmed CoreDNS of testbed/corednsbin unless
// cached, and returns the binary's path.
func EnsureCoreDNS(ctx context.Context, log *slog.Logger) (string, error) {
	t := corednsTool()
	return filepath.Join(t.dir, "coredns"), t.ensure(ctx, log)
}

// EnsureNodeBinaries builds whatever a real node needs beyond Binaries, the
// two builds side by side.
func EnsureNodeBinaries(ctx context.Context, log *slog.Logger) (NodeBinaries, error) {
	errs := make(chan error, 2)
	go func() { _, err := EnsureContainerd(ctx, log); errs <- err }()
	go func() { _, err := EnsureCoreDNS(ctx, log); errs <- err }()
	err := errors.Join(<-errs, <-errs)
	return nodeBinariesIn(containerdTool().dir, corednsTool().dir), err
}

// ensure builds t unless all its outputs are cached. Concurrent callers
// serialize on a lock file; outputs are built into a scratch dir and renamed,
// so a killed build never leaves a truncated binary behind.
func (t tool) ensure(ctx context.Context, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	if t.cached() {
		return nil
	}
	if err := os.MkdirAll(t.dir, 0o755); err != nil {
		return fmt.Errorf("create binary cache %s: %w", t.dir, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(t.dir, ".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	if t.cached() {
		return nil
	}
	mod, err := toolsModuleDir(t.module)
	if err != nil {
		return err
	}
	log.Info("building "+t.what+" from the Go module proxy (cold: "+t.cold+")", "into", t.dir)
	start := time.Now()
	tmp, err := os.MkdirTemp(t.dir, ".build-")
	if err != nil {
		return fmt.Errorf("create build dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	out := tmp + "/"
	if len(t.pkgs) == 1 {
		out = filepath.Join(tmp, t.outputs[0])
	}
	args := append(append([]string{"build", "-o", out}, t.flags...), t.pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = mod
	cmd.Env = append(append(os.Environ(), "GOWORK=off"), t.env...)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build %s: go %s in %s: %w: %s", t.what, strings.Join(args, " "), mod, err, lastLines(output.String(), 20))
	}
	for _, name := range t.outputs {
		if err := os.Rename(filepath.Join(tmp, name), filepath.Join(t.dir, name)); err != nil {
			return fmt.Errorf("install %s: %w", name, err)
		}
	}
	log.Info("built "+t.what, "took", time.Since(start).Round(time.Second), "dir", t.dir)
	return nil
}

func (t tool) cached() bool {
	for _, name := range t.outputs {
		if !isExecutable(filepath.Join(t.dir, name)) {
			return false
		}
	}
	return true
}

// toolsModuleDir locates testbed/<name> next to this source file (only a
// checkout runs the testbed).
func toolsModuleDir(name string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("locate testbed/%s: no caller information", name)
	}
	dir := filepath.Join(filepath.Dir(file), "..", name)
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("locate testbed/%s: %w", name, err)
	}
	return filepath.Clean(dir), nil
}
