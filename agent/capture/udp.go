package capture

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/lbpath/lbpath/agent/bpf"
)

// UDP flows come from two cgroup_skb programs on the cgroup v2 root
// (agent/bpf/udp.bpf.c): per datagram, a flow keyed by the socket and the
// datagram's four-tuple counts datagrams and bytes each way and times
// request → response exchanges. A UDP flow has no close, so the agent
// decides when it ended: ExpireUDP takes flows idle for a while out of the
// kernel table (atomically, lookup-and-delete) and that is the flow's
// record. UDP capture loads and fails on its own: without it TCP capture
// runs as before, and the reason is logged.

// UDPEventType says what a UDP ring-buffer event reports.
type UDPEventType uint8

// UDP event types; the values are udp.bpf.c's enum udp_ev_type.
const (
	UDPEventFlow     UDPEventType = 1 // a flow's first datagram
	UDPEventExchange UDPEventType = 2 // a request datagram got its first response
)

// UDPEventSize is sizeof(struct udp_event); a test checks it against the
// generated type.
const UDPEventSize = 80

// UDPEvent is one decoded UDP ring-buffer record.
type UDPEvent struct {
	Type    UDPEventType
	Side    Side // SideClient: the socket sent the flow's first datagram
	Cookie  uint64
	Local   netip.AddrPort // the datagram's local address (the pod IP, not the socket's wildcard)
	Remote  netip.AddrPort
	Netns   uint32
	TimeNs  uint64 // the datagram's time
	StartNs uint64 // exchange: when its request was seen
	Bytes   uint32 // flow: the first datagram's payload bytes
}

// UDPFlow is one flow's final counters, read out of the kernel table.
type UDPFlow struct {
	Side          Side
	Cookie        uint64
	Local, Remote netip.AddrPort
	Netns         uint32
	FirstNs       uint64
	LastNs        uint64
	BytesIn       uint64 // payload bytes the socket received
	BytesOut      uint64 // payload bytes the socket sent
	DatagramsIn   uint32
	DatagramsOut  uint32
	Exchanges     uint32 // requests that got a response
	LatencySum    time.Duration
	LatencyMax    time.Duration
	// Unanswered: a request was still waiting for its response.
	Unanswered bool
}

// UDPCounters are the UDP programs' loss counts since load.
type UDPCounters struct {
	FlowTableFull    uint64 // datagrams of flows that found the table full: uncounted
	RingDropFlow     uint64 // first-datagram events lost (ring buffer full)
	RingDropExchange uint64 // exchange events lost
}

// UDPConfig sizes the UDP side. Zero values take the defaults.
type UDPConfig struct {
	// CgroupPath is the cgroup v2 directory the programs attach to;
	// default: the cgroup2 mount found in /proc/self/mountinfo (the
	// root, so every socket of every namespace is seen).
	CgroupPath string
	// MaxFlows bounds the kernel flow table (default 65536).
	MaxFlows uint32
	// RingBufferBytes is the event ring buffer size (default 1 MiB).
	RingBufferBytes uint32
}

// UDP owns the UDP programs, their cgroup links and the ring-buffer reader.
type UDP struct {
	objs      bpf.UdpObjects
	links     []link.Link
	reader    *ringbuf.Reader
	closeOnce sync.Once
}

