//go:build ignore

// lbpath's kernel side: TCP connection lifecycle from stable tracepoints.
//
// Only per-connection hooks are used (state changes, resets, ICMP refusals),
// never per-packet ones: peers that hook every packet measured 7-17% lost
// throughput on these machines, a per-connection hook costs a few events per
// connection whatever the payload.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define ICMP_DEST_UNREACH 3
#define SEND_SHUTDOWN 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Event types; mirrored in capture/event.go.
enum ev_type {
	EV_OPEN = 1,    // handshake completed (client or server side)
	EV_CLOSE = 2,   // socket reached TCP_CLOSE; carries the final counters
	EV_REFUSED = 3, // the kernel refused a SYN no socket took (RST or ICMP unreachable)
	EV_REQUEST = 4, // a server socket answered a request: first byte read -> first byte written
};

enum side {
	SIDE_UNKNOWN = 0,
	SIDE_CLIENT = 1, // active open (connect)
	SIDE_SERVER = 2, // passive open (accept)
};

// Counter slots in the per-CPU `counters` array; mirrored in capture/event.go.
enum counter {
	C_RB_DROP_STATE = 0,  // ring buffer full in on_state
	C_RB_DROP_RST_TX = 1, // ring buffer full in on_rst_tx
	C_RB_DROP_ICMP = 2,   // ring buffer full in on_icmp_send
	C_CONNS_FULL = 3,     // conns map full: a connection goes untracked
	C_CLOSE_UNTRACKED = 4, // close of a socket opened before the agent (or untracked)
	C_RB_DROP_REQUEST = 5, // ring buffer full in on_send (request events)
	C_RB_DROP_ICMP6 = 7,   // ring buffer full in on_kfree_skb (ICMPv6 refusals)
	C_MAX = 8,
};

#define F_RST_RX 1
#define F_RST_TX 2
#define F_ERROR 4 // an error was reported on the socket (inet_sk_error_report)

struct conn {
	__u64 start_ns;
	__s32 err; // last error reported on the socket (inet_sk_error_report)
	__u8 side;
	__u8 flags;
	__u8 _pad[2];
};

// Request timing state of an accepted (server) socket, in the socket's own
// local storage: the read/write hooks run on every socket call of the node,
// and a socket without local storage leaves them after one load, where a
// lookup by cookie in `conns` cost a helper call and a hash lookup on every
// call of every TCP socket (issue 14). Only server sockets get one: storage
// is allocated per socket, measured dearer than a preallocated hash entry,
// so per-connection state stays in `conns`.
struct reqstate {
	__u64 cookie;   // the socket's cookie, for the records
	__u64 start_ns; // first read of the request being served
	__u64 bytes;    // bytes read for it so far
	__u32 requests; // request/response turns completed
	__u8 phase;     // PHASE_*: where the socket is in its request/response turn
	__u8 _pad[3];
};

#define PHASE_IDLE 0
#define PHASE_REQUEST 1  // reading a request
#define PHASE_RESPONSE 2 // writing its response

// Crosses the ring buffer; naturally aligned, explicit padding, no packing.
struct event {
	__u64 cookie;
	__u64 start_ns;
	__u64 ts_ns;
	__u64 bytes_acked;
	__u64 bytes_received;
	__u8 saddr[16]; // local address of the socket (for EV_REFUSED: the address the SYN was sent to)
	__u8 daddr[16]; // remote address
	__u32 netns;
	__u32 srtt_us;
	__u32 total_retrans;
	__s32 err;
	__u16 sport; // host byte order
	__u16 dport; // host byte order
	__u16 family;
	__u8 type;
	__u8 side;
	__u8 oldstate;
	__u8 flags;
	__u8 _pad[6];
	// netns_cookie is the socket's network namespace's net_cookie: 64 bits,
	// never reused while the kernel runs (the inode above is recycled as
	// soon as a namespace is freed). On 6.18+ it equals the nsfs id that
	// NS_GET_ID returns for /proc/<pid>/ns/net, so the agent can name the
	// pod that owns the namespace exactly (agent/podns). Appended so that
	// the records of older layouts keep their offsets.
	__u64 netns_cookie;
};

// Forces the type into BTF so bpf2go generates a Go struct for it.
const struct event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); // socket cookie
	__type(value, struct conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct reqstate);
} reqs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// Waking the reader costs an irq_work per event; the reader also polls
// every few milliseconds, so wake it only once a batch has built up.
#define WAKEUP_BYTES (32 * 1024)

static __always_inline __u64 wakeup_flags(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);
	if (v)
		*v += 1;
}

