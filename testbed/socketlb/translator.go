package socketlb

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/netns"
)

// Translator is the attached connect4 program and its maps. Nothing is
// pinned: the cgroup link goes away with the process that holds it, so a
// crashed test leaves no translator behind (the kernel detaches a bpf_link
// when its last file descriptor closes).
type Translator struct {
	objs TranslatorObjects
	lnk  link.Link

	mu     sync.Mutex
	ids    map[netip.AddrPort]uint32 // service → id of its backends
	nextID uint32
}

// Attach loads the program and attaches it to the cgroup v2 root with a
// bpf_link (never the legacy attach, which would outlive a crash).
func Attach() (*Translator, error) {
	root, err := cgroup2Root()
	if err != nil {
		return nil, err
	}
	t := &Translator{ids: map[netip.AddrPort]uint32{}, nextID: 1}
	if err := LoadTranslatorObjects(&t.objs, nil); err != nil {
		return nil, fmt.Errorf("load socket-LB translator: %w", err)
	}
	dir, err := os.Open(root)
	if err != nil {
		t.objs.Close()
		return nil, fmt.Errorf("open cgroup root: %w", err)
	}
	defer dir.Close()
	t.lnk, err = link.AttachRawLink(link.RawLinkOptions{
		Target: int(dir.Fd()), Program: t.objs.Sock4Connect, Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		t.objs.Close()
		return nil, fmt.Errorf("attach connect4 to %s: %w", root, err)
	}
	return t, nil
}

// cgroup2Root finds the cgroup v2 mount: /sys/fs/cgroup/unified on hybrid
// hosts like this one, /sys/fs/cgroup on pure v2 hosts.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	return "", errors.New("no cgroup2 mount: a cgroup connect4 program needs cgroup v2")
}

// AllowNetns lets the translator act on connects made in the network
// namespace at path (by its netns cookie; nothing else is touched).
func (t *Translator) AllowNetns(path string) error {
	var cookie uint64
	err := netns.Do(path, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		cookie = v
		return err
	})
	if err != nil {
		return fmt.Errorf("netns cookie of %s: %w", path, err)
	}
	return t.objs.NetnsAllowed.Put(cookie, uint8(1))
}

// SetService makes connects to vip go to one of backends, picked at random
// per connect (Cilium's default, random, not round-robin). No backends
// leaves the Service to the node's own rules.
func (t *Translator) SetService(vip netip.AddrPort, backends []netip.AddrPort) error {
	if !vip.Addr().Is4() {
		return fmt.Errorf("socket-LB translator: %v is not IPv4 (connect4 only)", vip)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	id, ok := t.ids[vip]
	if !ok {
		id = t.nextID
		t.nextID++
		t.ids[vip] = id
	}
	// Backends first, then the count that makes them visible.
	for i, b := range backends {
		if !b.Addr().Is4() {
			return fmt.Errorf("socket-LB translator: backend %v is not IPv4", b)
		}
		k := TranslatorBackendKey{Id: id, Slot: uint32(i)}
		v := TranslatorBackendVal{Ip: ip4(b.Addr()), Port: port16(b.Port())}
		if err := t.objs.Backends.Put(k, v); err != nil {
			return fmt.Errorf("socket-LB backend %v: %w", b, err)
		}
	}
	k := TranslatorSvcKey{Ip: ip4(vip.Addr()), Port: port16(vip.Port())}
	if err := t.objs.Services.Put(k, TranslatorSvcVal{Count: uint32(len(backends)), Id: id}); err != nil {
		return fmt.Errorf("socket-LB service %v: %w", vip, err)
	}
	return nil
}

// Translated is how many connects the translator rewrote since Attach.
func (t *Translator) Translated() (uint64, error) {
	var n uint64
	if err := t.objs.Translated.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read translated count: %w", err)
	}
	return n, nil
}

// Close detaches the program and frees its maps.
func (t *Translator) Close() error {
	var errs []error
	if t.lnk != nil {
		errs = append(errs, t.lnk.Close())
	}
	errs = append(errs, t.objs.Close())
	return errors.Join(errs...)
}

// ip4 is the address as bpf_sock_addr.user_ip4 holds it: network byte order
// loaded as a native u32.
func ip4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// port16 is the port as bpf_sock_addr.user_port holds it: network byte
// order in the low 16 bits.
func port16(p uint16) uint32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return uint32(binary.NativeEndian.Uint16(b[:]))
}
