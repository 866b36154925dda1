//go:build ignore

// The testbed's TC NodePort load balancer: what Cilium's kube-proxy
// replacement does in bpf_host, reduced to IPv4/TCP. On a node's LAN
// device:
//
//   - tc ingress: a packet to node-IP:NodePort (a registered frontend) is
//     translated to a backend pod-IP:port, picked at random per new
//     connection (the SYN) and kept per flow in a map; L3 and L4
//     checksums are fixed with bpf_l3_csum_replace/bpf_l4_csum_replace.
//     A backend on another node is sent there straight from tc
//     (bpf_fib_lookup + bpf_redirect_neigh): the entry node's netfilter
//     and conntrack never see the connection. A backend on this node
//     continues up the stack already translated (the node's conntrack
//     then tracks the plain client ↔ pod flow, never the translation).
//     The client's address is kept (no SNAT): the backend's node answers
//     the client directly (DSR).
//   - tc egress: a reply from a backend to a client of a translated flow
//     gets the frontend back as its source (reverse NAT), on whichever
//     node the backend answers from. The flow map is one map shared by
//     every node's programs: it stands in for the IP option / tunnel
//     header that carries the frontend to the backend's node in Cilium's
//     DSR.
//
// No netfilter rule and no conntrack entry records the translation.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TC_ACT_OK 0
#define ETH_P_IP 0x0800
#define ETH_HLEN 14
#define IPPROTO_TCP 6
#define AF_INET 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// addr is an IPv4 address and port, both in network byte order.
struct addr {
	__u32 ip;
	__u16 port;
	__u16 pad;
};

struct frontend_val {
	__u32 count; // backends 0..count-1 under id
	__u32 id;
};

struct backend_key {
	__u32 id;
	__u32 slot;
};

// flow_key is a connection by its client and the other end: the frontend
// (fwd map) or the backend (rev map).
struct flow_key {
	__u32 client_ip;
	__u32 peer_ip;
	__u16 client_port;
	__u16 peer_port;
};

struct fwd_val {
	struct addr backend;
	__u32 syn_seq; // the SYN that chose backend: a retransmit keeps it
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct addr);
	__type(value, struct frontend_val);
} frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct backend_key);
	__type(value, struct addr);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct fwd_val);
} fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct addr);
} rev SEC(".maps");

// counters: [0] connections translated (new SYNs), [1] packets translated
// on ingress, [2] replies reverse-translated on egress. The tests' ground
// truth that this program, not kube-proxy, served their connections.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &i);
	if (n)
		__sync_fetch_and_add(n, 1);
}

#define IP_OFF ETH_HLEN
#define TCP_OFF (ETH_HLEN + sizeof(struct iphdr))
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define TCP_CSUM_OFF (TCP_OFF + offsetof(struct tcphdr, check))

// parse finds an option-less, unfragmented IPv4 TCP packet.
static __always_inline int parse(struct __sk_buff *skb, struct iphdr **ip, struct tcphdr **tcp)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *i = (void *)(eth + 1);
	if ((void *)(i + 1) > end || i->ihl != 5 || i->protocol != IPPROTO_TCP || (i->frag_off & bpf_htons(0x3fff)))
		return 0;
	struct tcphdr *t = (void *)(i + 1);
	if ((void *)(t + 1) > end)
		return 0;
	*ip = i;
	*tcp = t;
	return 1;
}

// rewrite replaces the address and port at ip_off/port_off, fixing the
// IPv4 header checksum and the TCP checksum (pseudo-header included).
static __always_inline void rewrite(struct __sk_buff *skb, __u32 ip_off, __u32 port_off, __u32 old_ip, __u32 new_ip,
				    __u16 old_port, __u16 new_port)
{
	bpf_l4_csum_replace(skb, TCP_CSUM_OFF, old_ip, new_ip, BPF_F_PSEUDO_HDR | sizeof(new_ip));
	bpf_l4_csum_replace(skb, TCP_CSUM_OFF, old_port, new_port, sizeof(new_port));
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, sizeof(new_ip));
	bpf_skb_store_bytes(skb, ip_off, &new_ip, sizeof(new_ip), 0);
	bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0);
}

