package capture

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHierarchyRootOnly: the UDP capture attaches only at the cgroup v2
// root; a sub-cgroup (what a container sees as its /sys/fs/cgroup) is
// refused, naming why. Uses the host's real cgroup2 mount.
func TestHierarchyRootOnly(t *testing.T) {
	root, err := cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	if err := isHierarchyRoot(root); err != nil {
		t.Fatalf("the host's cgroup2 mount %s: %v", root, err)
	}
	sub := filepath.Join(root, "lbpath-test-subcgroup")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(sub)
	err = isHierarchyRoot(sub)
	if err == nil || !strings.Contains(err.Error(), "not the hierarchy's root") {
		t.Fatalf("sub-cgroup %s: err %v, want a refusal", sub, err)
	}
	if _, err := OpenUDP(UDPConfig{CgroupPath: sub}, nil); err == nil || !strings.Contains(err.Error(), "not the hierarchy's root") {
		t.Fatalf("OpenUDP on a sub-cgroup: err %v, want a refusal", err)
	}
}
