package k8s

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// HostSnapshot is what a testbed with real nodes could leave behind on the
// host, as sorted lines per kind: its processes,
// network namespaces, mounts, cgroups, the host-wide sysctls that the
// kubelet and kube-proxy set, the host namespace's firewall rules, links and
// routes, and the fixed paths the node components write by default. Two
// snapshots, before Up and after Down, must be equal.
type HostSnapshot map[string][]string

// hostSysctls are host-wide (or host-namespace) sysctls one of the node
// components might change.
var hostSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
	"net/netfilter/nf_conntrack_max", "net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
	"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
	"net/ipv4/ip_unprivileged_port_start", "net/ipv4/ping_group_range",
}

// fixedPaths are where kubelet, containerd, runc and the CNI plugins write
// when not told otherwise.
var fixedPaths = []string{
	"/var/lib/kubelet", "/var/lib/containerd", "/var/lib/cni", "/var/lib/nri", "/run/containerd",
	"/run/runc", "/run/nri", "/run/cni", "/var/log/pods", "/var/log/containers", "/opt/containerd",
	"/opt/cni", "/etc/cni", "/etc/containerd", "/etc/kubernetes", "/usr/libexec/kubernetes",
	"/var/run/netns",
}

// TakeHostSnapshot records the host's state for the cluster with this
// prefix. Other programs' network namespaces (and their mounts under
// /run/netns) are left out: tests of other packages may create them at the
// same time.
func TakeHostSnapshot(prefix string) (HostSnapshot, error) {
	s := HostSnapshot{}
	s["process"] = snapProcesses(prefix)
	ns, err := snapNetns(prefix)
	if err != nil {
		return nil, err
	}
	s["netns"] = ns
	if s["mount"], err = snapMounts(prefix); err != nil {
		return nil, err
	}
	if s["cgroup"], err = snapCgroups(); err != nil {
		return nil, err
	}
	for _, k := range hostSysctls {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			b = []byte("(" + err.Error() + ")")
		}
		s["sysctl"] = append(s["sysctl"], k+"="+strings.TrimSpace(string(b)))
	}
	for _, p := range fixedPaths {
		if _, err := os.Lstat(p); err == nil {
			s["path"] = append(s["path"], p)
		}
	}
	for kind, cmd := range map[string][]string{
		"iptables":  {"iptables-save"},
		"ip6tables": {"ip6tables-save"},
		"nft":       {"nft", "list", "ruleset"},
		"link":      {"ip", "-o", "link", "show"},
		"addr":      {"ip", "-o", "addr", "show"},
		"route":     {"ip", "route", "show", "table", "all"},
	} {
		out, err := exec.Command(cmd[0], cmd[1:]...).Output()
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %s: %w", kind, strings.Join(cmd, " "), err)
		}
		s[kind] = normalizeLines(kind, out)
	}
	for k := range s {
		slices.Sort(s[k])
	}
	return s, nil
}

var (
	// iptables-save's comments carry timestamps, chains their counters.
	counters = regexp.MustCompile(`\[\d+:\d+\]`)
	// Link lines carry traffic-dependent state such as the qdisc's
	// backlog, which is not ours to keep; the name, flags and kind are.
	linkState = regexp.MustCompile(`\s+(qlen \d+|link/\S+ \S+ brd \S+|state \S+)`)
)

func normalizeLines(kind string, out []byte) []string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") {
			continue
		}
		l = counters.ReplaceAllString(l, "")
		if kind == "link" {
			l = linkState.ReplaceAllString(l, "")
		}
		if kind == "addr" {
			// valid_lft/preferred_lft of autoconfigured addresses count down.
			if i := strings.Index(l, "\\"); i >= 0 {
				l = l[:i]
			}
		}
		lines = append(lines, strings.TrimSpace(l))
	}
	return lines
}

func ours(netnsName, prefix string) bool {
	return strings.HasPrefix(netnsName, prefix+"-") || strings.HasPrefix(netnsName, "cni-")
}

// snapProcesses lists the cluster's processes: those whose command line
// names its state dirs (control plane, kube-proxies, kubelets, containerd,
// shims, runc, the mount-namespace holders) and those in its nodes' cgroups
// (containers). Other programs' Kubernetes binaries, e.g. another package's
// test control plane, are not ours.
func snapProcesses(prefix string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	markers := [][]byte{[]byte(nodesDir(prefix) + "/"), []byte("lbpath-k8s-" + prefix + "/")}
	cgroup := []byte(cgroupRootOf(prefix, ""))
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		cgroups, _ := os.ReadFile(filepath.Join(dir, "cgroup"))
		if !bytes.Contains(cgroups, cgroup) && !slices.ContainsFunc(markers, func(m []byte) bool { return bytes.Contains(cmdline, m) }) {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		out = append(out, e.Name()+" "+strings.TrimSpace(string(comm)))
	}
	return out
}

func snapNetns(prefix string) ([]string, error) {
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("snapshot netns: %w", err)
	}
	var out []string
	for _, e := range entries {
		if ours(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// snapMounts keeps each mount's point, type, source and options (not the
// IDs, which the kernel reuses).
func snapMounts(prefix string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("snapshot mounts: %w", err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		pre, post, _ := strings.Cut(l, " - ")
		f := strings.Fields(pre)
		if len(f) < 6 {
			continue
		}
		point := f[4]
		if dir, name := filepath.Split(point); (dir == "/run/netns/" || dir == "/var/run/netns/") && !ours(name, prefix) {
			continue
		}
		out = append(out, point+" "+f[5]+" "+post)
	}
	return out, nil
}

func snapCgroups() ([]string, error) {
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, m := range mounts {
		_ = filepath.WalkDir(m, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				set[p] = true
			}
			return nil
		})
	}
	return slices.Sorted(maps.Keys(set)), nil
}

// Diff lists what differs between s (before) and after, one line per
// entry that appeared (+) or disappeared (-).
func (s HostSnapshot) Diff(after HostSnapshot) []string {
	var out []string
	kinds := slices.Sorted(maps.Keys(s))
	for k := range after {
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	for _, k := range kinds {
		was, now := toSet(s[k]), toSet(after[k])
		for _, l := range s[k] {
			if !now[l] {
				out = append(out, k+" - "+l)
			}
		}
		for _, l := range after[k] {
			if !was[l] {
				out = append(out, k+" + "+l)
			}
		}
	}
	return out
}

func toSet(lines []string) map[string]bool {
	m := make(map[string]bool, len(lines))
	for _, l := range lines {
		m[l] = true
	}
	return m
}