// pick returns the flow's backend: the one its SYN chose, or for a new
// SYN a random one (recorded both ways). 0 when the flow is not ours.
static __always_inline int pick(struct flow_key *fk, struct frontend_val *fe, struct addr *front, struct tcphdr *tcp,
				struct addr *out)
{
	struct fwd_val *known = bpf_map_lookup_elem(&fwd, fk);
	int syn = tcp->syn && !tcp->ack;
	if (known && !(syn && known->syn_seq != tcp->seq)) {
		*out = known->backend;
		return 1;
	}
	if (!syn || fe->count == 0)
		return 0; // mid-flow packet of a flow never seen: left to the node
	struct backend_key bk = {.id = fe->id, .slot = bpf_get_prandom_u32() % fe->count};
	struct addr *be = bpf_map_lookup_elem(&backends, &bk);
	if (!be)
		return 0;
	struct fwd_val v = {.backend = *be, .syn_seq = tcp->seq};
	bpf_map_update_elem(&fwd, fk, &v, BPF_ANY);
	struct flow_key rk = {.client_ip = fk->client_ip, .client_port = fk->client_port, .peer_ip = be->ip, .peer_port = be->port};
	bpf_map_update_elem(&rev, &rk, front, BPF_ANY);
	count(0);
	*out = *be;
	return 1;
}

SEC("tc")
int nodeport_ingress(struct __sk_buff *skb)
{
	struct iphdr *ip;
	struct tcphdr *tcp;
	if (!parse(skb, &ip, &tcp))
		return TC_ACT_OK;
	struct addr front = {.ip = ip->daddr, .port = tcp->dest};
	struct frontend_val *fe = bpf_map_lookup_elem(&frontends, &front);
	if (!fe)
		return TC_ACT_OK;
	struct flow_key fk = {.client_ip = ip->saddr, .client_port = tcp->source, .peer_ip = ip->daddr, .peer_port = tcp->dest};
	struct addr be;
	if (!pick(&fk, fe, &front, tcp, &be))
		return TC_ACT_OK;
	__u32 saddr = ip->saddr;
	__u8 tos = ip->tos;
	__u16 tot_len = bpf_ntohs(ip->tot_len);
	rewrite(skb, IP_OFF + offsetof(struct iphdr, daddr), TCP_OFF + offsetof(struct tcphdr, dest), front.ip, be.ip,
		front.port, be.port);
	count(1);

	// Zeroed first, then set: a designated initializer left the
	// family unset here (the helper answered -EAFNOSUPPORT).
	struct bpf_fib_lookup fib;
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.tos = tos;
	fib.l4_protocol = IPPROTO_TCP;
	fib.tot_len = tot_len;
	fib.ifindex = skb->ingress_ifindex;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = be.ip;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if ((rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && fib.ifindex == skb->ingress_ifindex) {
		// Another node's pod: out of the same device to that node,
		// past this node's stack, as Cilium's NodePort does.
		struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst};
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	return TC_ACT_OK;
}

SEC("tc")
int nodeport_egress(struct __sk_buff *skb)
{
	struct iphdr *ip;
	struct tcphdr *tcp;
	if (!parse(skb, &ip, &tcp))
		return TC_ACT_OK;
	struct flow_key rk = {.client_ip = ip->daddr, .client_port = tcp->dest, .peer_ip = ip->saddr, .peer_port = tcp->source};
	struct addr *front = bpf_map_lookup_elem(&rev, &rk);
	if (!front)
		return TC_ACT_OK;
	struct addr f = *front;
	rewrite(skb, IP_OFF + offsetof(struct iphdr, saddr), TCP_OFF + offsetof(struct tcphdr, source), ip->saddr, f.ip,
		tcp->source, f.port);
	count(2);
	return TC_ACT_OK;
}
