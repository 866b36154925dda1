// Package kube keeps what the agent needs to know about Kubernetes objects:
// client-go informers stripped to a few fields, and an index from IP (and
// IP:port) to the object that held the address, with the time interval in
// which it held it. Connections are named by the object that owned an
// address when the connection happened, so a pod IP reused during a rollout
// is not attributed to the pod that had it before.
package kube

import (
	"net/netip"
	"slices"
	"time"
)

// Pod is the stripped view of a Pod.
type Pod struct {
	Namespace, Name, UID string
	Node                 string
	IP                   netip.Addr
	// IPs are all of status.podIPs (IP is the first); a dual-stack pod
	// has one per family. Empty means IP alone.
	IPs          []netip.Addr
	HostNetwork  bool
	Ready        bool
	Terminating  bool
	ReplicaSet   string
	Deployment   string
	TemplateHash string // label pod-template-hash
	HostPorts    []HostPort
}

// HostPort is a container port published on the node's address.
type HostPort struct {
	HostPort, ContainerPort uint16
}

// Node is the stripped view of a Node.
type Node struct {
	Name       string
	InternalIP netip.Addr
	// InternalIPs are all InternalIP addresses, both families on a
	// dual-stack node (InternalIP is the first). Empty means InternalIP alone.
	InternalIPs []netip.Addr
	Zone        string // topology.kubernetes.io/zone
	// Addresses are every address the node is known by, with how it was
	// learnt (NodeAddresses): status addresses, CNI annotations, pod CIDR
	// conventions. The index keys the node under each.
	Addresses []NodeAddress
}

// Addrs are every address of the pod: IPs, or IP alone.
func (p *Pod) Addrs() []netip.Addr { return addrsOf(p.IP, p.IPs) }

// Addrs are every InternalIP of the node: InternalIPs, or InternalIP alone.
func (n *Node) Addrs() []netip.Addr { return addrsOf(n.InternalIP, n.InternalIPs) }

// AddrFor is the node's InternalIP in a's family, or the zero Addr when the
// node has none in that family.
func (n *Node) AddrFor(a netip.Addr) netip.Addr {
	for _, ip := range n.Addrs() {
		if ip.Is4() == a.Is4() {
			return ip
		}
	}
	return netip.Addr{}
}

// HasAddr reports whether a is one of the node's InternalIPs.
func (n *Node) HasAddr(a netip.Addr) bool {
	for _, ip := range n.Addrs() {
		if ip == a {
			return true
		}
	}
	return false
}

