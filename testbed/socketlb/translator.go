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

// Translator is the attached connect4 and connect6 programs and their maps. Nothing is
// pinned: the cgroup link goes away with the process that holds it, so a
// crashed test leaves no translator behind (the kernel detaches a bpf_link
// when its last file descriptor closes).
type Translator struct {
	objs  TranslatorObjects
	links []link.Link

	mu     sync.Mutex
	ids    map[svcID]uint32 // service → id of its backends
	nextID uint32
}

// Proto is a Service port's transport.
type Proto uint8

// The transports the translator serves (IPPROTO_*).
const (
	TCP Proto = unix.IPPROTO_TCP
	UDP Proto = unix.IPPROTO_UDP
)

func (p Proto) String() string {
	if p == UDP {
		return "udp"
	}
	return "tcp"
}

type svcID struct {
	proto Proto
	vip   netip.AddrPort
}

// Attach loads the program and attaches it to the cgroup v2 root with a
// bpf_link (never the legacy attach, which would outlive a crash).
func Attach() (*Translator, error) {
	root, err := cgroup2Root()
	if err != nil {
		return nil, err
	}
	t := &Translator{ids: map[svcID]uint32{}, nextID: 1}
	if err := LoadTranslatorObjects(&t.objs, nil); err != nil {
		return nil, fmt.Errorf("load socket-LB translator: %w", err)
	}
	dir, err := os.Open(root)
	if err != nil {
		t.objs.Close()
		return nil, fmt.Errorf("open cgroup root: %w", err)
	}
	defer dir.Close()
	for _, p := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{{t.objs.Sock4Connect, ebpf.AttachCGroupInet4Connect}, {t.objs.Sock6Connect, ebpf.AttachCGroupInet6Connect}} {
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(dir.Fd()), Program: p.prog, Attach: p.at})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("attach %v to %s: %w", p.at, root, err), t.Close())
		}
		t.links = append(t.links, l)
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

// SetService makes connects to vip over proto go to one of backends,
// picked at random per connect (Cilium's default, random, not
// round-robin). No backends leaves the Service to the node's own rules.
// An IPv4 vip takes IPv4 backends, an IPv6 vip IPv6 ones.
func (t *Translator) SetService(proto Proto, vip netip.AddrPort, backends []netip.AddrPort) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := svcID{proto, vip}
	id, ok := t.ids[key]
	if !ok {
		id = t.nextID
		t.nextID++
		t.ids[key] = id
	}
	// Backends first, then the count that makes them visible.
	for i, b := range backends {
		if b.Addr().Unmap().Is4() != vip.Addr().Unmap().Is4() {
			return fmt.Errorf("socket-LB translator: backend %v of %v is of the other family", b, vip)
		}
		k := TranslatorBackendKey{Id: id, Slot: uint32(i)}
		v := TranslatorBackendVal{Ip: ip16(b.Addr()), Port: port16(b.Port())}
		if err := t.objs.Backends.Put(k, v); err != nil {
			return fmt.Errorf("socket-LB backend %v: %w", b, err)
		}
	}
	k := TranslatorSvcKey{Ip: ip16(vip.Addr()), Port: port16(vip.Port()), Proto: uint8(proto)}
	if err := t.objs.Services.Put(k, TranslatorSvcVal{Count: uint32(len(backends)), Id: id}); err != nil {
		return fmt.Errorf("socket-LB service %s %v: %w", proto, vip, err)
	}
	return nil
}

// Backends reads back what the kernel map holds for vip over proto: the
// backends connects to it go to (none for an unknown Service).
func (t *Translator) Backends(proto Proto, vip netip.AddrPort) ([]netip.AddrPort, error) {
	var sv TranslatorSvcVal
	k := TranslatorSvcKey{Ip: ip16(vip.Addr()), Port: port16(vip.Port()), Proto: uint8(proto)}
	if err := t.objs.Services.Lookup(k, &sv); errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("socket-LB service %s %v: %w", proto, vip, err)
	}
	var out []netip.AddrPort
	for i := range sv.Count {
		var v TranslatorBackendVal
		if err := t.objs.Backends.Lookup(TranslatorBackendKey{Id: sv.Id, Slot: i}, &v); err != nil {
			return nil, fmt.Errorf("socket-LB backend %d of %v: %w", i, vip, err)
		}
		out = append(out, netip.AddrPortFrom(addr16(v.Ip), unport16(v.Port)))
	}
	return out, nil
}

// Counts are the translator's rewrites since Attach.
type Counts struct {
	All uint64 // every rewrite
	V6  uint64 // by connect6 (IPv6 and v4-mapped)
	UDP uint64 // of UDP sockets
}

// Counts reads the rewrite counters.
func (t *Translator) Counts() (Counts, error) {
	var c Counts
	for slot, dst := range []*uint64{&c.All, &c.V6, &c.UDP} {
		if err := t.objs.Translated.Lookup(uint32(slot), dst); err != nil {
			return c, fmt.Errorf("read translated count %d: %w", slot, err)
		}
	}
	return c, nil
}

// Translated is how many connects the translator rewrote since Attach.
func (t *Translator) Translated() (uint64, error) {
	c, err := t.Counts()
	return c.All, err
}

// ProgramStats returns the connect4 and connect6 programs' run counts and
// times (zero unless kernel.bpf_stats_enabled is on), for benchmarks.
func (t *Translator) ProgramStats() (v4, v6 ebpf.ProgramStats, err error) {
	a, err := t.objs.Sock4Connect.Stats()
	if err != nil {
		return v4, v6, err
	}
	b, err := t.objs.Sock6Connect.Stats()
	if err != nil {
		return v4, v6, err
	}
	return *a, *b, nil
}

// Close detaches the program and frees its maps.
func (t *Translator) Close() error {
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	errs = append(errs, t.objs.Close())
	return errors.Join(errs...)
}

// ip16 is the address as the maps hold it: 16 bytes in network byte
// order (IPv4 v4-mapped), loaded as native u32 words like
// bpf_sock_addr.user_ip4/user_ip6.
func ip16(a netip.Addr) [4]uint32 {
	b := a.As16() // IPv4 comes out v4-mapped
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func addr16(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

// port16 is the port as bpf_sock_addr.user_port holds it: network byte
// order in the low 16 bits.
func port16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func unport16(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}
