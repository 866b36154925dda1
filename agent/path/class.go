package path

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// Class says whether a connection is the cluster's (it involves a pod or a
// Service) or the node's own, and then which kind. It is the record's
// `class` field and the attribute lbpath.connection.class
// (docs/TELEMETRY.md).
type Class string

// Classes. The node classes are counted in lbpath.agent.node_connections
// and are no incident: they touch no pod and no Service, so there is
// nothing to name.
const (
	// ClassCluster: a pod is an end of the connection, or the client
	// dialled a Service (ClusterIP, NodePort, LB IP, external IP).
	ClassCluster Class = "cluster"
	// ClassAPIServer: the server end is a kube-apiserver endpoint (an
	// address:port of the default/kubernetes EndpointSlice), dialled
	// directly, not through the kubernetes Service's ClusterIP.
	ClassAPIServer Class = "apiserver"
	// ClassKubelet: the server end is port 10250 on a node address (this
	// node's or another node's), either direction.
	ClassKubelet Class = "kubelet"
	// ClassNodeLocal: both ends are this node's own addresses or loopback
	// (loopback inside a pod's namespace, e.g. a sidecar, too: it touches
	// no pod address).
	ClassNodeLocal Class = "node_local"
	// ClassExternal: any other connection that touches no pod and no
	// Service: egress, sshd, node-to-node traffic other than the kubelet.
	ClassExternal Class = "external"
	// ClassLBHealthCheck: a load balancer's health probe of a Service
	// with externalTrafficPolicy Local: a client that is no pod and not
	// this node connected to this node's own address at the Service's
	// healthCheckNodePort, where kube-proxy answers (Path.HealthCheck names
	// the Service). A node class, not cluster: it is the node's
	// kube-proxy answering for the node, no pod is involved and the
	// Service's traffic is not; counted per Service in
	// lbpath.loadbalancer.health_probes.
	ClassLBHealthCheck Class = "lb_health_check"
	// ClassUnknown: lbpath cannot tell. An end could be a pod's address
	// that the Kubernetes metadata does not name (API server unreachable,
	// informers not synced or behind; counted as metadata/unattributed),
	// or the agent runs without the API server.
	ClassUnknown Class = "unknown"
)

// NodeClasses are the classes of the node's own traffic, in the order
// they are reported.
var NodeClasses = [...]Class{ClassNodeLocal, ClassAPIServer, ClassKubelet, ClassExternal, ClassLBHealthCheck}

// Node reports whether c is one of the node's own classes.
func (c Class) Node() bool { return c.nodeIndex() >= 0 }

func (c Class) nodeIndex() int {
	for i, n := range NodeClasses {
		if c == n {
			return i
		}
	}
	return -1
}

// kubeletPort is the kubelet's API port (its --port default, which every
// distribution keeps).
const kubeletPort = 10250

// apiServerService is the Service whose EndpointSlice lists the API
// server's own addresses.
const apiServerService = "default/kubernetes"

// ClassCounts counts the node's own connections by class.
type ClassCounts struct {
	n [len(NodeClasses)]atomic.Uint64
}

// Add counts one connection of class c; other classes are ignored.
func (cc *ClassCounts) Add(c Class) {
	if i := c.nodeIndex(); i >= 0 {
		cc.n[i].Add(1)
	}
}

// ClassCount is one class's count.
type ClassCount struct {
	Class Class
	Count uint64
}

// Snapshot returns every node class's count, zeros included, in
// NodeClasses order.
func (cc *ClassCounts) Snapshot() []ClassCount {
	out := make([]ClassCount, len(NodeClasses))
	for i, c := range NodeClasses {
		out[i] = ClassCount{Class: c, Count: cc.n[i].Load()}
	}
	return out
}

// Local is the node's own addresses, as last read from its network
// namespace (the agent refreshes it every second). Safe for concurrent use.
type Local struct {
	p atomic.Pointer[localAddrs]
}

type localAddrs struct {
	set map[netip.Addr]bool
	at  time.Time
}

