//go:build ignore

// lbpath's UDP side: per-socket, per-peer UDP flows from cgroup_skb programs
// attached to the cgroup v2 root (they see the sockets of every network
// namespace on the node).
//
// Why cgroup_skb and not the socket tracepoints TCP uses: a DNS server reads
// every client's datagrams from one unconnected socket, and the only
// per-datagram place where both the peer and the local address (the pod IP,
// not the socket's wildcard bind) are at hand together with the socket is
// the packet itself. cgroup_skb runs only for packets a local socket sends
// or receives (never for forwarded traffic, unlike TC on every interface),
// and it sees the socket: the flow key is the socket cookie plus the
// datagram's four-tuple. It does run for TCP packets too, so the first thing
// it does is leave for anything that is not UDP (two loads from the packet);
// the TCP throughput cost of that is measured in the benchmark
// (docs/PERFORMANCE.md).
//
// Per UDP datagram: one hash lookup (one insert for a flow's first), atomic
// counter updates. Ring-buffer events only at a flow's first datagram (so
// the agent can claim the NAT entry in time, as TCP's OPEN does) and at
// each completed request/response exchange (latency, as TCP's REQUEST).
// Flows are never deleted here: the agent reads and deletes idle ones
// (agent/capture/udp.go), which is when a flow's record is emitted.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Event types; mirrored in capture/udp.go.
enum udp_ev_type {
	UEV_FLOW = 1,     // first datagram of a flow
	UEV_EXCHANGE = 2, // a request got its response: latency
};

// Which end the socket is, decided by the flow's first datagram.
enum udp_side {
	USIDE_CLIENT = 1, // the socket sent first
	USIDE_SERVER = 2, // the socket received first
};

// Counter slots; mirrored in capture/udp.go.
enum udp_counter {
	UC_FLOWS_FULL = 0, // flow table full: a flow's datagrams go uncounted
	UC_RB_DROP_FLOW = 1,
	UC_RB_DROP_EXCHANGE = 2,
	UC_MAX = 4,
};

struct udp_key {
	__u64 cookie;    // socket cookie
	__u8 laddr[16];  // the datagram's local address (IPv4 in the first 4 bytes)
	__u8 raddr[16];  // the peer
	__u16 lport;     // host byte order
	__u16 rport;
	__u16 family;
	__u16 _pad;
};

struct udp_flow {
	__u64 first_ns;
	__u64 last_ns;
	__u64 bytes_in;  // UDP payload bytes received by the socket
	__u64 bytes_out; // sent by the socket
	__u64 req_ns;    // start of the request waiting for its response (0: none)
	__u64 lat_sum_ns;
	__u64 lat_max_ns;
	__u32 dgrams_in;
	__u32 dgrams_out;
	__u32 exchanges;
	__u32 netns;
	__u8 side;
	__u8 _pad[7];
};

// Crosses the ring buffer.
struct udp_event {
	struct udp_key key;
	__u64 ts_ns;
	__u64 start_ns; // exchange: when the request was seen
	__u32 netns;
	__u32 bytes;    // exchange: request bytes
	__u8 type;
	__u8 side;
	__u8 _pad[6];
};

const struct udp_event *unused_udp_event __attribute__((unused));
const struct udp_flow *unused_udp_flow __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct udp_key);
	__type(value, struct udp_flow);
} udp_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} udp_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UC_MAX);
	__type(key, __u32);
	__type(value, __u64);
} udp_counters SEC(".maps");

extern void *bpf_cast_to_kern_ctx(void *) __ksym;

#define WAKEUP_BYTES (16 * 1024)

