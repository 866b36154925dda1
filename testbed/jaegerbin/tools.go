//go:build tools

// Package jaegerbin pins the Jaeger all-in-one binary the trace e2e test runs
// against. It is its own module because Jaeger pins an older collector and
// client-go than lbpath does.
package jaegerbin

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
