// Command render copies deploy/rules/lbpath-rules.yaml into the Helm chart
// (a chart can only read files inside itself) and renders the chart into
// deploy/manifests/*.yaml.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lbpath/lbpath/deploy/manifests"
	"github.com/lbpath/lbpath/deploy/rules"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	dst := filepath.Join(manifests.ChartDir(), "files", rules.File)
	if err := os.WriteFile(dst, rules.YAML, 0o644); err != nil {
		return fmt.Errorf("copy rules into the chart: %w", err)
	}
	helm, err := manifests.Helm(ctx)
	if err != nil {
		return err
	}
	for _, r := range manifests.Renderings {
		out, err := manifests.Render(ctx, helm, r)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(manifests.Dir(), r.File), out, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", r.File, err)
		}
	}
	return nil
}
