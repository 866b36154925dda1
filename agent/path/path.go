// Package path names every hop of a connection with Kubernetes objects:
// client → entry (LB IP, NodePort on a node, ClusterIP) → [cross-node hop] →
// pod, and attaches diagnoses an SRE acts on (client IP lost to SNAT,
// traffic to a not-ready pod, LoadBalancer pending, ...).
package path

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/podns"
)

// PeerKind says what a client address is.
type PeerKind string

// Peer kinds.
const (
	PeerPod      PeerKind = "pod"
	PeerNode     PeerKind = "node"
	PeerExternal PeerKind = "external"
)

// Peer is the client of a connection.
type Peer struct {
	Addr netip.AddrPort
	Kind PeerKind
	Pod  *kube.Pod  // when Kind is pod
	Node *kube.Node // when Kind is node (the node itself, or an SNAT address)
	// NodeAddr says how Addr is known to be Node's: its InternalIP, or a
	// tunnel or gateway address on an overlay (kube.NodeAddrSource).
	NodeAddr kube.NodeAddrSource
	// Lost is true when Addr is not the real client: another node SNATed
	// it and this view has no record of the original.
	Lost bool
}

// Diagnosis codes; messages are for humans, codes for alerts and filters.
const (
	DiagSNAT             = "client_ip_lost_snat"
	DiagCrossNode        = "cross_node_hop"
	DiagLocalNoEndpoint  = "local_policy_node_without_endpoint"
	DiagNoReadyEndpoints = "service_without_ready_endpoints"
	DiagEndpointNotReady = "endpoint_not_ready"
	DiagTerminating      = "endpoint_terminating"
	DiagLBPending        = "loadbalancer_pending"
	DiagRefused          = "connection_refused"
)

// Diagnosis is one finding about a connection's path.
type Diagnosis struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Path is a Connection with every hop named.
type Path struct {
	Conn      flow.Connection
	Client    Peer
	Entry     kube.Entry     // how the Service was addressed ("" when no Service)
	EntryAddr netip.AddrPort // the address dialled
	EntryNode string         // the node that translated it, when known
	Service   *kube.Service
	Pod       *kube.Pod // the pod that accepted the connection
	PodNode   string
	PodZone   string
	PodPort   uint16
	CrossNode bool
	SNAT      bool // the client's address was lost on the way
	// EndpointReady/Terminating are the EndpointSlice's view of the pod at
	// the time of the connection (Ready true when unknown).
	EndpointReady, EndpointTerminating bool
	Diagnoses                          []Diagnosis
	// Class says whether the connection is the cluster's or the node's
	// own, and which kind (see Class).
	Class Class
	// HealthCheck is the Service whose healthCheckNodePort the connection
	// probed (Class lb_health_check only). Not Service: the probe is not
	// the Service's traffic and must stay out of its metrics.
	HealthCheck *kube.Service
	// PodSource is how Pod was named (podsource.go).
	PodSource PodSource
	// PodIPDisagrees: the namespace named Pod, the address index another
	// pod (a reused IP changing hands).
	PodIPDisagrees bool
	// NATNotVisible is the reason of the nat_not_visible diagnosis, ""
	// when it does not apply (natvisible.go).
	NATNotVisible string
	// ServiceSource is how Service was named when it was not from an
	// address the cluster translates: ServiceSourceExternalName.
	ServiceSource string
	// ExternalNameAmbiguous: several ExternalName Services resolved to
	// the dialled address, so none is named; the pipeline counts the
	// connection once when it is emitted (kube ExternalNames.Ambiguous).
	ExternalNameAmbiguous bool
	// Ingress names the proxy hop when the client is an ingress proxy
	// pod and Service a backend its Ingress routes to.
	Ingress *kube.IngressHop
}

// ServiceSourceExternalName: Service is an ExternalName Service whose
// externalName the agent resolved to the dialled address; the pod's own
// lookup is not seen (no NAT, no proof the pod asked that name).
const ServiceSourceExternalName = "externalname_resolved"

