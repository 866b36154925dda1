package testbed

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"slices"
)

// ProxyMode names a kube-proxy mode, i.e. which kernel interface writes the
// service NAT.
type ProxyMode string

// The kube-proxy modes the testbed can emulate.
const (
	ModeIPTables ProxyMode = "iptables"
	ModeNFTables ProxyMode = "nftables"
)

// Policy is a Service's externalTrafficPolicy.
type Policy string

// The two externalTrafficPolicy values.
const (
	// PolicyCluster spreads external traffic over all endpoints and SNATs
	// it to the entry node, so pods see a node IP.
	PolicyCluster Policy = "Cluster"
	// PolicyLocal keeps external traffic on the entry node's endpoints and
	// preserves the client source address.
	PolicyLocal Policy = "Local"
)

// masqMark is kube-proxy's default masquerade bit (--iptables-masquerade-bit 14).
const masqMark = "0x4000"

// Endpoint is one backend of a Service.
type Endpoint struct {
	// Pod is the pod name; Node is the name of the node it runs on
	// ("node1"), which the writers compare against to find local endpoints.
	Pod  string
	Node string
	IP   netip.Addr
	Port uint16
}

// AddrPort is the endpoint's DNAT target.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, e.Port) }

// Service is a single-port TCP Service of type LoadBalancer, the only shape
// the testbed needs.
type Service struct {
	Namespace string
	Name      string
	// PortName is the service port's name; kube-proxy hashes it into chain
	// names.
	PortName  string
	ClusterIP netip.Addr
	// Port is the service port on both the ClusterIP and the LB IP.
	Port           uint16
	NodePort       uint16
	LoadBalancerIP netip.Addr
	TargetPort     uint16
	// Policy is externalTrafficPolicy; internalTrafficPolicy is always
	// Cluster.
	Policy    Policy
	Endpoints []Endpoint
	// ClusterIPs and LoadBalancerIPs are one per family of the cluster,
	// ClusterIP and LoadBalancerIP (the primary family's) first. Endpoints
	// list primary-family addresses: the built-in writers render IPv4
	// only, and kube-proxy reads EndpointSlices instead.
	ClusterIPs      []netip.Addr
	LoadBalancerIPs []netip.Addr
}

// ClusterAddr is the ClusterIP:port, reachable only from inside the cluster.
func (s Service) ClusterAddr() netip.AddrPort { return netip.AddrPortFrom(s.ClusterIP, s.Port) }

// LoadBalancerAddr is the LB IP:port, reachable from the external client via
// the node chosen with Cluster.RouteLB.
func (s Service) LoadBalancerAddr() netip.AddrPort {
	return netip.AddrPortFrom(s.LoadBalancerIP, s.Port)
}

// NodePortAddr is the NodePort on the given node's LAN IP.
func (s Service) NodePortAddr(n *Node) netip.AddrPort { return netip.AddrPortFrom(n.IP, s.NodePort) }

// portName is kube-proxy's ServicePortName.String(), the input of its chain
// name hashes.
func (s Service) portName() string { return s.Namespace + "/" + s.Name + ":" + s.PortName }

// sortedEndpoints orders endpoints by IP so rule output is deterministic and
// diffable between syncs.
func (s Service) sortedEndpoints() []Endpoint {
	eps := slices.Clone(s.Endpoints)
	slices.SortFunc(eps, func(a, b Endpoint) int { return a.IP.Compare(b.IP) })
	return eps
}

// localEndpoints are the endpoints on node, the only ones an
// externalTrafficPolicy=Local service may use for external traffic there.
func (s Service) localEndpoints(node string) []Endpoint {
	var out []Endpoint
	for _, e := range s.sortedEndpoints() {
		if e.Node == node {
			out = append(out, e)
		}
	}
	return out
}

func (s Service) clone() Service {
	s.Endpoints = slices.Clone(s.Endpoints)
	s.ClusterIPs = slices.Clone(s.ClusterIPs)
	s.LoadBalancerIPs = slices.Clone(s.LoadBalancerIPs)
	return s
}

// ServiceState is everything a NATWriter needs to program one node: the
// cluster's address ranges and the full set of services.
type ServiceState struct {
	// ClusterCIDR is the pod range; traffic from it is not masqueraded.
	ClusterCIDR netip.Prefix
	// ServiceCIDR is the ClusterIP range.
	ServiceCIDR netip.Prefix
	Services    []Service
}

// Clone returns a deep copy, so writers and callers never share endpoint
// slices with the cluster's live state.
func (s ServiceState) Clone() ServiceState {
	out := s
	out.Services = make([]Service, len(s.Services))
	for i, svc := range s.Services {
		out.Services[i] = svc.clone()
	}
	return out
}

// NATWriter programs kube-proxy-style service NAT into a node's network
// namespace. The built-in writers emulate kube-proxy; a real kube-proxy can be
// plugged in by implementing this interface.
type NATWriter interface {
	// Name identifies the writer, e.g. "iptables".
	Name() string
	// Sync replaces the node's service rules with ones for state. It must
	// be atomic enough that a resync under traffic does not drop packets
	// of established connections.
	Sync(ctx context.Context, node *Node, state ServiceState) error
	// Flush removes every rule the writer owns from the node.
	Flush(ctx context.Context, node *Node) error
}

// NewNATWriter returns the built-in writer for mode.
func NewNATWriter(mode ProxyMode) (NATWriter, error) {
	switch mode {
	case ModeIPTables:
		return IPTablesWriter{}, nil
	case ModeNFTables:
		return NFTablesWriter{}, nil
	case ModeSocketLB:
		return SocketLBWriter{}, nil
	default:
		return nil, fmt.Errorf("unknown proxy mode %q", mode)
	}
}

// kubeHash is the hash kube-proxy uses to build chain names: base32 of
// sha256, truncated.
func kubeHash(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:n]
}
