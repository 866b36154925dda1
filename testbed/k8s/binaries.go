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
	"syscall"
	"time"

	"github.com/lbpath/lbpath/internal/toolcache"
)

// Versions of the components, which must match testbed/k8sbins/go.mod.
const (
	// KubernetesVersion is the version of kube-apiserver,
	// kube-controller-manager, kube-scheduler, kube-proxy and kubelet.
	KubernetesVersion = "v1.37.2"
	// EtcdVersion is the version of etcd.
	EtcdVersion = "v3.7.3"
)

// CacheEnv names the environment variable that moves the binary cache; the
// binaries go to $LBPATH_CACHE/k8s-<version>/.
const CacheEnv = toolcache.Env

// Binaries are the paths of the control-plane executables.
type Binaries struct {
	// Dir holds all of them.
	Dir               string
	Etcd              string
	APIServer         string
	ControllerManager string
	KubeProxy         string
	// Scheduler and Kubelet run only with real nodes (Options.RealNodes).
	Scheduler string
	Kubelet   string
}

// CacheDir is where EnsureBinaries keeps the binaries: outside the repository
// and keyed by version, because a build takes minutes and gigabytes of build
// cache and must survive `git clean`.
func CacheDir() (string, error) {
	return filepath.Join(toolcache.Dir(), "k8s-"+KubernetesVersion), nil
}

// binariesIn names the executables in dir.
func binariesIn(dir string) Binaries {
	return Binaries{
		Dir:               dir,
		Etcd:              filepath.Join(dir, "etcd"),
		APIServer:         filepath.Join(dir, "kube-apiserver"),
		ControllerManager: filepath.Join(dir, "kube-controller-manager"),
		KubeProxy:         filepath.Join(dir, "kube-proxy"),
		Scheduler:         filepath.Join(dir, "kube-scheduler"),
		Kubelet:           filepath.Join(dir, "kubelet"),
	}
}

// kubeCommands are the k8s.io/kubernetes commands EnsureBinaries builds;
// each binary is named after the last element.
var kubeCommands = []string{
	"k8s.io/kubernetes/cmd/kube-apiserver",
	"k8s.io/kubernetes/cmd/kube-controller-manager",
	"k8s.io/kubernetes/cmd/kube-proxy",
	"k8s.io/kubernetes/cmd/kube-scheduler",
	"k8s.io/kubernetes/cmd/kubelet",
}

// Missing lists the binaries that do not exist yet.
func (b Binaries) Missing() []string {
	var out []string
	for _, p := range []string{b.Etcd, b.APIServer, b.ControllerManager, b.KubeProxy, b.Scheduler, b.Kubelet} {
		if !isExecutable(p) {
			out = append(out, p)
		}
	}
	return out
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// FindBinaries returns the cached binaries without building anything, or an
// error naming what is missing; tests use it to skip instead of spending
// minutes on a build.
func FindBinaries() (Binaries, error) {
	dir, err := CacheDir()
	if err != nil {
		return Binaries{}, err
	}
	b := binariesIn(dir)
	if m := b.Missing(); len(m) > 0 {
		return b, fmt.Errorf("kubernetes binaries not built: %s missing (run `go run ./testbed/k8s/cmd/k8sbins`)", strings.Join(m, ", "))
	}
	return b, nil
}

// ModuleDir is the testbed/k8sbins tools module the binaries are built from.
// It is located next to this source file, which only works in a checkout;
// that is the only place the test bed runs.
func ModuleDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("locate testbed/k8sbins: no caller information")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "k8sbins")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("locate testbed/k8sbins: %w", err)
	}
	return filepath.Clean(dir), nil
}

// versionLDFlags stamps the version kubectl and client-go discovery parse;
// an unstamped build reports v0.0.0-master, which kubectl rejects.
func versionLDFlags() string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubernetesVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	return strings.Join([]string{
		"-X k8s.io/component-base/version.gitVersion=" + KubernetesVersion,
		"-X k8s.io/component-base/version.gitMajor=" + major,
		"-X k8s.io/component-base/version.gitMinor=" + minor,
	}, " ")
}

// EnsureBinaries builds whichever of kube-apiserver, kube-controller-manager,
// kube-scheduler, kube-proxy, kubelet and etcd is missing from CacheDir, from the module proxy via
// testbed/k8sbins, and returns their paths. Concurrent callers (parallel test
// binaries) serialize on a lock file, so only one of them builds.
func EnsureBinaries(ctx context.Context, log *slog.Logger) (Binaries, error) {
	if log == nil {
		log = slog.Default()
	}
	dir, err := CacheDir()
	if err != nil {
		return Binaries{}, err
	}
	b := binariesIn(dir)
	if len(b.Missing()) == 0 {
		return b, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return b, fmt.Errorf("create binary cache %s: %w", dir, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return b, err
	}
	defer unlock()
	if len(b.Missing()) == 0 {
		return b, nil // another process built them while we waited
	}
	mod, err := ModuleDir()
	if err != nil {
		return b, err
	}
	log.Info("building the Kubernetes binaries from the Go module proxy (cold: ~8 min)",
		"kubernetes", KubernetesVersion, "etcd", EtcdVersion, "into", dir, "missing", b.Missing())
	start := time.Now()

	// Built into a scratch dir and renamed, so a killed build never leaves
	// a truncated binary that Missing would accept.
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return b, fmt.Errorf("create build dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	// The missing Kubernetes commands in one invocation so that their
	// shared packages compile once and the links run in parallel.
	// -trimpath stays off: it would not share the build cache of an
	// earlier plain build.
	var kube, names []string
	for _, pkg := range kubeCommands {
		if name := filepath.Base(pkg); !isExecutable(filepath.Join(dir, name)) {
			kube, names = append(kube, pkg), append(names, name)
		}
	}
	var steps [][]string
	if len(kube) > 0 {
		steps = append(steps, append([]string{"build", "-o", tmp + "/", "-ldflags", versionLDFlags()}, kube...))
	}
	if !isExecutable(b.Etcd) {
		// The etcd main package's import path ends in /v3, so it
		// needs an explicit output name.
		steps = append(steps, []string{"build", "-o", filepath.Join(tmp, "etcd"), "go.etcd.io/etcd/server/v3"})
		names = append(names, "etcd")
	}
	for _, args := range steps {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = mod
		// The tools module must not pick up a go.work of the checkout.
		cmd.Env = append(os.Environ(), "GOWORK=off")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return b, fmt.Errorf("go %s in %s: %w: %s", strings.Join(args, " "), mod, err, lastLines(out.String(), 20))
		}
	}
	for _, name := range names {
		if err := os.Rename(filepath.Join(tmp, name), filepath.Join(dir, name)); err != nil {
			return b, fmt.Errorf("install %s: %w", name, err)
		}
	}
	log.Info("built the Kubernetes binaries", "took", time.Since(start).Round(time.Second), "dir", dir)
	return b, nil
}

// lockFile takes an exclusive flock on path, polling so that ctx can cancel
// the wait.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// lastLines keeps the end of a long output, where the actual error is.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