// fill_tuple reads the socket's addresses with direct loads: sk is a
// BTF-typed pointer in tp_btf programs, so these compile to plain (CO-RE
// relocated) memory loads instead of bpf_probe_read_kernel calls.
static __always_inline void fill_tuple(struct event *e, const struct sock *sk, const struct tcp_sock *tp, __u16 sport)
{
	__u16 family = sk->__sk_common.skc_family;
	e->family = family;
	__u32 *s32 = (__u32 *)e->saddr, *d32 = (__u32 *)e->daddr;
	if (family == AF_INET) {
		s32[0] = sk->__sk_common.skc_rcv_saddr;
		d32[0] = sk->__sk_common.skc_daddr;
		s32[1] = s32[2] = s32[3] = 0;
		d32[1] = d32[2] = d32[3] = 0;
	} else {
		s32[0] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[0];
		s32[1] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[1];
		s32[2] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[2];
		s32[3] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[3];
		d32[0] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0];
		d32[1] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1];
		d32[2] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2];
		d32[3] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3];
	}
	// skc_num is already 0 at TCP_CLOSE; inet_sport survives.
	if (sport)
		e->sport = sport;
	else if (tp)
		e->sport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	else
		e->sport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	e->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	e->netns = sk->__sk_common.skc_net.net->ns.inum;
	e->netns_cookie = sk->__sk_common.skc_net.net->net_cookie;
}

// request_timing is 0 when the agent runs without the read/write hooks
// (--no-request-timing): server sockets then need no request state.
volatile const __u8 request_timing = 1;

// track_requests gives a new server socket its request timing state. The
// kernel frees it with the socket: deleting it at close would free it
// through RCU on the spot, measured dearer here.
static __always_inline void track_requests(const struct sock *sk, __u64 cookie)
{
	struct reqstate *r = bpf_sk_storage_get(&reqs, (void *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!r) {
		// Out of memory for it: the connection is tracked, its requests not.
		count(C_CONNS_FULL);
		return;
	}
	r->cookie = cookie;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, const int oldstate, const int newstate)
{
	// Most transitions (FIN_WAIT*, CLOSE_WAIT, LAST_ACK, LISTEN, ...) are of no
	// interest: leave before touching the socket.
	if (newstate != TCP_SYN_SENT && newstate != TCP_SYN_RECV && newstate != TCP_ESTABLISHED &&
	    newstate != TCP_CLOSE)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;

	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	__u64 now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT || newstate == TCP_SYN_RECV) {
		struct conn c = {
			.start_ns = now,
			.side = newstate == TCP_SYN_SENT ? SIDE_CLIENT : SIDE_SERVER,
		};
		if (bpf_map_update_elem(&conns, &cookie, &c, BPF_NOEXIST) != 0) {
			if (!bpf_map_lookup_elem(&conns, &cookie))
				count(C_CONNS_FULL);
			return 0;
		}
		if (newstate == TCP_SYN_RECV && request_timing)
			track_requests(sk, cookie);
		return 0;
	}

	__u8 type;
	if (newstate == TCP_ESTABLISHED)
		type = EV_OPEN;
	else if (newstate == TCP_CLOSE && oldstate != TCP_CLOSE && oldstate != TCP_LISTEN)
		type = EV_CLOSE;
	else
		return 0;

	struct conn *c = bpf_map_lookup_elem(&conns, &cookie);
	if (!c) {
		if (type == EV_CLOSE)
			count(C_CLOSE_UNTRACKED);
		return 0;
	}

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(C_RB_DROP_STATE);
		if (type == EV_CLOSE)
			bpf_map_delete_elem(&conns, &cookie);
		return 0;
	}
	e->cookie = cookie;
	e->start_ns = c->start_ns;
	e->ts_ns = now;
	e->type = type;
	e->side = c->side;
	e->flags = c->flags;
	e->oldstate = oldstate;
	e->err = sk->sk_err;
	// An ICMP error wakes connect() before the state changes, and connect()
	// clears sk_err when it reads it: the error hook kept a copy.
	if (e->err == 0)
		e->err = c->err;
	if (e->err == 0)
		e->err = sk->sk_err_soft;

	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	fill_tuple(e, sk, tp, 0);
	if (tp) {
		// bytes_acked/bytes_received count sequence space: the client's
		// SYN, our FIN once acked and the peer's FIN take one each. Report
		// payload bytes only.
		__u64 acked = tp->bytes_acked;
		__u64 rcvd = tp->bytes_received;
		__u8 shut = sk->sk_shutdown;
		if (c->side == SIDE_CLIENT && acked > 0)
			acked--;
		if ((shut & SEND_SHUTDOWN) && tp->snd_una == tp->write_seq && acked > 0)
			acked--;
		// SOCK_DONE is set only when the peer's FIN arrived (tcp_fin);
		// RCV_SHUTDOWN is also set by the application's own close().
		unsigned long skflags = sk->__sk_common.skc_flags;
		if ((skflags & (1UL << SOCK_DONE)) && rcvd > 0)
			rcvd--;
		e->bytes_acked = acked;
		e->bytes_received = rcvd;
		e->srtt_us = tp->srtt_us >> 3;
		e->total_retrans = tp->total_retrans;
	} else {
		e->bytes_acked = 0;
		e->bytes_received = 0;
		e->srtt_us = 0;
		e->total_retrans = 0;
	}
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_ringbuf_submit(e, wakeup_flags());

	if (type == EV_CLOSE)
		bpf_map_delete_elem(&conns, &cookie);
	return 0;
}

