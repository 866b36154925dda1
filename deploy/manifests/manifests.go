// Package manifests holds lbpath's plain Kubernetes manifests rendered from
// the Helm chart deploy/helm/lbpath (committed, so `kubectl apply -f` works
// without Helm) and the code that renders them. A test fails when the
// committed files drift from the chart.
package manifests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/lbpath/lbpath/internal/toolcache"
)

// Renderings are the committed files and the helm template arguments each
// is rendered with. Main is everything a cluster needs; Monitoring holds the
// Prometheus Operator objects, which only apply where its CRDs exist;
// ScaleOutFile is Main with two collector tiers.
var Renderings = []Rendering{
	{File: "lbpath.yaml"},
	{File: "lbpath-monitoring.yaml", Args: []string{
		"--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
		"--show-only", "templates/monitoring.yaml",
	}},
	{File: ScaleOutFile, Args: []string{"--set", "collector.scaleOut.enabled=true"}},
}

// ScaleOutFile is the main manifest in the chart's two-tier mode
// (collector.scaleOut.enabled): gateway Deployment, aggregation StatefulSet.
const ScaleOutFile = "lbpath-scaleout.yaml"

// Rendering is one committed manifest file.
type Rendering struct {
	File string
	Args []string // extra helm template arguments
}

// Release and namespace the committed manifests are rendered for.
const (
	Release   = "lbpath"
	Namespace = "lbpath"
)

// HelmVersion is the Helm release pinned in deploy/helmbin/go.mod.
const HelmVersion = "v3.22.0"

// Dir is this directory's absolute path, so that tools (e.g. a server-side
// dry-run against a real API server) can find the rendered manifests:
// filepath.Join(Dir(), "lbpath.yaml").
func Dir() string {
	_, f, _, ok := runtime.Caller(0)
	if !ok {
		panic("manifests: no caller information")
	}
	return filepath.Dir(f)
}

// ChartDir is the Helm chart's directory.
func ChartDir() string { return filepath.Join(Dir(), "..", "helm", "lbpath") }

// Helm returns a helm binary: $LBPATH_HELM if set, else one cached with the
// test bed's other binaries (internal/toolcache), built from the separate tools module
// deploy/helmbin when missing (Helm's dependencies never enter the product's
// go.mod; a cold build takes about 3 minutes).
func Helm(ctx context.Context) (string, error) {
	if p := os.Getenv("LBPATH_HELM"); p != "" {
		return p, nil
	}
	bin := filepath.Join(toolcache.Dir(), "helm-"+HelmVersion, "helm")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "helm.sh/helm/v3/cmd/helm")
	cmd.Dir = filepath.Join(Dir(), "..", "helmbin")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build helm in %s: %w\n%s", cmd.Dir, err, out)
	}
	return bin, nil
}

// Render runs `helm template` on the chart for r and returns the manifests.
func Render(ctx context.Context, helm string, r Rendering) ([]byte, error) {
	args := append([]string{"template", Release, ChartDir(), "--namespace", Namespace}, r.Args...)
	cmd := exec.CommandContext(ctx, helm, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm template %s: %w: %s", r.File, err, stderr.String())
	}
	return append([]byte("# Rendered from deploy/helm/lbpath by `go run ./deploy/manifests/cmd/render`; do not edit.\n"), out...), nil
}