// OpenUDP loads udp.bpf.c and attaches both programs to the cgroup v2
// root. Both or neither: a flow counted in one direction only would be a
// wrong record, so a failure of either is the whole UDP side's.
func OpenUDP(cfg UDPConfig, log *slog.Logger) (*UDP, error) {
	if log == nil {
		log = slog.Default()
	}
	path := cfg.CgroupPath
	if path == "" {
		var err error
		if path, err = cgroup2Root(); err != nil {
			return nil, err
		}
	}
	if err := isHierarchyRoot(path); err != nil {
		return nil, err
	}
	spec, err := bpf.LoadUdp()
	if err != nil {
		return nil, fmt.Errorf("load UDP eBPF spec: %w", err)
	}
	if cfg.MaxFlows != 0 {
		spec.Maps["udp_flows"].MaxEntries = cfg.MaxFlows
	}
	if cfg.RingBufferBytes != 0 {
		spec.Maps["udp_events"].MaxEntries = cfg.RingBufferBytes
	}
	u := &UDP{}
	if err := spec.LoadAndAssign(&u.objs, nil); err != nil {
		return nil, fmt.Errorf("load UDP programs: %w", err)
	}
	for _, a := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{{u.objs.UdpIngress, ebpf.AttachCGroupInetIngress}, {u.objs.UdpEgress, ebpf.AttachCGroupInetEgress}} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: a.typ, Program: a.prog})
		if err != nil {
			u.Close()
			return nil, fmt.Errorf("attach UDP program to cgroup %s: %w", path, err)
		}
		u.links = append(u.links, l)
	}
	if u.reader, err = ringbuf.NewReader(u.objs.UdpEvents); err != nil {
		u.Close()
		return nil, fmt.Errorf("open UDP ring buffer reader: %w", err)
	}
	log.Debug("UDP capture attached", "cgroup", path)
	return u, nil
}

// isHierarchyRoot refuses a cgroup v2 directory that is not the root of the
// hierarchy. A container sees its own cgroup mounted as if it were the
// root; programs attached there would see only the container's sockets, a
// capture that looks healthy and is blind. The root is the one directory
// whose kernfs id (its inode number) is 1, whatever path or cgroup
// namespace it is seen through.
func isHierarchyRoot(path string) error {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fmt.Errorf("cgroup v2 root %s: %w", path, err)
	}
	if st.Ino != 1 {
		return fmt.Errorf("cgroup v2 at %s is a sub-cgroup (id %d), not the hierarchy's root: UDP capture would see only the sockets below it (mount the host's cgroup2 root and pass its path)", path, st.Ino)
	}
	return nil
}

// cgroup2Root finds the cgroup v2 mount: /sys/fs/cgroup on a unified
// host, /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mount-point ... - fstype source options
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup v2 mount in /proc/self/mountinfo: UDP capture needs one")
}

// DecodeUDP fills e from one raw UDP ring-buffer record without allocating.
func DecodeUDP(b []byte, e *UDPEvent) error {
	if len(b) < UDPEventSize {
		return fmt.Errorf("UDP ring buffer record of %d bytes, want %d", len(b), UDPEventSize)
	}
	le := binary.LittleEndian
	var err error
	e.Cookie, e.Local, e.Remote, err = decodeUDPKey(b[:48])
	if err != nil {
		return err
	}
	e.TimeNs = le.Uint64(b[48:])
	e.StartNs = le.Uint64(b[56:])
	e.Netns = le.Uint32(b[64:])
	e.Bytes = le.Uint32(b[68:])
	e.Type = UDPEventType(b[72])
	e.Side = udpSide(b[73])
	return nil
}

// decodeUDPKey reads struct udp_key: cookie, laddr, raddr, lport, rport, family.
func decodeUDPKey(b []byte) (cookie uint64, local, remote netip.AddrPort, err error) {
	le := binary.LittleEndian
	cookie = le.Uint64(b[0:])
	lport, rport, family := le.Uint16(b[40:]), le.Uint16(b[42:]), le.Uint16(b[44:])
	switch family {
	case syscall.AF_INET:
		local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[8:12])), lport)
		remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[24:28])), rport)
	case syscall.AF_INET6:
		local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), lport)
		remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[24:40])).Unmap(), rport)
	default:
		err = fmt.Errorf("UDP record: address family %d", family)
	}
	return cookie, local, remote, err
}

// udpSide maps enum udp_side (1 client, 2 server) onto Side, which uses
// the same values.
func udpSide(b uint8) Side {
	switch b {
	case 1:
		return SideClient
	case 2:
		return SideServer
	}
	return SideUnknown
}

// Run reads UDP events until ctx is done (then drains what is there) or
// the reader is closed. fn must not keep e.
func (u *UDP) Run(ctx context.Context, fn func(e *UDPEvent), bad func(err error)) error {
	var e UDPEvent
	return readRing(ctx, u.reader, "UDP ring buffer", func(b []byte) error { return DecodeUDP(b, &e) }, func() { fn(&e) }, bad)
}