// Config tunes the diagnoses.
type Config struct {
	// Node is this agent's node name.
	Node string
	// LBPendingAfter is how long a LoadBalancer may lack an EXTERNAL-IP
	// before it is diagnosed. Default 2m.
	LBPendingAfter time.Duration
	// Local is this node's own addresses; nil means none are known.
	Local *Local
	// Netns, when set, names a server socket's pod from its network
	// namespace first (podsource.go).
	Netns *podns.Resolver
	// Current reports whether the index held every change of the cluster
	// at a time (kube.Watcher.CurrentAt); nil means never. Without it no
	// address is known to be no pod's unless the kernel says so (loopback,
	// this node's own addresses).
	Current func(time.Time) bool
	// IsolatedPodNetwork declares that no host outside the cluster's
	// nodes reaches a pod address without translation (no route to the
	// pod CIDRs from outside, no load balancer with IP targets): a
	// client outside the cluster at a pod's own address, untranslated
	// here, then proves a translation lbpath cannot see
	// (natvisible.go). Without it such a connection's entry is unknown.
	IsolatedPodNetwork bool
	// Ingress, when set, names the proxy hop of connections from an
	// ingress proxy pod to a Service its Ingresses route to.
	Ingress *kube.Ingresses
}

// Stats counts naming results: Named the cluster's connections named,
// Node the node's own classified, PodUnknown attempts that left an end
// that could be a pod's unnamed (a connection may be tried several times).
type Stats struct {
	Named, Node, PodUnknown, ServiceUnknown atomic.Uint64
}

// Namer names connections from a kube.Index.
type Namer struct {
	cfg   Config
	idx   *kube.Index
	Stats Stats
}

// NewNamer returns a namer over idx.
func NewNamer(cfg Config, idx *kube.Index) *Namer {
	if cfg.LBPendingAfter == 0 {
		cfg.LBPendingAfter = 2 * time.Minute
	}
	return &Namer{cfg: cfg, idx: idx}
}

// Name builds the path of c. complete is false while an end of c could be
// a pod's address the index does not name: the caller may wait for
// metadata and try again, and finally call NameLate.
func (n *Namer) Name(c *flow.Connection) (p Path, complete bool) { return n.name(c, false) }

// NameLate is Name once c has waited the full metadata wait: an address no
// object owns is then taken as no pod's, if the index was current when c
// started (Config.Current). Still incomplete means unattributed.
func (n *Namer) NameLate(c *flow.Connection) (p Path, complete bool) { return n.name(c, true) }

