//go:build ignore

// The testbed's socket load balancer: cgroup/connect4 and connect6 programs
// that rewrite a Service's ClusterIP:port (TCP, or UDP on a connected
// socket) to one of its backends inside connect(), as Cilium's socket-LB
// (bpf_sock.c, cil_sock4_connect / cil_sock6_connect) does.
// No packet is ever addressed to the ClusterIP and no conntrack entry
// records the translation.
//
// It is attached to the cgroup v2 root, which covers every process on the
// machine: it only touches connects from network namespaces the testbed
// registered (netns_allowed, by netns cookie) to a Service the testbed
// registered (services); everything else returns untouched.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Addresses are 16 bytes, IPv4 as v4-mapped (::ffff:a.b.c.d), so one map
// serves connect4 and connect6 and a v6 socket dialling a v4-mapped
// ClusterIP finds the IPv4 Service (Cilium does the same).
struct svc_key {
	__u32 ip[4]; // network byte order
	__u16 port;  // network byte order
	__u8 proto;  // IPPROTO_TCP or IPPROTO_UDP
	__u8 _pad;
};

struct svc_val {
	__u32 count; // backends 0..count-1 in backends
	__u32 id;    // service id, the backends' key prefix
};

struct backend_key {
	__u32 id;
	__u32 slot;
};

struct backend_val {
	__u32 ip[4]; // network byte order, IPv4 v4-mapped
	__u16 port;  // network byte order
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct backend_key);
	__type(value, struct backend_val);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64); // netns cookie
	__type(value, __u8);
} netns_allowed SEC(".maps");

// Translation counters: the tests' ground truth that the translator, not
// kube-proxy, served their connections.
enum slot {
	T_ALL = 0,  // every rewrite
	T_V6 = 1,   // by connect6 (v4-mapped included)
	T_UDP = 2,  // of UDP sockets
	T_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, T_MAX);
	__type(key, __u32);
	__type(value, __u64);
} translated SEC(".maps");

static __always_inline void bump(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&translated, &slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

// pick returns the backend for a connect to k from an allowed namespace,
// or NULL to leave the connect alone (not a Service, no backends: left to
// the node, e.g. kube-proxy's REJECT).
static __always_inline struct backend_val *pick(struct bpf_sock_addr *ctx, struct svc_key *k)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return NULL;
	__u64 ns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&netns_allowed, &ns))
		return NULL;
	k->proto = ctx->protocol;
	struct svc_val *svc = bpf_map_lookup_elem(&services, k);
	if (!svc || svc->count == 0)
		return NULL;
	struct backend_key bk = {.id = svc->id, .slot = bpf_get_prandom_u32() % svc->count};
	return bpf_map_lookup_elem(&backends, &bk);
}

static __always_inline void counted(struct bpf_sock_addr *ctx, int v6)
{
	bump(T_ALL);
	if (v6)
		bump(T_V6);
	if (ctx->protocol == IPPROTO_UDP)
		bump(T_UDP);
}

// Connected UDP sockets are translated here too: connect() on a UDP
// socket fixes its peer, and every datagram goes to the backend.
SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	struct svc_key k = {.ip = {0, 0, bpf_htonl(0xffff), ctx->user_ip4}, .port = (__u16)ctx->user_port};
	struct backend_val *be = pick(ctx, &k);
	if (!be || be->ip[0] || be->ip[1] || be->ip[2] != bpf_htonl(0xffff))
		return 1; // an IPv4 socket can only go to an IPv4 backend
	ctx->user_ip4 = be->ip[3];
	ctx->user_port = be->port;
	counted(ctx, 0);
	return 1;
}

// connect6 is Cilium's cil_sock6_connect: a ClusterIPv6 to an IPv6
// backend, and a v4-mapped ClusterIP (a dual-stack socket dialling IPv4)
// to the v4-mapped backend.
SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx)
{
	struct svc_key k = {.port = (__u16)ctx->user_port};
	k.ip[0] = ctx->user_ip6[0];
	k.ip[1] = ctx->user_ip6[1];
	k.ip[2] = ctx->user_ip6[2];
	k.ip[3] = ctx->user_ip6[3];
	struct backend_val *be = pick(ctx, &k);
	if (!be)
		return 1;
	ctx->user_ip6[0] = be->ip[0];
	ctx->user_ip6[1] = be->ip[1];
	ctx->user_ip6[2] = be->ip[2];
	ctx->user_ip6[3] = be->ip[3];
	ctx->user_port = be->port;
	counted(ctx, 1);
	return 1;
}