// Expire takes every flow whose last datagram is older than idle at nowNs
// out of the kernel table and calls fn with its final counters; idle 0
// takes all (shutdown). The read and the delete are one operation
// (BPF_MAP_LOOKUP_AND_DELETE_ELEM), so a datagram either counts in the
// record or starts a new flow, never neither. fn must not keep f.
func (u *UDP) Expire(nowNs uint64, idle time.Duration, fn func(f *UDPFlow)) (int, error) {
	var (
		k    bpf.UdpUdpKey
		v    bpf.UdpUdpFlow
		keys []bpf.UdpUdpKey
	)
	it := u.objs.UdpFlows.Iterate()
	for it.Next(&k, &v) {
		if idle == 0 || (nowNs > v.LastNs && nowNs-v.LastNs >= uint64(idle)) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate UDP flows: %w", err)
	}
	var f UDPFlow
	n := 0
	for i := range keys {
		if err := u.objs.UdpFlows.LookupAndDelete(&keys[i], &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return n, fmt.Errorf("take UDP flow: %w", err)
		}
		if err := flowOf(&keys[i], &v, &f); err != nil {
			continue
		}
		n++
		fn(&f)
	}
	return n, nil
}

func flowOf(k *bpf.UdpUdpKey, v *bpf.UdpUdpFlow, f *UDPFlow) error {
	var kb [48]byte
	le := binary.LittleEndian
	le.PutUint64(kb[0:], k.Cookie)
	copy(kb[8:24], k.Laddr[:])
	copy(kb[24:40], k.Raddr[:])
	le.PutUint16(kb[40:], k.Lport)
	le.PutUint16(kb[42:], k.Rport)
	le.PutUint16(kb[44:], k.Family)
	cookie, local, remote, err := decodeUDPKey(kb[:])
	if err != nil {
		return err
	}
	*f = UDPFlow{
		Side: udpSide(v.Side), Cookie: cookie, Local: local, Remote: remote, Netns: v.Netns,
		FirstNs: v.FirstNs, LastNs: v.LastNs, BytesIn: v.BytesIn, BytesOut: v.BytesOut,
		DatagramsIn: v.DgramsIn, DatagramsOut: v.DgramsOut, Exchanges: v.Exchanges,
		LatencySum: time.Duration(v.LatSumNs), LatencyMax: time.Duration(v.LatMaxNs),
		Unanswered: v.ReqNs != 0,
	}
	return nil
}

// Counters reads the UDP programs' per-CPU loss counters.
func (u *UDP) Counters() (UDPCounters, error) {
	read := func(slot uint32) (uint64, error) {
		var per []uint64
		if err := u.objs.UdpCounters.Lookup(slot, &per); err != nil {
			return 0, fmt.Errorf("read UDP counter %d: %w", slot, err)
		}
		var s uint64
		for _, x := range per {
			s += x
		}
		return s, nil
	}
	var c UDPCounters
	var err error
	if c.FlowTableFull, err = read(0); err != nil {
		return c, err
	}
	if c.RingDropFlow, err = read(1); err != nil {
		return c, err
	}
	c.RingDropExchange, err = read(2)
	return c, err
}

// ProgramStats returns the two programs' run counts and run time (zero
// unless kernel.bpf_stats_enabled is on).
func (u *UDP) ProgramStats() (map[string]ebpf.ProgramStats, error) {
	out := map[string]ebpf.ProgramStats{}
	for name, p := range map[string]*ebpf.Program{"udp_ingress": u.objs.UdpIngress, "udp_egress": u.objs.UdpEgress} {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", name, err)
		}
		out[name] = *st
	}
	return out, nil
}

// Close detaches and releases everything; nothing is pinned.
func (u *UDP) Close() error {
	var errs []error
	u.closeOnce.Do(func() {
		if u.reader != nil {
			errs = append(errs, u.reader.Close())
		}
		for _, l := range u.links {
			errs = append(errs, l.Close())
		}
		errs = append(errs, u.objs.Close())
	})
	return errors.Join(errs...)
}
