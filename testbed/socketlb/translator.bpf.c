//go:build ignore

// The testbed's socket load balancer: a cgroup/connect4 program that
// rewrites a Service's ClusterIP:port to one of its backends inside
// connect(), as Cilium's socket-LB (bpf_sock.c, cil_sock4_connect) does.
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
#define AF_INET 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct svc_key {
	__u32 ip;   // network byte order
	__u32 port; // network byte order, in the low 16 bits (as bpf_sock_addr.user_port)
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
	__u32 ip;   // network byte order
	__u32 port; // network byte order, low 16 bits
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

// translated[0] counts rewrites: the tests' ground truth that the
// translator, not kube-proxy, served their connections.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} translated SEC(".maps");

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET || ctx->protocol != IPPROTO_TCP)
		return 1;
	__u64 ns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&netns_allowed, &ns))
		return 1;
	struct svc_key k = {.ip = ctx->user_ip4, .port = ctx->user_port};
	struct svc_val *svc = bpf_map_lookup_elem(&services, &k);
	if (!svc || svc->count == 0)
		return 1; // no backends: left to the node (kube-proxy's REJECT)
	struct backend_key bk = {.id = svc->id, .slot = bpf_get_prandom_u32() % svc->count};
	struct backend_val *be = bpf_map_lookup_elem(&backends, &bk);
	if (!be)
		return 1;
	ctx->user_ip4 = be->ip;
	ctx->user_port = be->port;
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&translated, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 1;
}