static __always_inline void mark(const struct sock *sk, __u8 flag)
{
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	struct conn *c = bpf_map_lookup_elem(&conns, &cookie);
	if (c)
		c->flags |= flag;
}

SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(on_error, const struct sock *sk)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	struct conn *c = bpf_map_lookup_elem(&conns, &cookie);
	if (!c)
		return 0;
	// On this kernel an ICMP error during SYN_SENT reports the error before
	// sk_err is readable here, and connect() clears sk_err before the
	// state changes: remember that an error arrived, and its value if seen.
	c->flags |= F_ERROR;
	__s32 err = BPF_CORE_READ(sk, sk_err);
	if (err)
		c->err = err;
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(on_rst_rx, struct sock *sk)
{
	mark(sk, F_RST_RX);
	return 0;
}

// Emits EV_REFUSED for an IPv4 TCP SYN carried by skb, seen from the host
// that refuses it: saddr is where the SYN went, daddr where it came from.
// refused6_from_skb is refused_from_skb for an IPv6 SYN (TCP directly after
// the fixed header; a SYN with extension headers is not reported). want_src,
// when set, must be the SYN's source (the ICMPv6 error's destination).
static __always_inline void refused6_from_skb(const struct sk_buff *skb, __u32 slot, __s32 err, const __u32 *want_src)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	struct ipv6hdr ip6;
	if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) != 0)
		return;
	if (ip6.version != 6 || ip6.nexthdr != IPPROTO_TCP)
		return;
	if (want_src) {
		const __u32 *got = ip6.saddr.in6_u.u6_addr32, *want = (const __u32 *)want_src;
		if (got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3])
			return;
	}
	struct tcphdr th;
	if (bpf_probe_read_kernel(&th, sizeof(th), head + nh + sizeof(ip6)) != 0)
		return;
	if (!th.syn || th.ack)
		return;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(slot);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->start_ns = e->ts_ns;
	e->type = EV_REFUSED;
	e->family = AF_INET6;
	__builtin_memcpy(e->saddr, &ip6.daddr, 16);
	__builtin_memcpy(e->daddr, &ip6.saddr, 16);
	e->sport = bpf_ntohs(th.dest);
	e->dport = bpf_ntohs(th.source);
	e->netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	e->err = err;
	bpf_ringbuf_submit(e, wakeup_flags());
}

static __always_inline void refused_from_skb(const struct sk_buff *skb, __u32 slot, __s32 err)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	struct iphdr ip;
	if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) != 0)
		return;
	if (ip.version == 6) {
		refused6_from_skb(skb, slot, err, 0);
		return;
	}
	if (ip.version != 4 || ip.protocol != IPPROTO_TCP)
		return;
	struct tcphdr th;
	if (bpf_probe_read_kernel(&th, sizeof(th), head + nh + ip.ihl * 4) != 0)
		return;
	if (!th.syn || th.ack)
		return;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(slot);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->start_ns = e->ts_ns;
	e->type = EV_REFUSED;
	e->family = AF_INET;
	__builtin_memcpy(e->saddr, &ip.daddr, 4);
	__builtin_memcpy(e->daddr, &ip.saddr, 4);
	e->sport = bpf_ntohs(th.dest);
	e->dport = bpf_ntohs(th.source);
	e->netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	e->err = err;
	bpf_ringbuf_submit(e, wakeup_flags());
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(on_rst_tx, const struct sock *sk, const struct sk_buff *skb)
{
	if (sk) {
		__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);
		if (state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV && state != TCP_LISTEN) {
			mark(sk, F_RST_TX);
			return 0;
		}
	}
	// No full socket: a SYN to a port nobody listens on.
	if (skb)
		refused_from_skb(skb, C_RB_DROP_RST_TX, 111 /* ECONNREFUSED */);
	return 0;
}

