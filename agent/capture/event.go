// Package capture loads lbpath's eBPF programs, attaches them to stable
// kernel hooks and turns ring-buffer records into Events.
package capture

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"time"
)

// EventType says which moment of a connection's life an Event reports.
type EventType uint8

// Event types; the values are the kernel program's enum ev_type.
const (
	EventOpen    EventType = 1 // handshake completed
	EventClose   EventType = 2 // socket reached TCP_CLOSE; final counters
	EventRefused EventType = 3 // the kernel refused a SYN that no socket took
	// EventRequest: a server socket answered a request. StartNs is the first
	// read of the request, TimeNs the first write of its response,
	// BytesReceived the request's bytes and Retransmits holds the turn number.
	EventRequest EventType = 4
)

func (t EventType) String() string {
	switch t {
	case EventOpen:
		return "open"
	case EventClose:
		return "close"
	case EventRefused:
		return "refused"
	case EventRequest:
		return "request"
	case EventConnect:
		return "connect"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Side tells which end of the connection the socket is.
type Side uint8

// Sides; the values are the kernel program's enum side.
const (
	SideUnknown Side = 0
	SideClient  Side = 1 // the socket called connect()
	SideServer  Side = 2 // the socket was accepted from a listener
)

func (s Side) String() string {
	switch s {
	case SideClient:
		return "client"
	case SideServer:
		return "server"
	}
	return "unknown"
}

// Flags are facts collected during the connection's life.
type Flags uint8

// Flag bits; the values are the kernel program's F_* defines.
const (
	FlagResetReceived Flags = 1
	FlagResetSent     Flags = 2
	// FlagError: the kernel reported an error on the socket (an ICMP error
	// or a reset); the errno may have been consumed by connect() already.
	FlagError Flags = 4
)

// TCP states the kernel reports in OldState.
const (
	StateEstablished = 1
	StateSynSent     = 2
	StateSynRecv     = 3
)

// EventSize is the size of struct event in lbpath.bpf.c; a test checks it
// against the bpf2go-generated type.
const EventSize = 112

// MinEventSize is the size of the layout before netns_cookie was appended:
// Decode accepts such records (NetnsCookie stays 0) so that a program
// written against the older layout still decodes.
const MinEventSize = 104

// Event is one decoded ring-buffer record. Times are CLOCK_MONOTONIC
// nanoseconds, as bpf_ktime_get_ns reports them; Clock turns them into
// wall time.
type Event struct {
	Type     EventType
	Side     Side
	OldState uint8
	Flags    Flags
	Cookie   uint64 // the kernel's socket cookie: unique per socket while the system runs
	StartNs  uint64 // SYN sent (client) or handshake completed (server)
	TimeNs   uint64 // when this event happened
	Local    netip.AddrPort
	Remote   netip.AddrPort
	Netns    uint32 // inode of the socket's network namespace (recycled once the namespace is freed)
	// NetnsCookie is the namespace's net_cookie, never reused while the
	// kernel runs (0 when the record has none): what agent/podns names
	// the pod by.
	NetnsCookie uint64
	// BytesAcked is what this socket sent and the peer acknowledged;
	// BytesReceived what it received. Both exclude headers.
	BytesAcked    uint64
	BytesReceived uint64
	SRTT          time.Duration // smoothed round-trip time
	Retransmits   uint32
	Err           syscall.Errno // socket error at close (ECONNREFUSED, ETIMEDOUT, ...)
	// Dialed is what the application passed to connect() (EventConnect
	// only); Remote is then where the socket really goes.
	Dialed netip.AddrPort
	// UDP marks an EventConnect of a connected UDP socket.
	UDP bool
}

// ErrShortRecord is returned by Decode for a record smaller than MinEventSize.
type ErrShortRecord int

func (e ErrShortRecord) Error() string {
	return fmt.Sprintf("ring buffer record of %d bytes, want %d", int(e), MinEventSize)
}

// Decode fills e from one raw ring-buffer record. It allocates nothing.
// Offsets follow struct event in lbpath.bpf.c (little endian: the agent runs
// on the CPU that wrote the record).
func Decode(b []byte, e *Event) error {
	if len(b) < MinEventSize {
		return ErrShortRecord(len(b))
	}
	if EventType(b[94]) == EventConnect {
		return decodeConnect(b, e)
	}
	e.NetnsCookie = 0
	if len(b) >= EventSize {
		e.NetnsCookie = binary.LittleEndian.Uint64(b[104:])
	}
	le := binary.LittleEndian
	e.Dialed = netip.AddrPort{}
	e.Cookie = le.Uint64(b[0:])
	e.StartNs = le.Uint64(b[8:])
	e.TimeNs = le.Uint64(b[16:])
	e.BytesAcked = le.Uint64(b[24:])
	e.BytesReceived = le.Uint64(b[32:])
	e.Netns = le.Uint32(b[72:])
	e.SRTT = time.Duration(le.Uint32(b[76:])) * time.Microsecond
	e.Retransmits = le.Uint32(b[80:])
	e.Err = syscall.Errno(int32(le.Uint32(b[84:])))
	sport := le.Uint16(b[88:])
	dport := le.Uint16(b[90:])
	family := le.Uint16(b[92:])
	e.Type = EventType(b[94])
	e.Side = Side(b[95])
	e.OldState = b[96]
	e.Flags = Flags(b[97])
	switch family {
	case syscall.AF_INET:
		e.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[40:44])), sport)
		e.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[56:60])), dport)
	case syscall.AF_INET6:
		e.Local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[40:56])).Unmap(), sport)
		e.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[56:72])).Unmap(), dport)
	default:
		return fmt.Errorf("ring buffer record: address family %d", family)
	}
	return nil
}
