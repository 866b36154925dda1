package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/lbpath/lbpath/agent/bpf"
)

// EventConnect: connect() on this socket asked for Dialed, and the socket's
// peer (Remote) is another address: something rewrote the destination
// inside connect() — a socket load balancer's cgroup connect4/6 program
// (Cilium's socket-LB, GKE Dataplane V2). Emitted at SYN_SENT, before the
// socket's OPEN and CLOSE in the same ring buffer. Local carries the
// address only (the kernel binds the port after SYN_SENT); StartNs is the
// connect() call, TimeNs the SYN. With UDP set it is a connected UDP
// socket's connect(), taken at the syscall's exit: Cookie is 0 and Local
// has the bound port, so the socket's UDP flow joins it by Netns and its
// four-tuple.
const EventConnect EventType = 16

// Programs of connect.bpf.c; all or none are attached.
const (
	progSysConnect  = "on_sys_connect"
	progConnectSyn  = "on_connect_syn"
	progConnectExit = "on_sys_connect_exit"
	connectCapture  = "connect_dst" // name in Unavailable and Programs
)

// ConnectCounters are the connect() capture's counts since load.
type ConnectCounters struct {
	// RingBufferDrops: translations not reported (ring buffer full).
	RingBufferDrops uint64
	// NoConnect: TCP SYNs sent with no connect() of the same thread before
	// (io_uring, TCP Fast Open via sendto, kernel sockets): their
	// destination was not captured.
	NoConnect uint64
	// FDMismatch: the thread's last connect() was on another socket.
	FDMismatch uint64
	// Unchanged: connect() kept the destination it was given.
	Unchanged uint64
	// Translated: connect() destinations rewritten, each reported.
	Translated uint64
	// UDPUnchanged and UDPTranslated are the same for connected UDP
	// sockets (taken at the syscall's exit).
	UDPUnchanged  uint64
	UDPTranslated uint64
}

// connectProgs is the loaded connect() capture.
type connectProgs struct {
	coll  *ebpf.Collection
	links []link.Link
}

// openConnect loads connect.bpf.c with the capture's ring buffer and
// attaches both hooks. The syscall tracepoint needs tracefs mounted
// (/sys/kernel/tracing); without it the capture is unavailable and the
// rest runs.
func openConnect(events *ebpf.Map, cache *btf.Cache) (*connectProgs, error) {
	spec, err := bpf.LoadConnect()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	// The ring buffer is the capture's, whatever size it was given.
	spec.Maps["events"].MaxEntries = events.MaxEntries()
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{"events": events}, Cache: cache})
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	cp := &connectProgs{coll: coll}
	tp, err := link.Tracepoint("syscalls", "sys_enter_connect", coll.Programs[progSysConnect], nil)
	if err != nil {
		cp.close()
		return nil, fmt.Errorf("attach syscalls/sys_enter_connect (is tracefs mounted at /sys/kernel/tracing?): %w", err)
	}
	cp.links = append(cp.links, tp)
	syn, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs[progConnectSyn]})
	if err != nil {
		cp.close()
		return nil, fmt.Errorf("attach %s: %w", progConnectSyn, err)
	}
	cp.links = append(cp.links, syn)
	exit, err := link.Tracepoint("syscalls", "sys_exit_connect", coll.Programs[progConnectExit], nil)
	if err != nil {
		cp.close()
		return nil, fmt.Errorf("attach syscalls/sys_exit_connect: %w", err)
	}
	cp.links = append(cp.links, exit)
	return cp, nil
}

func (cp *connectProgs) close() error {
	var errs []error
	for _, l := range cp.links {
		errs = append(errs, l.Close())
	}
	cp.links = nil
	cp.coll.Close()
	return errors.Join(errs...)
}

func (cp *connectProgs) counters() (ConnectCounters, error) {
	var out ConnectCounters
	m := cp.coll.Maps["connect_counters"]
	for slot, dst := range []*uint64{&out.RingBufferDrops, &out.NoConnect, &out.FDMismatch, &out.Unchanged, &out.Translated, &out.UDPUnchanged, &out.UDPTranslated} {
		var per []uint64
		if err := m.Lookup(uint32(slot), &per); err != nil {
			return out, fmt.Errorf("read connect counter %d: %w", slot, err)
		}
		for _, v := range per {
			*dst += v
		}
	}
	return out, nil
}

// ConnectCounters reads the connect() capture's counters; ok is false when
// the capture is not loaded.
func (c *Capture) ConnectCounters() (ConnectCounters, bool, error) {
	if c.connect == nil {
		return ConnectCounters{}, false, nil
	}
	cc, err := c.connect.counters()
	return cc, true, err
}

// ConnectProgramStats returns the run count and time of the connect()
// capture's three programs (zero unless kernel.bpf_stats_enabled is on).
func (c *Capture) ConnectProgramStats() (map[string]ebpf.ProgramStats, error) {
	out := map[string]ebpf.ProgramStats{}
	if c.connect == nil {
		return out, nil
	}
	for _, name := range []string{progSysConnect, progConnectSyn, progConnectExit} {
		st, err := c.connect.coll.Programs[name].Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", name, err)
		}
		out[name] = *st
	}
	return out, nil
}

// decodeConnect fills e from a connect record (struct connect_event).
func decodeConnect(b []byte, e *Event) error {
	le := binary.LittleEndian
	*e = Event{Type: EventConnect, Side: SideClient}
	e.Cookie = le.Uint64(b[0:])
	e.StartNs = le.Uint64(b[8:])
	e.TimeNs = le.Uint64(b[16:])
	e.Netns = le.Uint32(b[72:])
	lport := le.Uint16(b[80:])
	e.UDP = b[82] == syscall.IPPROTO_UDP
	dialedPort := le.Uint16(b[88:])
	dport := le.Uint16(b[90:])
	family := le.Uint16(b[92:])
	switch b[95] {
	case 4:
		e.Dialed = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[24:28])), dialedPort)
	case 6:
		e.Dialed = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[24:40])).Unmap(), dialedPort)
	default:
		return fmt.Errorf("connect record: dialed family %d", b[95])
	}
	switch family {
	case syscall.AF_INET:
		e.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[40:44])), lport)
		e.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[56:60])), dport)
	case syscall.AF_INET6:
		e.Local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[40:56])).Unmap(), lport)
		e.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[56:72])).Unmap(), dport)
	default:
		return fmt.Errorf("connect record: address family %d", family)
	}
	return nil
}