// kube-proxy REJECTs connections to Services without endpoints with an ICMP
// port-unreachable; this is the only place the node that refused them sees it.
SEC("tp_btf/icmp_send")
int BPF_PROG(on_icmp_send, const struct sk_buff *skb, int type, int code)
{
	if (type != ICMP_DEST_UNREACH || !skb)
		return 0;
	// Port unreachable is what connect() reports as ECONNREFUSED; any other
	// unreachable code as EHOSTUNREACH.
	refused_from_skb(skb, C_RB_DROP_ICMP, code == 3 ? 111 : 113);
	return 0;
}

// IPv6 has no icmp_send tracepoint. kube-proxy's REJECT (ip6tables REJECT or
// nft reject) sends an ICMPv6 error and then drops the SYN, on one CPU in one
// call chain: icmp6_send looks up the error's route (fib6_table_lookup sees
// a flow of proto ICMPv6 with the error's type and code, to the SYN's
// source), then nf_hook_slow frees the SYN with reason NETFILTER_DROP
// (kfree_skb). The pair names the refused SYN exactly; a DROP alone (no
// ICMPv6 error) is not reported.
#define IPPROTO_ICMPV6 58
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define ICMP6_PENDING_NS 1000000 // the drop follows the lookup within microseconds

struct icmp6_pending {
	__u64 ts;
	__u8 daddr[16];
	__u8 code;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct icmp6_pending);
} icmp6_pend SEC(".maps");

SEC("tp_btf/fib6_table_lookup")
int BPF_PROG(on_fib6_lookup, const struct net *net, const struct fib6_result *res, struct fib6_table *table,
	     const struct flowi6 *flp)
{
	if (!flp || flp->__fl_common.flowic_proto != IPPROTO_ICMPV6 || flp->uli.icmpt.type != ICMPV6_DEST_UNREACH)
		return 0;
	__u32 k = 0;
	struct icmp6_pending *p = bpf_map_lookup_elem(&icmp6_pend, &k);
	if (!p)
		return 0;
	p->ts = bpf_ktime_get_ns();
	__builtin_memcpy(p->daddr, &flp->daddr, 16);
	p->code = flp->uli.icmpt.code;
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(on_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)
{
	if (reason != SKB_DROP_REASON_NETFILTER_DROP || !skb)
		return 0;
	__u32 k = 0;
	struct icmp6_pending *p = bpf_map_lookup_elem(&icmp6_pend, &k);
	if (!p || !p->ts || bpf_ktime_get_ns() - p->ts > ICMP6_PENDING_NS)
		return 0;
	p->ts = 0;
	__u32 want[4];
	__builtin_memcpy(want, p->daddr, 16);
	// Port unreachable is what connect() reports as ECONNREFUSED; any other
	// unreachable code as EHOSTUNREACH.
	refused6_from_skb(skb, C_RB_DROP_ICMP6, p->code == ICMPV6_PORT_UNREACH ? 111 : 113, want);
	return 0;
}

#define MSG_PEEK 2

// Request timing without touching the application: on an accepted socket a
// request/response turn starts at the first successful read after a write
// (or after accept) and is answered at the first successful write after
// that. For HTTP/1.x on keep-alive connections a turn is one request; the
// read returns when the request's first bytes arrive because servers block
// in read between requests. These hooks run per socket read/write call, not
// per packet, and return after one map lookup for untracked sockets.
SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv, struct sock *sk, int ret, int flags)
{
	// Only tracked server sockets have an entry; a socket without any
	// local storage (clients, UDP, unix, untracked) leaves after one load.
	if (ret <= 0 || (flags & MSG_PEEK) || !sk->sk_bpf_storage)
		return 0;
	struct reqstate *r = bpf_sk_storage_get(&reqs, sk, 0, 0);
	if (!r)
		return 0;
	if (r->phase != PHASE_REQUEST) {
		r->phase = PHASE_REQUEST;
		r->start_ns = bpf_ktime_get_ns();
		r->bytes = 0;
	}
	r->bytes += ret;
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_send, struct sock *sk, int ret, int flags)
{
	if (ret <= 0 || !sk->sk_bpf_storage)
		return 0;
	struct reqstate *r = bpf_sk_storage_get(&reqs, sk, 0, 0);
	if (!r || r->phase != PHASE_REQUEST)
		return 0;
	r->phase = PHASE_RESPONSE;
	r->requests++;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(C_RB_DROP_REQUEST);
		return 0;
	}
	e->cookie = r->cookie;
	e->start_ns = r->start_ns;
	e->ts_ns = bpf_ktime_get_ns();
	e->bytes_acked = 0;
	e->bytes_received = r->bytes;
	e->srtt_us = 0;
	e->total_retrans = r->requests;
	e->err = 0;
	e->type = EV_REQUEST;
	e->side = SIDE_SERVER;
	e->oldstate = 0;
	e->flags = 0;
	// The socket is open: skc_num is its local port, no helper needed.
	fill_tuple(e, sk, 0, sk->__sk_common.skc_num);
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}