func (n *Namer) name(c *flow.Connection, late bool) (p Path, complete bool) {
	at := c.Start
	p = Path{Conn: *c, EntryAddr: c.Target, SNAT: c.SNAT, EndpointReady: true, PodPort: c.PodDst.Port()}

	// Entry: the address the client dialled.
	if s, e, ok := n.idx.ServiceAtProto(c.Target, protoOf(c.Transport), at); ok {
		p.Service, p.Entry = s, e
	} else if c.Target != c.PodDst {
		n.Stats.ServiceUnknown.Add(1)
	} else {
		p.Entry = kube.EntryDirect
	}
	switch {
	case c.Role == flow.RoleForward || (c.NAT != nil && c.NAT.DNAT) || c.SocketLB:
		p.EntryNode = c.Node
	case c.Role == flow.RoleReject:
		p.EntryNode = c.Node
	}

	// Pod side.
	var pod sourced
	if c.Role != flow.RoleReject {
		pod = n.podOf(c, at, late)
		p.Pod, p.PodSource, p.PodIPDisagrees = pod.pod, pod.source, pod.disagree
	}
	if p.Pod != nil {
		p.PodNode = p.Pod.Node
		if node, ok := n.idx.NodeByName(p.Pod.Node); ok {
			p.PodZone = node.Zone
		}
		if svc, ep, ok := n.idx.EndpointAtProto(c.PodDst, protoOf(c.Transport), at); ok {
			if p.Service == nil {
				if s, ok := n.serviceByKey(svc); ok {
					p.Service = s
				}
			}
			p.EndpointReady, p.EndpointTerminating = ep.Ready, ep.Terminating
		} else {
			p.EndpointReady, p.EndpointTerminating = p.Pod.Ready, p.Pod.Terminating
		}
	} else if c.Role == flow.RoleServer {
		p.PodNode = c.Node
	}

	n.externalName(&p, at)
	// Client: what the pod side saw, unless a NAT record says more.
	p.Client = n.peer(c.Client, at)
	p.Class, complete = n.classify(&p, late)
	if pod.wait && !p.Class.Node() {
		// The namespace knows the pod; let it be resolved (or the pod's
		// object arrive) before naming from the address.
		complete = false
	}
	if p.Class.Node() {
		// The node's own: no pod, no Service, no entry; the SNAT and
		// cross-node inferences and the diagnoses are about pods.
		p.Entry, p.EntryNode, p.PodNode = "", "", ""
		n.Stats.Node.Add(1)
		return p, true
	}
	src := c.PodSrc
	if c.NAT == nil && c.Role == flow.RoleServer {
		// No translation here: if the source is another node's address,
		// that node SNATed it (Cluster policy): the hop crossed nodes and
		// the client's address is lost in this view. On an overlay the
		// address is the entry node's tunnel address, not its
		// InternalIP (kube.NodeAddresses).
		if node, ok := n.idx.NodeAt(src.Addr(), at); ok && node.Name != c.Node {
			p.Client.Lost = true
			p.SNAT = true
			p.EntryNode = node.Name
		}
	}
	if p.EntryNode != "" && p.PodNode != "" && p.EntryNode != p.PodNode {
		p.CrossNode = true
	}
	if !n.externalEntry(&p, late) {
		complete = false // is the client outside the cluster? Wait for the metadata.
	}
	if p.Client.Kind == PeerPod && !p.Client.Lost {
		p.Ingress, _ = n.idx.IngressHop(n.cfg.Ingress, p.Client.Pod, p.Service)
	}
	n.diagnose(&p)
	if complete {
		n.Stats.Named.Add(1)
	} else {
		n.Stats.PodUnknown.Add(1)
	}
	return p, complete
}

// externalName names the ExternalName Service of a connection dialled,
// untranslated, to an address no pod, node or Service address holds but an
// externalName resolved to (kube/externalname.go).
func (n *Namer) externalName(p *Path, at time.Time) {
	c := &p.Conn
	if p.Service != nil || p.Pod != nil || c.Target != c.PodDst || c.Role == flow.RoleReject {
		return
	}
	if _, ok := n.idx.NodeAt(c.Target.Addr(), at); ok {
		return
	}
	switch s, k := n.idx.ExternalNameAt(c.Target.Addr(), at); {
	case k == 1:
		p.Service, p.Entry, p.ServiceSource = s, kube.EntryExternalName, ServiceSourceExternalName
	case k > 1:
		p.ExternalNameAmbiguous = true
	}
}

// protoOf is the Service port protocol of a record's transport ("" is
// TCP): a UDP flow is named by UDP ports only.
func protoOf(transport string) kube.Protocol {
	if transport == flow.TransportUDP {
		return kube.ProtocolUDP
	}
	return kube.ProtocolTCP
}

func (n *Namer) serviceByKey(key string) (*kube.Service, bool) {
	for i := 0; i < len(key); i++ {
		if key[i] == '/' {
			return n.idx.Service(key[:i], key[i+1:])
		}
	}
	return nil, false
}

