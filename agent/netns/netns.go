// Package netns runs code inside a Linux network namespace.
//
// Sockets (TCP, netlink, BPF attach points that are per-namespace) belong to
// the namespace of the thread that created them, so the agent enters the
// node's namespace only for the moment it opens such a socket and then
// returns: everything else keeps running in the agent's own namespace.
package netns

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on a locked OS thread that has joined the network namespace at
// path. An empty path runs fn in the caller's namespace. The thread is moved
// back before it is unlocked; if moving back fails, the thread is left locked
// so the Go runtime discards it instead of reusing a thread in the wrong
// namespace.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime terminates it when this
			// goroutine exits, so no other goroutine runs in the wrong netns.
			errc <- fmt.Errorf("return from netns %s: %w", path, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Inode returns the inode number that identifies the network namespace at
// path; it is the value the kernel reports as net->ns.inum, which is how BPF
// events name their namespace. An empty path means the caller's namespace.
func Inode(path string) (uint32, error) {
	if path == "" {
		path = "/proc/self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat netns %s: %w", path, err)
	}
	return uint32(st.Ino), nil
}

// nsGetNSType is the NS_GET_NSTYPE ioctl (_IO(0xb7, 0x3), Linux 4.11),
// which golang.org/x/sys does not define: it returns the CLONE_NEW* type of
// a namespace file.
const nsGetNSType = 0xb703

// Check reports whether path is a network namespace. Stat alone accepts
// any file, and a path that is not a network namespace would only fail
// when the agent first enters it.
func Check(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	t, err := unix.IoctlRetInt(int(f.Fd()), nsGetNSType)
	if err != nil {
		return fmt.Errorf("%s is not a namespace file (%w)", path, err)
	}
	if t != unix.CLONE_NEWNET {
		return fmt.Errorf("%s is a namespace, but not a network namespace", path)
	}
	return nil
}

// Addrs returns the addresses configured on the interfaces of the network
// namespace at path (empty: the caller's), read over rtnetlink from inside
// it.
func Addrs(path string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := Do(path, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					out = append(out, ip.Unmap())
				}
			}
		}
		return nil
	})
	return out, err
}
