// Package testenv decides whether a test that needs root and a real kernel
// can run, and makes sure such tests never skip silently in CI.
package testenv

import (
	"os"
	"testing"
)

// RequireEnv is the variable CI sets so that a missing privilege or kernel
// feature fails the test instead of skipping it.
const RequireEnv = "LBPATH_REQUIRE_E2E"

// Unavailable skips t with reason, or fails it when RequireEnv=1: in CI the
// environment has root and the kernel features, so a skip there is a bug.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1 but the test cannot run: %s", RequireEnv, reason)
	}
	t.Skip(reason)
}

// Root skips (or, in CI, fails) t unless it runs as root.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (eBPF, network namespaces, netfilter)")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		Unavailable(t, "needs kernel BTF at /sys/kernel/btf/vmlinux")
	}
}