func (n *Namer) peer(a netip.AddrPort, at time.Time) Peer {
	if pod, ok := n.idx.PodAt(a.Addr(), at); ok {
		return Peer{Addr: a, Kind: PeerPod, Pod: pod}
	}
	if node, src, ok := n.idx.NodeAddrAt(a.Addr(), at); ok {
		return Peer{Addr: a, Kind: PeerNode, Node: node, NodeAddr: src}
	}
	return Peer{Addr: a, Kind: PeerExternal}
}

func (n *Namer) diagnose(p *Path) {
	add := func(code, format string, args ...any) {
		p.Diagnoses = append(p.Diagnoses, Diagnosis{Code: code, Message: fmt.Sprintf(format, args...)})
	}
	svcName := "the Service"
	if p.Service != nil {
		svcName = "Service " + p.Service.Key()
	}
	if p.SNAT {
		by := p.EntryNode
		if by == "" {
			by = "the entry node"
		}
		add(DiagSNAT, "client address lost: %s rewrote the source (externalTrafficPolicy Cluster); the pod saw %v", by, p.Conn.PodSrc)
	}
	if p.CrossNode {
		add(DiagCrossNode, "entered on %s, served on %s: one extra node hop", p.EntryNode, p.PodNode)
	}
	if p.Conn.Outcome == flow.OutcomeRefused {
		add(DiagRefused, "connection to %v refused", p.EntryAddr)
	}
	if p.Service != nil && p.Service.ExternalName == "" {
		// An ExternalName Service has no endpoints by design.
		all, onEntry := n.idx.ReadyEndpoints(p.Service.Key(), p.EntryNode)
		if all == 0 {
			add(DiagNoReadyEndpoints, "%s has no ready endpoints", svcName)
		}
		if p.Service.ExternalTrafficPolicy == "Local" && p.EntryNode != "" && onEntry == 0 && all > 0 &&
			(p.Entry == kube.EntryNodePort || p.Entry == kube.EntryLoadBalancer || p.Entry == kube.EntryExternalIP) {
			add(DiagLocalNoEndpoint, "%s has externalTrafficPolicy Local and node %s has no ready endpoint: traffic sent there is dropped", svcName, p.EntryNode)
		}
		if p.Service.LBPending() && !p.Service.LBPendingSince.IsZero() &&
			p.Conn.Start.Sub(p.Service.LBPendingSince) > n.cfg.LBPendingAfter {
			add(DiagLBPending, "%s is type LoadBalancer but its EXTERNAL-IP has been pending for %s", svcName,
				p.Conn.Start.Sub(p.Service.LBPendingSince).Round(time.Second))
		}
	}
	n.natNotVisible(p, add)
	if p.Pod != nil {
		if p.EndpointTerminating {
			add(DiagTerminating, "pod %s/%s was terminating when it got this connection", p.Pod.Namespace, p.Pod.Name)
		} else if !p.EndpointReady {
			add(DiagEndpointNotReady, "pod %s/%s was not ready when it got this connection", p.Pod.Namespace, p.Pod.Name)
		}
	}
}

// Inventory is cluster-level findings that are not about one connection.
type Inventory struct {
	LoadBalancers int      // Services of type LoadBalancer: one cloud LB each
	Pending       []string // LoadBalancer Services whose EXTERNAL-IP is pending past the threshold
	Hint          string
}

// Inventory reports LoadBalancer Services and pending ones at now.
func (n *Namer) Inventory(now time.Time) Inventory {
	var inv Inventory
	for _, s := range n.idx.Services() {
		if s.Type != "LoadBalancer" {
			continue
		}
		inv.LoadBalancers++
		if s.LBPending() && !s.LBPendingSince.IsZero() && now.Sub(s.LBPendingSince) > n.cfg.LBPendingAfter {
			inv.Pending = append(inv.Pending, s.Key())
		}
	}
	if inv.LoadBalancers > 3 {
		inv.Hint = fmt.Sprintf("%d Services of type LoadBalancer each provision a cloud load balancer; HTTP Services can share one through an Ingress or Gateway", inv.LoadBalancers)
	}
	return inv
}
