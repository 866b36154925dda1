//go:build ignore

// The destination an application asked for at connect(), captured before a
// socket load balancer (Cilium's socket-LB, GKE Dataplane V2: a cgroup
// connect4/6 program) rewrites it to a backend. Such a translation leaves no
// conntrack entry: without this capture the connection reads as "direct to
// pod".
//
// Three hooks, each once per connect() (never per packet):
//   - syscalls/sys_enter_connect runs in the calling thread before the cgroup
//     program: it keeps the user's sockaddr and fd per thread (pid_tgid);
//   - tp_btf/inet_sock_set_state at SYN_SENT runs in the same thread inside
//     connect(), after the rewrite: the socket's daddr is the backend. It
//     checks that the kept fd is this very socket (task → fd table → file →
//     socket → sk), so a record left by a UDP connect() or one that failed
//     before the SYN is never taken for this socket, and emits a record
//     keyed by the socket cookie into the capture's ring buffer when the
//     destination changed. The cookie joins it with the socket's lifecycle
//     events in user space;
//   - syscalls/sys_exit_connect takes what no SYN took: a connected UDP
//     socket's connect() (a socket-LB translates those too), recorded by
//     the socket's four-tuple and netns for the UDP flow to join.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Mirrored in capture/connect.go. Far from lbpath.bpf.c's 1..4 so other
// captures sharing the ring buffer can add types without colliding.
#define EV_CONNECT 16

// Counter slots of connect_counters; mirrored in capture/connect.go.
enum connect_counter {
	CC_RB_DROP = 0,       // ring buffer full: a translation not reported
	CC_NO_CONNECT = 1,    // SYN_SENT without a connect() of this thread (io_uring, TCP Fast Open, kernel sockets)
	CC_FD_MISMATCH = 2,   // the thread's last connect() was on another socket
	CC_UNCHANGED = 3,     // connect() kept its destination (no socket-LB rewrite)
	CC_TRANSLATED = 4,    // connect() destination rewritten: reported
	CC_UDP_UNCHANGED = 5, // UDP connect() kept its destination
	CC_UDP_TRANSLATED = 6, // UDP connect() destination rewritten: reported
	CC_MAX = 8,
};

// What sys_enter_connect keeps for its thread until the SYN.
struct pending {
	__u64 ts_ns;
	__u8 addr[16];
	__u32 fd;
	__u16 port; // network byte order, as in the sockaddr
	__u16 family;
};

// Crosses the shared ring buffer. Same size as lbpath.bpf.c's struct event
// and the type at the same offset (94), so the reader dispatches on it.
struct connect_event {
	__u64 cookie;
	__u64 start_ns;   // sys_enter_connect
	__u64 ts_ns;      // SYN_SENT
	__u8 dialed[16];  // what the application asked for
	__u8 saddr[16];   // local address chosen by the kernel (port not yet bound)
	__u8 daddr[16];   // the socket's peer after the rewrite
	__u32 netns;
	__u32 tgid;
	__u16 lport;      // host byte order; UDP only (TCP binds after SYN_SENT)
	__u8 protocol;    // IPPROTO_TCP or IPPROTO_UDP
	__u8 _r0;
	__s32 _r1;
	__u16 dialed_port; // host byte order
	__u16 dport;       // host byte order
	__u16 family;      // of the socket
	__u8 type;
	__u8 dialed_family; // 4 or 6
	__u8 _pad[8];
};

const struct connect_event *unused_connect_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // pid_tgid
	__type(value, struct pending);
} connect_pending SEC(".maps");

// Replaced at load time by the capture's ring buffer (lbpath.bpf.c's
// `events`), so connect records are ordered before the same socket's OPEN
// and CLOSE records.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CC_MAX);
	__type(key, __u32);
	__type(value, __u64);
} connect_counters SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&connect_counters, &slot);
	if (v)
		*v += 1;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int on_sys_connect(struct trace_event_raw_sys_enter *ctx)
{
	const void *uaddr = (const void *)ctx->args[1];
	__u64 len = ctx->args[2];
	__u16 family = 0;
	if (!uaddr || len < sizeof(struct sockaddr_in))
		return 0;
	if (bpf_probe_read_user(&family, sizeof(family), uaddr) != 0)
		return 0;
	struct pending p = {};
	if (family == AF_INET) {
		struct sockaddr_in sin;
		if (bpf_probe_read_user(&sin, sizeof(sin), uaddr) != 0)
			return 0;
		__builtin_memcpy(p.addr, &sin.sin_addr.s_addr, 4);
		p.port = sin.sin_port;
	} else if (family == AF_INET6) {
		struct sockaddr_in6 sin6;
		if (len < sizeof(sin6) || bpf_probe_read_user(&sin6, sizeof(sin6), uaddr) != 0)
			return 0;
		__builtin_memcpy(p.addr, &sin6.sin6_addr, 16);
		p.port = sin6.sin6_port;
	} else {
		return 0; // AF_UNIX and the rest: no Service there
	}
	p.family = family;
	p.fd = (__u32)ctx->args[0];
	p.ts_ns = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&connect_pending, &id, &p, BPF_ANY);
	return 0;
}

// sock_of_fd is the sock behind fd in the current task's table, NULL if
// none (a probe-read pointer: read it with BPF_CORE_READ).
static __always_inline struct sock *sock_of_fd(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) != 0 || !f)
		return NULL;
	struct socket *so = BPF_CORE_READ(f, private_data);
	if (!so)
		return NULL;
	return BPF_CORE_READ(so, sk);
}