static __always_inline __u64 wakeup_flags(void)
{
	if (bpf_ringbuf_query(&udp_events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&udp_counters, &slot);
	if (v)
		__sync_fetch_and_add(v, 1);
}

// parse fills the key's addresses and ports from the datagram's headers
// (data starts at the network header in cgroup_skb) and returns the UDP
// payload length, or -1 for anything that is not UDP. egress: the socket
// is the source.
static __always_inline int parse(struct __sk_buff *skb, struct udp_key *k, int egress)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct udphdr *uh;
	__u32 *l = (__u32 *)k->laddr, *r = (__u32 *)k->raddr;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data;
		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP)
			return -1;
		uh = (void *)ip + ip->ihl * 4;
		if ((void *)(uh + 1) > end)
			return -1;
		k->family = AF_INET;
		l[0] = egress ? ip->saddr : ip->daddr;
		r[0] = egress ? ip->daddr : ip->saddr;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		// No extension headers: a datagram behind them is not counted.
		struct ipv6hdr *ip6 = data;
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return -1;
		uh = (void *)(ip6 + 1);
		if ((void *)(uh + 1) > end)
			return -1;
		k->family = AF_INET6;
		__builtin_memcpy(k->laddr, egress ? &ip6->saddr : &ip6->daddr, 16);
		__builtin_memcpy(k->raddr, egress ? &ip6->daddr : &ip6->saddr, 16);
	} else {
		return -1;
	}
	__u16 sport = bpf_ntohs(uh->source), dport = bpf_ntohs(uh->dest);
	k->lport = egress ? sport : dport;
	k->rport = egress ? dport : sport;
	int len = (int)bpf_ntohs(uh->len) - (int)sizeof(*uh);
	return len < 0 ? 0 : len;
}

static __always_inline __u32 netns_of(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	struct sock *sk = BPF_CORE_READ(skb, sk);
	if (!sk)
		return 0;
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void emit(struct udp_key *k, __u8 type, __u8 side, __u32 netns, __u64 now, __u64 start,
				 __u32 bytes, __u32 drop_slot)
{
	struct udp_event *e = bpf_ringbuf_reserve(&udp_events, sizeof(*e), 0);
	if (!e) {
		count(drop_slot);
		return;
	}
	e->key = *k;
	e->ts_ns = now;
	e->start_ns = start;
	e->netns = netns;
	e->bytes = bytes;
	e->type = type;
	e->side = side;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_ringbuf_submit(e, wakeup_flags());
}

static __always_inline int on_datagram(struct __sk_buff *skb, int egress)
{
	struct udp_key k = {};
	int len = parse(skb, &k, egress);
	if (len < 0)
		return 1;
	k.cookie = bpf_get_socket_cookie(skb);
	__u64 now = bpf_ktime_get_ns();

	struct udp_flow *f = bpf_map_lookup_elem(&udp_flows, &k);
	if (!f) {
		struct udp_flow nf = {
			.first_ns = now,
			.last_ns = now,
			.side = egress ? USIDE_CLIENT : USIDE_SERVER,
			.netns = netns_of(skb),
		};
		if (egress) {
			nf.bytes_out = len;
			nf.dgrams_out = 1;
		} else {
			nf.bytes_in = len;
			nf.dgrams_in = 1;
		}
		nf.req_ns = now; // the first datagram is the first request
		if (bpf_map_update_elem(&udp_flows, &k, &nf, BPF_NOEXIST) == 0) {
			emit(&k, UEV_FLOW, nf.side, nf.netns, now, now, len, UC_RB_DROP_FLOW);
			return 1;
		}
		// Lost a race with another CPU (the flow exists now) or full.
		f = bpf_map_lookup_elem(&udp_flows, &k);
		if (!f) {
			count(UC_FLOWS_FULL);
			return 1;
		}
	}
	f->last_ns = now;
	if (egress) {
		__sync_fetch_and_add(&f->bytes_out, len);
		__sync_fetch_and_add(&f->dgrams_out, 1);
	} else {
		__sync_fetch_and_add(&f->bytes_in, len);
		__sync_fetch_and_add(&f->dgrams_in, 1);
	}
	// A request travels to the server: egress for a client socket,
	// ingress for a server socket. The first datagram back answers it.
	int to_server = (f->side == USIDE_CLIENT) == egress;
	if (to_server) {
		if (f->req_ns == 0)
			f->req_ns = now;
		return 1;
	}
	__u64 req = f->req_ns;
	if (req == 0 || now < req)
		return 1;
	f->req_ns = 0;
	__u64 lat = now - req;
	__sync_fetch_and_add(&f->exchanges, 1);
	__sync_fetch_and_add(&f->lat_sum_ns, lat);
	if (lat > f->lat_max_ns)
		f->lat_max_ns = lat;
	emit(&k, UEV_EXCHANGE, f->side, f->netns, now, req, 0, UC_RB_DROP_EXCHANGE);
	return 1;
}

// Both programs always return 1 (let the packet pass): they observe only.
SEC("cgroup_skb/ingress")
int udp_ingress(struct __sk_buff *skb)
{
	return on_datagram(skb, 0);
}

SEC("cgroup_skb/egress")
int udp_egress(struct __sk_buff *skb)
{
	return on_datagram(skb, 1);
}
