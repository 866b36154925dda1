// Package flow joins socket lifecycle events (agent/capture) with NAT
// translations (agent/conntrack) into one Connection record per TCP
// connection per node.
package flow

import (
	"net/netip"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/agent/conntrack"
)

// Role says what this node saw of a connection.
type Role string

// Roles.
const (
	// RoleServer: the accepting socket (a pod, or a hostNetwork server) is on this node.
	RoleServer Role = "server"
	// RoleClient: the connecting socket is on this node.
	RoleClient Role = "client"
	// RoleForward: this node translated the connection (Service → pod) and
	// sent it to a backend no local socket accepted — it was the entry node
	// of a cross-node hop.
	RoleForward Role = "forward"
	// RoleReject: this node's kernel refused the SYN: kube-proxy's REJECT for
	// a Service without endpoints, or a port nobody listens on.
	RoleReject Role = "reject"
)

// Outcome is how the connection ended.
type Outcome string

// Outcomes.
const (
	OutcomeOK          Outcome = "ok"          // closed normally
	OutcomeReset       Outcome = "reset"       // ended by a RST, sent or received
	OutcomeRefused     Outcome = "refused"     // the SYN was answered by RST or ICMP unreachable
	OutcomeTimeout     Outcome = "timeout"     // the SYN was never answered, or an established peer stopped answering (ETIMEDOUT)
	OutcomeUnreachable Outcome = "unreachable" // no route to the destination (at the handshake or later)
	OutcomeFailed      Outcome = "failed"      // any other error before or during the handshake
	OutcomeForwarded   Outcome = "forwarded"   // RoleForward: the end is seen by the pod's node
	// OutcomeUnanswered: a UDP flow whose last request got no response
	// before the flow went idle (a DNS query lost, a server that never
	// answered).
	OutcomeUnanswered Outcome = "unanswered"
)

// Transports a Connection can have (network.transport).
const (
	TransportTCP = "tcp"
	TransportUDP = "udp"
)

// NAT is the conntrack translation this node applied.
type NAT struct {
	ID       uint32          `json:"id"`
	Original conntrack.Tuple `json:"original"`
	Reply    conntrack.Tuple `json:"reply"`
	DNAT     bool            `json:"dnat"`
	SNAT     bool            `json:"snat"`
	// PortRemap: the kernel rewrote only the client's source port (a
	// clash with another entry); the client's address reached the pod.
	PortRemap bool `json:"src_port_remapped,omitempty"`
}

// Connection is one TCP connection as one node saw it. Every field is
// documented in docs/TELEMETRY.md.
type Connection struct {
	Node    string    `json:"node"`
	Role    Role      `json:"role"`
	Outcome Outcome   `json:"outcome"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	// Client is the initiator's address as far as this node knows it: the
	// NAT original source, else the socket's peer (for a server) or own
	// address (for a client). Behind SNAT on another node it is that
	// node's address; Merge fills in the real one.
	Client netip.AddrPort `json:"client"`
	// Target is the address the client dialled: ClusterIP, NodePort or LB
	// IP when NAT was seen here, else the server socket's address.
	Target netip.AddrPort `json:"target"`
	// PodSrc → PodDst is the tuple the accepting socket sees (after DNAT
	// and SNAT). Every node that sees the connection computes the same
	// pair, so it is the key Merge joins nodes' records on.
	PodSrc netip.AddrPort `json:"pod_src"`
	PodDst netip.AddrPort `json:"pod_dst"`
	NAT    *NAT           `json:"nat,omitempty"`
	// Dialed is the destination the application passed to connect() when a
	// socket load balancer rewrote it there (SocketLB); Target is Dialed
	// then, PodDst where the socket really went.
	Dialed netip.AddrPort `json:"dialed,omitzero"`
	// SocketLB is true when this node translated the Service inside
	// connect() (a cgroup connect4/6 program such as Cilium's socket-LB):
	// no conntrack entry exists for it, the connect() capture saw it.
	SocketLB bool `json:"socket_lb,omitempty"`
	// SNAT is true when this node rewrote the client's source address.
	SNAT bool `json:"snat"`
	// Payload bytes, by direction (from the socket's counters; 0 for forward and reject).
	BytesToServer uint64 `json:"bytes_to_server"`
	BytesToClient uint64 `json:"bytes_to_client"`
	SRTTMicros    uint32 `json:"srtt_us"`
	Retransmits   uint32 `json:"retransmits"`
	ResetSent     bool   `json:"reset_sent,omitempty"`
	ResetReceived bool   `json:"reset_received,omitempty"`
	Error         string `json:"error,omitempty"`
	Netns         uint32 `json:"netns,omitempty"`
	// NetnsCookie is the socket's network namespace's never-reused id
	// (capture.Event.NetnsCookie): the server pod is named from it.
	NetnsCookie uint64 `json:"netns_cookie,omitempty"`
	Cookie      uint64 `json:"socket_cookie,omitempty"`
	// Transport is "udp" for UDP flows (flow.UDPTable); empty for TCP, so
	// TCP records keep their form. Use Proto() to read it.
	Transport string `json:"transport,omitempty"`
	// UDP flows only (see docs/ARCHITECTURE.md, UDP): datagrams each way,
	// request → response exchanges completed, and their latency.
	DatagramsToServer uint32 `json:"datagrams_to_server,omitempty"`
	DatagramsToClient uint32 `json:"datagrams_to_client,omitempty"`
	Exchanges         uint32 `json:"exchanges,omitempty"`
	LatencySumNs      int64  `json:"latency_sum_ns,omitempty"`
	LatencyMaxNs      int64  `json:"latency_max_ns,omitempty"`
}

// Proto is the record's transport: "tcp" or "udp".
func (c *Connection) Proto() string {
	if c.Transport == "" {
		return TransportTCP
	}
	return c.Transport
}

// Duration is End - Start.
func (c *Connection) Duration() time.Duration { return c.End.Sub(c.Start) }

// WireKey is the tuple the accepting socket sees; see PodSrc.
func (c *Connection) WireKey() conntrack.Tuple {
	return conntrack.Tuple{Src: c.PodSrc, Dst: c.PodDst}
}

func errnoName(e syscall.Errno) string {
	switch e {
	case 0:
		return ""
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.ETIMEDOUT:
		return "ETIMEDOUT"
	case syscall.ECONNRESET:
		return "ECONNRESET"
	case syscall.EHOSTUNREACH:
		return "EHOSTUNREACH"
	case syscall.ENETUNREACH:
		return "ENETUNREACH"
	case syscall.EPIPE:
		return "EPIPE"
	}
	return e.Error()
}

// Request is one request/response turn on an accepting socket: from the
// first read of the request to the first write of its response (for
// HTTP/1.x on keep-alive connections, one HTTP request).
type Request struct {
	Node    string         `json:"node"`
	Start   time.Time      `json:"start"`
	Latency time.Duration  `json:"latency_ns"`
	Bytes   uint64         `json:"bytes"` // request bytes read
	Turn    uint32         `json:"turn"`  // 1 for the connection's first request
	PodSrc  netip.AddrPort `json:"pod_src"`
	PodDst  netip.AddrPort `json:"pod_dst"`
	Netns   uint32         `json:"netns,omitempty"`
	// NetnsCookie: see Connection.NetnsCookie.
	NetnsCookie uint64 `json:"netns_cookie,omitempty"`
	Cookie      uint64 `json:"socket_cookie,omitempty"`
	// Transport is "udp" for a UDP exchange (request datagram → first
	// response datagram); empty for TCP.
	Transport string `json:"transport,omitempty"`
}