// addrsOf is first plus the valid, distinct entries of all.
func addrsOf(first netip.Addr, all []netip.Addr) []netip.Addr {
	var out []netip.Addr
	if first.IsValid() {
		out = append(out, first)
	}
	for _, a := range all {
		if a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// ServicePort is one TCP or UDP port of a Service.
type ServicePort struct {
	Name       string
	Port       uint16
	NodePort   uint16
	TargetPort uint16 // 0 when it is a named port
	// Protocol is TCP or UDP; "" is TCP (the API's default).
	Protocol Protocol
}

// Protocol is a port's protocol as the API spells it. The index keys
// Services and endpoints by it: a UDP flow to ClusterIP:53 is named by
// the Service's UDP port, never by a TCP port of the same number (kube-dns
// has both; a NodePort number may be another Service's on the other
// protocol only in the same Service).
type Protocol string

// Protocols the agent captures (SCTP ports are not indexed).
const (
	ProtocolTCP Protocol = "TCP"
	ProtocolUDP Protocol = "UDP"
)

// norm maps "" (the API's default) to TCP.
func (p Protocol) norm() Protocol {
	if p == "" {
		return ProtocolTCP
	}
	return p
}

// protoAddr is an index key: an address and port of one protocol.
type protoAddr struct {
	proto Protocol
	ap    netip.AddrPort
}

// protoPort is a node port of one protocol.
type protoPort struct {
	proto Protocol
	port  uint16
}

// Service is the stripped view of a Service.
type Service struct {
	Namespace, Name string
	Type            string // ClusterIP, NodePort, LoadBalancer, ExternalName
	// ExternalName is spec.externalName of a Service of type
	// ExternalName: a DNS name the agent resolves itself (externalname.go).
	ExternalName string
	ClusterIPs   []netip.Addr
	Ports        []ServicePort
	// LBIngress are status.loadBalancer.ingress IPs.
	LBIngress []netip.Addr
	// LBHostnames are status.loadBalancer.ingress hostnames: a load
	// balancer known by a DNS name (AWS ELB/NLB) is provisioned, with the
	// hostname as its address.
	LBHostnames []string
	// ExternalIPs are spec.externalIPs: addresses the cluster's admin
	// routes to the nodes, which kube-proxy serves like a ClusterIP. No
	// load balancer; connections to them are entry externalip.
	ExternalIPs []netip.Addr
	// ExternalTrafficPolicy is Cluster or Local.
	ExternalTrafficPolicy string
	// HealthCheckNodePort is spec.healthCheckNodePort: under Local policy
	// a LoadBalancer's health checker probes it on every node, where
	// kube-proxy answers; 0 when the Service has none.
	HealthCheckNodePort uint16
	Created             time.Time
	// LBPendingSince is when the agent first saw this LoadBalancer Service
	// without an ingress address (its creation time if it never had one).
	LBPendingSince time.Time
	// SpanSampling and SlowThreshold override the agent's span sampling
	// for this Service's connections (annotations lbpath.io/span-sampling
	// and lbpath.io/slow-threshold); nil when not set or not valid.
	SpanSampling  *float64
	SlowThreshold *time.Duration
	// AnnotationErrors lists the annotations that did not parse (the
	// agent's settings apply instead).
	AnnotationErrors []string
}

// Key is namespace/name.
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Endpoint is one address of an EndpointSlice.
type Endpoint struct {
	IP          netip.Addr
	Node        string
	Ready       bool
	Serving     bool
	Terminating bool
	PodName     string
}

// Entry says how a connection addressed a Service.
type Entry string

// Entries.
const (
	EntryClusterIP    Entry = "clusterip"
	EntryNodePort     Entry = "nodeport"
	EntryLoadBalancer Entry = "loadbalancer"
	EntryDirect       Entry = "direct" // to a pod address, not through a Service
	// EntryExternalIP is a connection to one of the Service's
	// spec.externalIPs (no load balancer is involved).
	EntryExternalIP Entry = "externalip"
	// EntryExternalName is a connection to an address the Service's
	// spec.externalName resolved to when the agent last asked: a DNS
	// name, not a translation (no ClusterIP, no NAT).
	EntryExternalName Entry = "externalname"
	// EntryExternalNotVisible: the pod was reached from outside the
	// cluster through a translation lbpath proved but could not see
	// (a TC/XDP eBPF NodePort or load balancer, DSR): one of the
	// Service's external entries (NodePort, LoadBalancer, externalIP),
	// which one and on which node unknown (agent/path natvisible.go).
	EntryExternalNotVisible Entry = "external_not_visible"
	// EntryUnknown: a client outside the cluster reached the pod at its
	// own address and this node translated nothing; whether it dialled
	// the pod directly or something it cannot see translated a Service
	// on the way, lbpath cannot tell (agent/path natvisible.go).
	EntryUnknown Entry = "unknown"
)

// LBPending reports whether s is a LoadBalancer whose EXTERNAL-IP kubectl
// shows as <pending>: no ingress IP, no ingress hostname and no external IP.
func (s *Service) LBPending() bool {
	return s.Type == "LoadBalancer" && len(s.LBIngress) == 0 && len(s.LBHostnames) == 0 && len(s.ExternalIPs) == 0
}