// Set records the node's addresses as read at at.
func (l *Local) Set(addrs []netip.Addr, at time.Time) {
	set := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		set[a.Unmap()] = true
	}
	l.p.Store(&localAddrs{set: set, at: at})
}

// own says whether a is one of this node's addresses. known is false when
// it is not in the last read and that read is older than t: an address
// added since could be missing.
func (l *Local) own(a netip.Addr, t time.Time) (own, known bool) {
	if l == nil {
		return false, false
	}
	la := l.p.Load()
	if la == nil {
		return false, false
	}
	if la.set[a.Unmap()] {
		return true, true
	}
	return false, !la.at.Before(t)
}

// end is what one address of a connection is, as far as lbpath knows.
type end int

const (
	endUnknown   end = iota // could still be a pod's address
	endPod                  // a pod's (or a pod's host port)
	endLoopback             // 127.0.0.0/8, ::1
	endOwn                  // configured in this node's network namespace
	endNode                 // another node's InternalIP
	endAPIServer            // an endpoint of default/kubernetes
	endEndpoint             // a Service endpoint that is no pod
	endExternal             // no object owned it while the index was complete
)

// certain reports whether the end is known: a pod, or certainly none.
func (e end) certain() bool { return e != endUnknown }

// local reports whether the end is this node itself.
func (e end) local() bool { return e == endLoopback || e == endOwn }

// endOf classifies one address of a connection that started at t. server
// is true for the accepting end (where a pod's host port can be). late is
// true once the connection has waited the full MetadataWait.
//
// Which facts decide, and why they are certain:
//   - a pod named by the index at t: positive;
//   - loopback: never a pod's address nor a host port (host ports are
//     indexed on node InternalIPs);
//   - an address configured in this node's namespace other than the
//     node's InternalIP (known from the index): a pod's address lives in
//     the pod's namespace, never the node's — a kernel fact, needs no
//     metadata (a hostNetwork pod's host ports are indexed on the
//     InternalIP, which is why that one is left to the next rule);
//   - otherwise only while the index is current at t (kube.Freshness): an
//     own InternalIP (no host port owner), another node's InternalIP, an
//     apiserver or other non-pod endpoint are then certain at once;
//   - an address nothing owns is "external" only once the full
//     MetadataWait has passed as well: a new pod's IP can reach the API
//     server a little after its first connection (a kubelet probe), and
//     the index accepts an owner that appears within its slack after t.
func (n *Namer) endOf(ap netip.AddrPort, t time.Time, server, late bool) end {
	a := ap.Addr().Unmap()
	if _, ok := n.idx.PodAt(a, t); ok {
		return endPod
	}
	if server {
		if _, ok := n.idx.HostPortAt(ap, t); ok {
			return endPod
		}
	}
	if a.IsLoopback() {
		return endLoopback
	}
	own, ownKnown := n.cfg.Local.own(a, t)
	if own && n.notNodeIP(a) {
		return endOwn
	}
	if !n.current(t) {
		return endUnknown
	}
	svc, ep, isEP := n.idx.EndpointAt(ap, t)
	_, isNode := n.idx.NodeAt(a, t)
	switch {
	case isEP && svc == apiServerService:
		return endAPIServer
	case own:
		return endOwn
	case isNode:
		return endNode
	case isEP && ep.PodName == "":
		return endEndpoint
	case isEP:
		// The EndpointSlice names a pod the index does not have: not
		// proof of anything.
		return endUnknown
	case late && ownKnown:
		return endExternal
	}
	return endUnknown
}

// current reports whether the index held every change of the cluster at t.
func (n *Namer) current(t time.Time) bool { return n.cfg.Current != nil && n.cfg.Current(t) }

// notNodeIP reports whether a is certainly none of this node's InternalIPs
// (either family; on
// which the index keeps host ports): false while the node is unknown.
func (n *Namer) notNodeIP(a netip.Addr) bool {
	node, ok := n.idx.NodeByName(n.cfg.Node)
	return ok && len(node.Addrs()) > 0 && !node.HasAddr(a)
}

