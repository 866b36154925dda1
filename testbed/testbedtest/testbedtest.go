// Package testbedtest starts testbed clusters from Go tests. It is separate
// from testbed so that binaries using testbed do not link package testing.
package testbedtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/collectorproc"
)

// RequireEnv is the environment variable that turns "cannot run e2e here"
// from a skip into a failure, so CI can never pass by silently skipping.
const RequireEnv = "LBPATH_REQUIRE_E2E"

// Require skips t when the host cannot run a testbed (not root, tools
// missing), or fails it if LBPATH_REQUIRE_E2E=1.
func Require(t testing.TB) {
	t.Helper()
	err := testbed.CheckHost()
	if err == nil {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("e2e required by %s=1 but cannot run: %v", RequireEnv, err)
	}
	t.Skipf("skipping e2e: %v (set %s=1 to make this a failure)", err, RequireEnv)
}

// Required reports whether LBPATH_REQUIRE_E2E=1, i.e. whether a missing
// prerequisite must fail the test (or be provided at any cost, such as a
// long build) instead of skipping it.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Unavailable skips t because a prerequisite beyond CheckHost is missing
// (e.g. prebuilt binaries), or fails it if LBPATH_REQUIRE_E2E=1.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("e2e required by %s=1 but cannot run: %s", RequireEnv, reason)
	}
	t.Skipf("skipping e2e: %s (set %s=1 to make this a failure)", reason, RequireEnv)
}

// DefaultPrefix is the namespace prefix ForTest uses when opt.Prefix is
// empty: stable per test binary, so a rerun cleans up after a crashed run of
// the same package, and distinct between packages, so `go test ./...` running
// packages in parallel does not make them delete each other's clusters.
func DefaultPrefix() string {
	sum := sha256.Sum256([]byte(filepath.Base(os.Args[0])))
	return "lbp" + hex.EncodeToString(sum[:])[:5]
}

// ForTest brings up a cluster for t (see Require for when it skips) and tears
// it down in t.Cleanup, also when the test fails midway. Tests of one
// binary that run in parallel must pass distinct opt.Prefix values, because
// Up first deletes everything under its prefix.
func ForTest(t testing.TB, opt testbed.Options) *testbed.Cluster {
	t.Helper()
	Require(t)
	if opt.Prefix == "" {
		opt.Prefix = DefaultPrefix()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := testbed.Up(ctx, opt)
	if err != nil {
		t.Fatalf("testbed up: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Down(); err != nil {
			t.Errorf("testbed down: %v", err)
		}
	})
	return c
}

// Sink starts an OTLP sink that t stops at its end.
func Sink(t testing.TB) *otlpsink.Sink {
	t.Helper()
	s, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// CollectorBinary builds the lbpath-collector into t's temporary directory.
func CollectorBinary(t testing.TB) string {
	t.Helper()
	bin, err := collectorproc.Build(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