// fd_is_sock reports whether fd in the current task's table is sk.
static __always_inline bool fd_is_sock(__u32 fd, const struct sock *sk)
{
	struct sock *got = sock_of_fd(fd);
	return got && got == sk;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_connect_syn, const struct sock *sk, const int oldstate, const int newstate)
{
	if (newstate != TCP_SYN_SENT)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct pending *p = bpf_map_lookup_elem(&connect_pending, &id);
	if (!p) {
		count(CC_NO_CONNECT);
		return 0;
	}
	struct pending pc = *p;
	bpf_map_delete_elem(&connect_pending, &id);
	if (!fd_is_sock(pc.fd, sk)) {
		count(CC_FD_MISMATCH);
		return 0;
	}

	__u8 daddr[16] = {};
	__u8 saddr[16] = {};
	__u32 *d32 = (__u32 *)daddr, *s32 = (__u32 *)saddr;
	if (family == AF_INET) {
		d32[0] = sk->__sk_common.skc_daddr;
		s32[0] = sk->__sk_common.skc_rcv_saddr;
	} else {
		for (int i = 0; i < 4; i++) {
			d32[i] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[i];
			s32[i] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[i];
		}
	}
	__u16 dport = sk->__sk_common.skc_dport; // network byte order
	bool same = dport == pc.port;
	if (same) {
		if (pc.family == family) {
			int n = family == AF_INET ? 4 : 16;
			for (int i = 0; i < 16; i++)
				if (i < n && daddr[i] != pc.addr[i])
					same = false;
		} else {
			same = false; // compared in user space would be wiser; rare (v4 sockaddr on a v6 socket is EAFNOSUPPORT)
		}
	}
	if (same) {
		count(CC_UNCHANGED);
		return 0;
	}

	struct connect_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CC_RB_DROP);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->cookie = bpf_get_socket_cookie((void *)sk);
	e->start_ns = pc.ts_ns;
	e->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->dialed, pc.addr, 16);
	__builtin_memcpy(e->saddr, saddr, 16);
	__builtin_memcpy(e->daddr, daddr, 16);
	e->netns = sk->__sk_common.skc_net.net->ns.inum;
	e->tgid = id >> 32;
	e->dialed_port = bpf_ntohs(pc.port);
	e->dport = bpf_ntohs(dport);
	e->family = family;
	e->protocol = IPPROTO_TCP;
	e->type = EV_CONNECT;
	e->dialed_family = pc.family == AF_INET ? 4 : 6;
	// No wakeup: the reader polls every few milliseconds, and the shared
	// ring buffer keeps this record ahead of the socket's OPEN and CLOSE.
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	count(CC_TRANSLATED);
	return 0;
}

// A connected UDP socket has no SYN: its connect() is over at the
// syscall's exit, where the thread's kept sockaddr (not taken by a TCP
// SYN_SENT) is compared with the peer the socket got. The exit also drops
// what a failed connect() left. The record names the socket by its
// now-bound four-tuple and netns, not its cookie: bpf_get_socket_cookie is
// not offered to syscall tracepoint programs and the socket's own cookie
// is assigned lazily (still 0 before its first datagram); a connected UDP
// socket owns its four-tuple in its netns, which the UDP flow carries.
SEC("tracepoint/syscalls/sys_exit_connect")
int on_sys_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending *p = bpf_map_lookup_elem(&connect_pending, &id);
	if (!p)
		return 0; // taken by a TCP SYN_SENT, or no connect() kept
	struct pending pc = *p;
	bpf_map_delete_elem(&connect_pending, &id);
	if (ctx->ret != 0)
		return 0;
	struct sock *sk = sock_of_fd(pc.fd);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_UDP)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	__u8 daddr[16] = {};
	__u8 saddr[16] = {};
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)daddr, sk, __sk_common.skc_daddr);
		BPF_CORE_READ_INTO((__u32 *)saddr, sk, __sk_common.skc_rcv_saddr);
	} else {
		BPF_CORE_READ_INTO(&daddr, sk, __sk_common.skc_v6_daddr);
		BPF_CORE_READ_INTO(&saddr, sk, __sk_common.skc_v6_rcv_saddr);
	}
	__u16 dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	bool same = dport == pc.port && pc.family == family;
	if (same) {
		int n = family == AF_INET ? 4 : 16;
		for (int i = 0; i < 16; i++)
			if (i < n && daddr[i] != pc.addr[i])
				same = false;
	}
	if (same) {
		count(CC_UDP_UNCHANGED);
		return 0;
	}
	struct connect_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CC_RB_DROP);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->start_ns = pc.ts_ns;
	e->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->dialed, pc.addr, 16);
	__builtin_memcpy(e->saddr, saddr, 16);
	__builtin_memcpy(e->daddr, daddr, 16);
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e->tgid = id >> 32;
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->protocol = IPPROTO_UDP;
	e->dialed_port = bpf_ntohs(pc.port);
	e->dport = bpf_ntohs(dport);
	e->family = family;
	e->type = EV_CONNECT;
	e->dialed_family = pc.family == AF_INET ? 4 : 6;
	// The flow's record is emitted seconds later (idle), so no wakeup.
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	count(CC_UDP_TRANSLATED);
	return 0;
}
