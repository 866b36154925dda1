package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/lbpath/lbpath/agent/netns"
)

// netnsDir is where `ip netns` keeps its bind mounts.
const netnsDir = "/var/run/netns"

// run executes a tool inside the namespace at nsPath ("" = our own). The
// child is forked from a thread that has joined the namespace, so it inherits
// it; that is cheaper than `ip netns exec`, which also sets up a mount
// namespace per call.
func run(ctx context.Context, nsPath, stdin, name string, args ...string) error {
	return netns.Do(nsPath, func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), nsLabel(nsPath), err, strings.TrimSpace(out.String()))
		}
		return nil
	})
}

// ipBatch runs several `ip` commands in one process. With netns "" the lines
// run in our namespace (used for `netns add/del`).
func ipBatch(ctx context.Context, netnsName string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	args := []string{"-batch", "-"}
	if netnsName != "" {
		args = append([]string{"-n", netnsName}, args...)
	}
	return run(ctx, "", strings.Join(lines, "\n")+"\n", "ip", args...)
}

// writeSysctls sets /proc/sys/net keys inside a namespace. /proc/sys/net
// resolves against the opening thread's namespace, so no sysctl(8) process is
// needed.
func writeSysctls(nsPath string, kv [][2]string) error {
	return netns.Do(nsPath, func() error {
		for _, p := range kv {
			file := filepath.Join("/proc/sys", strings.ReplaceAll(p[0], ".", "/"))
			if err := os.WriteFile(file, []byte(p[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", p[0], p[1], nsLabel(nsPath), err)
			}
		}
		return nil
	})
}

func nsLabel(nsPath string) string {
	if nsPath == "" {
		return "host netns"
	}
	return "netns " + filepath.Base(nsPath)
}

// CheckHost reports why this host cannot run a testbed (not root, a tool
// missing), or nil if it can.
func CheckHost() error {
	if os.Geteuid() != 0 {
		return errors.New("testbed needs root (network namespaces, iptables, nft)")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("testbed needs %s: %w", tool, err)
		}
	}
	return nil
}
