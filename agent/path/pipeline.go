package path

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// Request is a request/response turn named with its pod and Service.
type Request struct {
	Req     flow.Request
	Pod     *kube.Pod
	Service *kube.Service
	// Ingress names the proxy hop when the request came from an ingress
	// proxy pod (see Path.Ingress).
	Ingress *kube.IngressHop
}

// PipelineConfig bounds the wait for metadata.
type PipelineConfig struct {
	// MetadataWait is how long a connection whose pod cannot be named yet
	// (informers behind, API server down) waits before it is emitted with
	// what is known. Default 2s.
	MetadataWait time.Duration
	// MaxWaiting bounds the connections waiting; past it they are emitted
	// at once, unattributed. Default 16384.
	MaxWaiting int
	// Settle is how long after a connection started it is first named:
	// informer events arrive a little after the change they report, and a
	// pod IP reused during a rollout must be named by its new owner even
	// if the connection closed before the watch caught up. Default 1s.
	Settle time.Duration
}

// PipelineStats counts what could not be named.
type PipelineStats struct {
	// Unattributed counts connections emitted without their pod named.
	Unattributed atomic.Uint64
	// WaitFull counts connections that could not wait for metadata.
	WaitFull atomic.Uint64
	// RequestsUnattributed counts requests whose server could be a pod
	// that could not be named.
	RequestsUnattributed atomic.Uint64
	// RequestsNode counts requests answered by no pod (a server of the
	// node's own, certainly): not in the per-pod request metrics, and no
	// loss.
	RequestsNode atomic.Uint64
}

type waiting struct {
	conn     flow.Connection
	settleAt time.Time // name no earlier than this
	deadline time.Time // give up on names at this
}

// Pipeline names connections, holding back for a bounded time those whose
// metadata has not arrived, so an API server outage costs names, never
// records, and never unbounded memory.
type Pipeline struct {
	namer *Namer
	cfg   PipelineConfig
	emit  func(*Path)
	req   func(*Request)
	Stats PipelineStats

	mu   sync.Mutex
	wait []waiting
}

// NewPipeline returns a pipeline that calls emit for every named (or given
// up on) connection and req for every request. Both run with the pipeline
// locked and must not keep the pointer.
func NewPipeline(n *Namer, cfg PipelineConfig, emit func(*Path), req func(*Request)) *Pipeline {
	if cfg.MetadataWait == 0 {
		cfg.MetadataWait = 2 * time.Second
	}
	if cfg.MaxWaiting == 0 {
		cfg.MaxWaiting = 16384
	}
	if cfg.Settle == 0 {
		cfg.Settle = time.Second
	}
	return &Pipeline{namer: n, cfg: cfg, emit: countAmbiguous(n, emit), req: req}
}

// countAmbiguous counts each emitted connection left unnamed because
// several ExternalName Services resolved to its address: once, here, as a
// connection waiting for metadata is named again on every tick.
func countAmbiguous(n *Namer, emit func(*Path)) func(*Path) {
	return func(p *Path) {
		if p.ExternalNameAmbiguous {
			n.idx.ExternalNames.Ambiguous.Add(1)
		}
		emit(p)
	}
}

// Namer returns the namer (for inventory and stats).
func (pl *Pipeline) Namer() *Namer { return pl.namer }

// Connection names c once the metadata of its start time has settled, and
// queues it (bounded) until then or until its metadata arrives.
func (pl *Pipeline) Connection(c *flow.Connection) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	now := time.Now()
	settleAt := c.Start.Add(pl.cfg.Settle)
	// Loopback and the node's own addresses are kernel facts that no
	// informer event can change: no need to let the metadata settle.
	if !now.Before(settleAt) || pl.namer.kernelLocal(c) {
		p, complete := pl.namer.Name(c)
		if complete {
			pl.emit(&p)
			return
		}
	}
	if len(pl.wait) >= pl.cfg.MaxWaiting {
		p, complete := pl.namer.Name(c)
		pl.Stats.WaitFull.Add(1)
		if !complete {
			pl.Stats.Unattributed.Add(1)
		}
		pl.emit(&p)
		return
	}
	deadline := now.Add(pl.cfg.MetadataWait)
	if d := settleAt.Add(pl.cfg.MetadataWait); d.After(deadline) {
		deadline = d
	}
	pl.wait = append(pl.wait, waiting{conn: *c, settleAt: settleAt, deadline: deadline})
}

// Request names a request by its pod (requests do not wait: they are
// aggregated into metrics, and a pod that is unknown now is counted).
func (pl *Pipeline) Request(r *flow.Request) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	at := r.Start
	out := Request{Req: *r}
	if pod := pl.namer.requestPod(r, at); pod != nil {
		out.Pod = pod
	} else if e := pl.namer.endOf(r.PodDst, at, true, false); e.certain() {
		// A server of the node's own (sshd, the kubelet, a hostNetwork
		// daemon without a declared port): not the per-pod metrics'.
		pl.Stats.RequestsNode.Add(1)
		return
	} else {
		pl.Stats.RequestsUnattributed.Add(1)
	}
	if svc, _, ok := pl.namer.idx.EndpointAtProto(r.PodDst, protoOf(r.Transport), at); ok {
		out.Service, _ = pl.namer.serviceByKey(svc)
	}
	if out.Service != nil && pl.namer.cfg.Ingress != nil {
		if client, ok := pl.namer.idx.PodAt(r.PodSrc.Addr(), at); ok {
			out.Ingress, _ = pl.namer.idx.IngressHop(pl.namer.cfg.Ingress, client, out.Service)
		}
	}
	pl.req(&out)
}

// Tick names waiting connections whose metadata has settled, and gives up
// on those past their wait.
func (pl *Pipeline) Tick(now time.Time) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	keep := pl.wait[:0]
	for i := range pl.wait {
		w := &pl.wait[i]
		if now.Before(w.settleAt) {
			keep = append(keep, *w)
			continue
		}
		late := !now.Before(w.deadline)
		var p Path
		var complete bool
		if late {
			p, complete = pl.namer.NameLate(&w.conn)
		} else {
			p, complete = pl.namer.Name(&w.conn)
		}
		switch {
		case complete:
			pl.emit(&p)
		case late:
			pl.Stats.Unattributed.Add(1)
			pl.emit(&p)
		default:
			keep = append(keep, *w)
		}
	}
	clear(pl.wait[len(keep):])
	pl.wait = keep
}

// Flush emits everything still waiting.
func (pl *Pipeline) Flush() {
	pl.Tick(time.Now().Add(24 * time.Hour))
}

// Waiting is how many connections wait for metadata.
func (pl *Pipeline) Waiting() int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return len(pl.wait)
}

// Unnamed builds a path with no Kubernetes names, for agents running without
// an API server; local (may be nil) is the node's own addresses, which
// classify what kernel facts alone can (UnnamedClass).
func Unnamed(c *flow.Connection, local *Local) Path {
	p := Path{Conn: *c, EntryAddr: c.Target, SNAT: c.SNAT, EndpointReady: true, PodPort: c.PodDst.Port(),
		EntryNode: entryNodeOf(c), Client: Peer{Addr: c.Client}, Class: UnnamedClass(c, local)}
	switch c.Role {
	case flow.RoleServer:
		p.PodNode = c.Node
	case flow.RoleForward:
		// Translated here and accepted by no local socket: the pod is on
		// another node.
		p.CrossNode = true
	}
	return p
}

func entryNodeOf(c *flow.Connection) string {
	if c.Role == flow.RoleForward || c.Role == flow.RoleReject || (c.NAT != nil && c.NAT.DNAT) {
		return c.Node
	}
	return ""
}
