package k8s

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupMounts lists the mount points of every cgroup hierarchy, v1 and v2:
// on a hybrid host (this one) a kubelet's cgroupRoot and its pods' cgroups
// exist in each of them.
func cgroupMounts() ([]string, error) {
	ms, err := cgroupHierarchies()
	var out []string
	for _, m := range ms {
		out = append(out, m.path)
	}
	return out, err
}

// cgroupHierarchy is one mounted cgroup hierarchy.
type cgroupHierarchy struct {
	path string
	v2   bool
	// controllers of a v1 hierarchy, from its mount options (cpu,
	// memory, name=systemd, …).
	controllers []string
}

func cgroupHierarchies() ([]cgroupHierarchy, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("list cgroup mounts: %w", err)
	}
	defer f.Close()
	var out []cgroupHierarchy
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		// post is "<fstype> <source> <super options>".
		fields, typ := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(typ) < 3 || (typ[0] != "cgroup" && typ[0] != "cgroup2") {
			continue
		}
		h := cgroupHierarchy{path: fields[4], v2: typ[0] == "cgroup2"}
		if !h.v2 {
			for _, o := range strings.Split(typ[2], ",") {
				if o != "rw" && o != "ro" {
					h.controllers = append(h.controllers, o)
				}
			}
		}
		out = append(out, h)
	}
	return out, sc.Err()
}

// createCgroup makes rel (e.g. "/lbpath-x-node1") in every hierarchy. A new
// cpuset cgroup starts with no CPUs and no memory nodes, in which nothing can
// run, so the parent's are copied, as systemd does for its slices.
func createCgroup(rel string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		dir := filepath.Join(m, rel)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
			if errors.Is(err, fs.ErrNotExist) {
				continue // not the cpuset hierarchy
			}
			if err != nil {
				return fmt.Errorf("read %s of %s: %w", f, filepath.Dir(dir), err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("set %s of %s: %w", f, dir, err)
			}
		}
	}
	return nil
}

// cgroupTree lists rel and every cgroup below it in hierarchy mount m,
// deepest first, or nothing if rel does not exist there.
func cgroupTree(m, rel string) []string {
	var dirs []string
	_ = filepath.WalkDir(filepath.Join(m, rel), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return dirs
}

// cgroupPIDs is every process in rel's subtree, in any hierarchy.
func cgroupPIDs(mounts []string, rel string) []int {
	seen := map[int]bool{}
	var out []int
	for _, m := range mounts {
		for _, dir := range cgroupTree(m, rel) {
			b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					out = append(out, pid)
				}
			}
		}
	}
	return out
}

// killCgroup SIGKILLs every process in rel's subtree (containers, pause
// processes) and waits until the subtree is empty. The v1 freezer holds them
// still meanwhile, so nothing forks past the kill; frozen tasks die as soon
// as they are thawed.
func killCgroup(rel string, timeout time.Duration) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var freezer string
	for _, m := range mounts {
		if _, err := os.Stat(filepath.Join(m, rel, "freezer.state")); err == nil {
			freezer = filepath.Join(m, rel, "freezer.state")
		}
	}
	if freezer != "" {
		_ = os.WriteFile(freezer, []byte("FROZEN"), 0o644)
	}
	killed := map[int]string{}
	kill := func(pids []int) {
		for _, pid := range pids {
			if st, err := startTime(pid); err == nil {
				killed[pid] = st
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	kill(cgroupPIDs(mounts, rel))
	if freezer != "" {
		_ = os.WriteFile(freezer, []byte("THAWED"), 0o644)
	}
	deadline := time.Now().Add(timeout)
	for {
		left := cgroupPIDs(mounts, rel)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v survive SIGKILL", rel, left)
		}
		kill(left)
		time.Sleep(20 * time.Millisecond)
	}
	// A container's init is reaped by its shim, or by init once the shim
	// is gone; wait, so that no zombie outlives the cleanup.
	return waitReaped(killed, deadline)
}

// removeCgroup removes rel and everything below it from every hierarchy.
// The kernel refuses (EBUSY) while a dying task still counts as a member,
// so it retries until timeout.
func removeCgroup(rel string, timeout time.Duration) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		var errs []error
		for _, m := range mounts {
			for _, dir := range cgroupTree(m, rel) {
				if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, syscall.ENOENT) {
					errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
				}
			}
		}
		if len(errs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(errs...)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cgroupControllers reports which v1 controllers are mounted and which the
// v2 root offers.
func cgroupControllers() (map[string]bool, error) {
	hs, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, h := range hs {
		cs := h.controllers
		if h.v2 {
			b, _ := os.ReadFile(filepath.Join(h.path, "cgroup.controllers"))
			cs = strings.Fields(string(b))
		}
		for _, c := range cs {
			have[c] = true
		}
	}
	return have, nil
}
