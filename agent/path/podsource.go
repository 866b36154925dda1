package path

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/podns"
)

// PodSource says how the pod that accepted a connection was named.
type PodSource string

// Pod sources.
const (
	// PodFromNetns: from the accepting socket's network namespace
	// (agent/podns): exact, whatever happened to the pod's IP.
	PodFromNetns PodSource = "netns"
	// PodFromIP: from the address the socket had, through the index of
	// who held which address when (agent/kube). Exact except while a
	// reused IP changes hands; the only source for records of other
	// nodes' pods (entry and client records), hostNetwork pods, and
	// where the namespace could not be read.
	PodFromIP PodSource = "ip_index"
	// PodUnnamed: no pod named.
	PodUnnamed PodSource = "unnamed"
)

// ipPod names the pod at ap at t from the address index.
func (n *Namer) ipPod(ap netip.AddrPort, at time.Time) *kube.Pod {
	if pod, ok := n.idx.PodAt(ap.Addr(), at); ok {
		return pod
	}
	if pod, ok := n.idx.HostPortAt(ap, at); ok {
		return pod
	}
	return nil
}

// sourced is the pod of a connection and how it was named.
type sourced struct {
	pod    *kube.Pod
	source PodSource
	// disagree: the namespace named one pod, the address index another
	// (the namespace is trusted).
	disagree bool
	// wait: the namespace is not resolved yet, or names a pod the index
	// has not seen yet; the caller may wait for it.
	wait bool
}

// podOf names the pod that accepted c: for a server socket with a network
// namespace id, from the namespace first; otherwise, and as fallback,
// from the address. late gives up waiting for the namespace.
func (n *Namer) podOf(c *flow.Connection, at time.Time, late bool) sourced {
	byIP := n.ipPod(c.PodDst, at)
	if c.Role == flow.RoleServer && n.cfg.Netns != nil && c.NetnsCookie != 0 {
		if s, ok := n.podByNetns(c.NetnsCookie, byIP, late); ok {
			return s
		}
	}
	if byIP == nil {
		return sourced{source: PodUnnamed}
	}
	return sourced{pod: byIP, source: PodFromIP}
}

// podByNetns names the pod from a namespace id; ok false falls back to
// the address.
func (n *Namer) podByNetns(id uint64, byIP *kube.Pod, late bool) (sourced, bool) {
	uid, st := n.cfg.Netns.Lookup(id)
	switch st {
	case podns.Pod:
		if pod, ok := n.idx.PodByUID(uid); ok {
			return sourced{pod: pod, source: PodFromNetns, disagree: byIP != nil && byIP.UID != uid}, true
		}
		// A pod the informer has not delivered yet (or a static pod,
		// whose cgroup carries its config hash, not its API UID).
		if !late {
			return sourced{wait: true}, true
		}
	case podns.Unknown:
		if !late {
			return sourced{wait: true}, true
		}
	}
	return sourced{}, false
}

// NamingCounts counts how the pods of the cluster's server records (the
// pod's own node's view) were named: by namespace, by address, or not at
// all, and how often the address index disagreed with the namespace.
type NamingCounts struct {
	n        [3]atomic.Uint64
	disagree atomic.Uint64
}

// Add counts one emitted record. Only server records whose class is not
// the node's own count: they are the ones a namespace can name.
func (nc *NamingCounts) Add(p *Path) {
	if p.Conn.Role != flow.RoleServer || p.Class.Node() {
		return
	}
	switch p.PodSource {
	case PodFromNetns:
		nc.n[0].Add(1)
	case PodFromIP:
		nc.n[1].Add(1)
	default:
		nc.n[2].Add(1)
	}
	if p.PodIPDisagrees {
		nc.disagree.Add(1)
	}
}

// NamingCount is one source's count.
type NamingCount struct {
	Source PodSource
	Count  uint64
}

// Snapshot returns the counts by source (all three, zeros included) and
// the disagreements.
func (nc *NamingCounts) Snapshot() (bySource []NamingCount, disagree uint64) {
	for i, s := range []PodSource{PodFromNetns, PodFromIP, PodUnnamed} {
		bySource = append(bySource, NamingCount{Source: s, Count: nc.n[i].Load()})
	}
	return bySource, nc.disagree.Load()
}

// requestPod names the pod that answered a request: by its socket's
// namespace when that is resolved already (requests do not wait), else by
// address.
func (n *Namer) requestPod(r *flow.Request, at time.Time) *kube.Pod {
	if n.cfg.Netns != nil && r.NetnsCookie != 0 {
		if uid, st := n.cfg.Netns.Lookup(r.NetnsCookie); st == podns.Pod {
			if pod, ok := n.idx.PodByUID(uid); ok {
				return pod
			}
		}
	}
	return n.ipPod(r.PodDst, at)
}
