package tcnodeport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/lbpath/lbpath/agent/netns"
)

// LB is the loaded programs, their maps (one set shared by every node: the
// flow map carries the frontend to the backend's node, as DSR's IP option
// does in Cilium) and the tcx links on each node's device. Nothing is
// pinned: a tcx link goes away with its last file descriptor (a crashed
// test leaves nothing) or with its device (the testbed's namespaces).
type LB struct {
	objs NodePortObjects

	mu     sync.Mutex
	links  []link.Link
	ids    map[netip.AddrPort]uint32 // frontend → id of its backends
	nextID uint32
}

// Load loads the programs and creates the maps; nothing is attached yet.
func Load() (*LB, error) {
	lb := &LB{ids: map[netip.AddrPort]uint32{}, nextID: 1}
	if err := LoadNodePortObjects(&lb.objs, nil); err != nil {
		return nil, fmt.Errorf("load TC NodePort programs: %w", err)
	}
	return lb, nil
}

// AttachNode attaches the ingress and egress programs to device dev in the
// network namespace at nsPath (tcx: the ifindex is resolved in the
// namespace the attaching thread is in).
func (lb *LB) AttachNode(nsPath, dev string) error {
	return netns.Do(nsPath, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return fmt.Errorf("TC NodePort: device %s in %s: %w", dev, nsPath, err)
		}
		for _, a := range []struct {
			prog *ebpf.Program
			at   ebpf.AttachType
		}{{lb.objs.NodeportIngress, ebpf.AttachTCXIngress}, {lb.objs.NodeportEgress, ebpf.AttachTCXEgress}} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: a.prog, Attach: a.at})
			if err != nil {
				return fmt.Errorf("TC NodePort: attach %v to %s in %s: %w", a.at, dev, nsPath, err)
			}
			lb.mu.Lock()
			lb.links = append(lb.links, l)
			lb.mu.Unlock()
		}
		return nil
	})
}

// SetFrontend makes new connections to front (a node IP:NodePort) go to
// one of backends, picked at random per connection (Cilium's default).
// No backends leaves front to the node (new connections are not
// translated); flows already translated keep their backend.
func (lb *LB) SetFrontend(front netip.AddrPort, backends []netip.AddrPort) error {
	if !front.Addr().Is4() {
		return fmt.Errorf("TC NodePort: frontend %v is not IPv4", front)
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	id, ok := lb.ids[front]
	if !ok {
		id = lb.nextID
		lb.nextID++
		lb.ids[front] = id
	}
	// Backends first, then the count that makes them visible.
	for i, b := range backends {
		if !b.Addr().Is4() {
			return fmt.Errorf("TC NodePort: backend %v is not IPv4", b)
		}
		if err := lb.objs.Backends.Put(NodePortBackendKey{Id: id, Slot: uint32(i)}, addr(b)); err != nil {
			return fmt.Errorf("TC NodePort: backend %v: %w", b, err)
		}
	}
	if err := lb.objs.Frontends.Put(addr(front), NodePortFrontendVal{Count: uint32(len(backends)), Id: id}); err != nil {
		return fmt.Errorf("TC NodePort: frontend %v: %w", front, err)
	}
	return nil
}

// Counters are the programs' own counts since Load.
type Counters struct {
	// Connections is new connections translated (SYNs that chose a
	// backend).
	Connections uint64
	// In is packets translated on ingress, Out replies reverse-translated
	// on egress.
	In, Out uint64
}

// Counters reads the programs' counts.
func (lb *LB) Counters() (Counters, error) {
	var v [3]uint64
	for i := range v {
		if err := lb.objs.Counters.Lookup(uint32(i), &v[i]); err != nil {
			return Counters{}, fmt.Errorf("TC NodePort: read counter %d: %w", i, err)
		}
	}
	return Counters{Connections: v[0], In: v[1], Out: v[2]}, nil
}

// Close detaches every program and frees the maps.
func (lb *LB) Close() error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	var errs []error
	for _, l := range lb.links {
		errs = append(errs, l.Close())
	}
	lb.links = nil
	errs = append(errs, lb.objs.Close())
	return errors.Join(errs...)
}

// addr is ap as the programs key it: address and port in network byte
// order, loaded as native integers.
func addr(ap netip.AddrPort) NodePortAddr {
	b := ap.Addr().As4()
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], ap.Port())
	return NodePortAddr{Ip: binary.NativeEndian.Uint32(b[:]), Port: binary.NativeEndian.Uint16(p[:])}
}