// classify decides p's class and whether naming is complete: every end
// that could be a pod's is named, or known to be no pod's. p's pod and
// Service are already looked up.
func (n *Namer) classify(p *Path, late bool) (Class, bool) {
	c := &p.Conn
	if p.Pod != nil || (c.Role == flow.RoleReject && p.Service != nil) {
		// Rejects have no pod side: a Service's ClusterIP refused.
		return ClassCluster, true
	}
	t := c.Start
	server := n.endOf(c.PodDst, t, true, late)
	client := n.endOf(c.Client, t, false, late)
	if server == endPod || client == endPod || p.Service != nil {
		// The cluster's: complete once the server end is named or known
		// to be no pod (a pod's egress, a Service backed by no pod such as
		// default/kubernetes).
		return ClassCluster, server.certain()
	}
	if !server.certain() || !client.certain() {
		return ClassUnknown, false
	}
	// The client dialled something that was translated: that address must
	// be no Service's either, which only the complete index can say.
	if c.Target != c.PodDst && !(late && n.current(t)) {
		return ClassUnknown, false
	}
	if s := n.healthCheckOf(c, server, client); s != nil {
		p.HealthCheck = s
		return ClassLBHealthCheck, true
	}
	return nodeClass(c, server, client), true
}

// healthCheckOf names the Service whose load balancer probed this node
// with c, or nil. A probe is a connection, not translated, to this node's
// own address (not loopback: a load balancer reaches the node over its
// network) at a port that was a Service's healthCheckNodePort when it
// started, from a client that is neither a pod nor this node: the
// lbsignals receiver probes from the collector's pod and an admin's curl
// on the node is node_local, so neither counts as the load balancer's.
// Rejected SYNs count too (outcome refused): the load balancer's probe
// arrived and nothing listened, as when kube-proxy is down.
func (n *Namer) healthCheckOf(c *flow.Connection, server, client end) *kube.Service {
	if server != endOwn || client.local() || client == endPod || c.Target != c.PodDst || c.Proto() != flow.TransportTCP {
		// Health checks are HTTP: a UDP flow to the same port number is not one.
		return nil
	}
	s, ok := n.idx.HealthCheckAt(c.PodDst.Port(), c.Start)
	if !ok {
		return nil
	}
	return s
}

func nodeClass(c *flow.Connection, server, client end) Class {
	switch {
	case server == endAPIServer:
		return ClassAPIServer
	case c.PodDst.Port() == kubeletPort && (server.local() || server == endNode):
		return ClassKubelet
	case server.local() && client.local():
		return ClassNodeLocal
	}
	return ClassExternal
}

// kernelLocal reports whether c's class is decided by kernel facts alone
// (both ends loopback or this node's own non-InternalIP addresses, nothing
// translated), so it need not wait for metadata to settle.
func (n *Namer) kernelLocal(c *flow.Connection) bool {
	if c.NAT != nil || c.Target != c.PodDst {
		return false
	}
	for _, ap := range []netip.AddrPort{c.PodDst, c.Client} {
		a := ap.Addr().Unmap()
		if a.IsLoopback() {
			continue
		}
		if own, _ := n.cfg.Local.own(a, c.Start); !own || !n.notNodeIP(a) {
			return false
		}
	}
	return true
}

// UnnamedClass classifies a connection without Kubernetes metadata: only
// kernel facts are available, so only loopback and this node's own
// addresses can be told apart (node_local, or kubelet on port 10250);
// anything else could be a pod's address and is unknown.
func UnnamedClass(c *flow.Connection, local *Local) Class {
	if c.NAT != nil || c.Target != c.PodDst {
		return ClassUnknown
	}
	for _, ap := range []netip.AddrPort{c.PodDst, c.Client} {
		a := ap.Addr().Unmap()
		if own, _ := local.own(a, c.Start); !own && !a.IsLoopback() {
			return ClassUnknown
		}
	}
	if c.PodDst.Port() == kubeletPort {
		return ClassKubelet
	}
	return ClassNodeLocal
}
