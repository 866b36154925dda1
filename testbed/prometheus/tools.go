//go:build tools

// This file pins the Prometheus server command in the main module's go.mod
// (the build tag keeps it out of every real build): EnsureBinary builds it
// with `go build github.com/prometheus/prometheus/cmd/prometheus`, and a
// tidy would otherwise drop the modules only that command needs.
package prometheus

import _ "github.com/prometheus/prometheus/cmd/prometheus"
