// Command gen writes lbpath's Grafana dashboards to dashboards/json (run
// from the repository root, or via `go generate ./dashboards/...`).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lbpath/lbpath/dashboards"
)

func main() {
	out := flag.String("out", "", "output directory (default: dashboards/json, or json when run by go generate)")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	if out == "" {
		out = filepath.Join("dashboards", "json")
		if os.Getenv("GOFILE") != "" { // go generate runs in the package directory
			out = "json"
		}
	}
	files, err := dashboards.Render()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", out, err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(out, name), data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}
