package kube

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// span is one object holding one address for a time interval.
type span[T any] struct {
	from, to time.Time // to is zero while the object still holds the address
	// weak is when the owner stopped being a valid target (a pod turning
	// not ready or terminating). If another object takes the address later,
	// the handoff is moved back to weak: the address can be reused as soon
	// as the old pod's sandbox is gone, before its object is.
	weak time.Time
	v    T
}

// timeline is the spans of one key, oldest first.
type timeline[T any] []span[T]

// at returns the span valid at t. When none is, the owner is inferred
// within slack: informer events arrive after the change they report, so an
// object whose span starts just after t most likely held the address at t
// already (preferred); failing that, one whose span ended just before t.
func (tl timeline[T]) at(t time.Time, slack time.Duration) (T, bool) {
	for i := len(tl) - 1; i >= 0; i-- {
		s := tl[i]
		if !t.Before(s.from) && (s.to.IsZero() || t.Before(s.to)) {
			return s.v, true
		}
	}
	for _, s := range tl { // oldest first: the first span starting after t
		if t.Before(s.from) && s.from.Sub(t) <= slack {
			return s.v, true
		}
	}
	for i := len(tl) - 1; i >= 0; i-- {
		s := tl[i]
		if !s.to.IsZero() && !t.Before(s.to) && t.Sub(s.to) <= slack {
			return s.v, true
		}
	}
	var zero T
	return zero, false
}

// IndexConfig bounds the index.
type IndexConfig struct {
	// History is how long an address's past owners are kept. Default 15m
	// (longer than the agent's join delays and typical connection lives).
	History time.Duration
	// MaxSpans bounds the past owners kept per address. Default 8.
	MaxSpans int
	// Slack is how far outside an owner's interval a lookup may still match
	// it. Default 2s.
	Slack time.Duration
}

// IndexStats counts index activity; Pruned counts history dropped early
// because an address had more than MaxSpans owners.
type IndexStats struct {
	Lookups, Misses, Pruned atomic.Uint64
}

// Index maps addresses to the objects that held them, over time. It is
// safe for concurrent use.
type Index struct {
	cfg   IndexConfig
	Stats IndexStats
	// ExternalNames counts the externalName resolver (externalname.go).
	ExternalNames ExternalNameStats

	mu         sync.RWMutex
	podByIP    map[netip.Addr]timeline[*Pod]
	hostPort   map[netip.AddrPort]timeline[*Pod]
	nodeByIP   map[netip.Addr]timeline[*Node]
	svcByAddr  map[protoAddr]timeline[*Service] // ClusterIP:port, LB IP:port
	svcByNP    map[protoPort]timeline[*Service] // NodePort, on every node address
	svcByHC    map[uint16]timeline[*Service]    // healthCheckNodePort (TCP), on every node address
	epByAddr   map[protoAddr]timeline[*svcEndpoint]
	pods       map[string]*Pod // namespace/name → current
	nodes      map[string]*Node
	svcs       map[string]*Service
	slices     map[string][]*svcEndpoint  // slice namespace/name → its endpoints
	svcSlices  map[string]map[string]bool // service namespace/name → its slices
	sliceSvc   map[string]string          // slice → its service
	rsToDeploy map[string]string          // namespace/replicaset → deployment
	byUID      map[string]uidEntry        // pod UID → pod, deleted ones for History (uid.go)
	uidPruned  time.Time
	extByIP    map[netip.Addr][]extSpan // resolved externalName addresses (externalname.go)
	extWake    chan struct{}            // a new externalName to resolve now
}

// svcEndpoint is one endpoint of a Service as an EndpointSlice lists it.
type svcEndpoint struct {
	Service string // namespace/name
	Port    SlicePort
	Endpoint
}

// SlicePort is one port of an EndpointSlice.
type SlicePort struct {
	Port     uint16
	Protocol Protocol // "" is TCP
}

func (p SlicePort) key(ip netip.Addr) protoAddr {
	return protoAddr{p.Protocol.norm(), netip.AddrPortFrom(ip, p.Port)}
}

// NewIndex returns an empty index.
func NewIndex(cfg IndexConfig) *Index {
	if cfg.History == 0 {
		cfg.History = 15 * time.Minute
	}
	if cfg.MaxSpans == 0 {
		cfg.MaxSpans = 8
	}
	if cfg.Slack == 0 {
		cfg.Slack = 2 * time.Second
	}
	return &Index{cfg: cfg,
		podByIP: map[netip.Addr]timeline[*Pod]{}, hostPort: map[netip.AddrPort]timeline[*Pod]{},
		nodeByIP: map[netip.Addr]timeline[*Node]{}, svcByAddr: map[protoAddr]timeline[*Service]{},
		svcByNP: map[protoPort]timeline[*Service]{}, svcByHC: map[uint16]timeline[*Service]{}, epByAddr: map[protoAddr]timeline[*svcEndpoint]{},
		pods: map[string]*Pod{}, nodes: map[string]*Node{}, svcs: map[string]*Service{},
		slices: map[string][]*svcEndpoint{}, svcSlices: map[string]map[string]bool{}, sliceSvc: map[string]string{}, rsToDeploy: map[string]string{},
		extByIP: map[netip.Addr][]extSpan{}, extWake: make(chan struct{}, 1),
	}
}

// openSpan records that v holds key from now on. same reports whether the
// currently open span is the same object (then it is updated in place, its
// start kept). Any other open span is closed: one address, one owner.
func openSpan[K comparable, T any](m map[K]timeline[T], key K, v T, now time.Time, same func(a, b T) bool, cfg IndexConfig, st *IndexStats) {
	tl := m[key]
	from := now
	if n := len(tl); n > 0 && tl[n-1].to.IsZero() {
		if same(tl[n-1].v, v) {
			tl[n-1].v = v
			m[key] = tl
			return
		}
		if w := tl[n-1].weak; !w.IsZero() && w.After(tl[n-1].from) {
			from = w
		}
		tl[n-1].to = from
	} else if n > 0 && !tl[n-1].weak.IsZero() && tl[n-1].to.After(tl[n-1].weak) {
		// The previous owner was deleted (its span closed) after turning
		// invalid; the new owner may have had the address since then.
		tl[n-1].to = tl[n-1].weak
		from = tl[n-1].weak
	}
	tl = append(tl, span[T]{from: from, v: v})
	m[key] = prune(tl, now, cfg, st)
}

// weaken records when the open span of key, owned by v, became invalid.
func weaken[K comparable, T any](m map[K]timeline[T], key K, v T, now time.Time, same func(a, b T) bool) {
	tl := m[key]
	if n := len(tl); n > 0 && tl[n-1].to.IsZero() && same(tl[n-1].v, v) && tl[n-1].weak.IsZero() {
		tl[n-1].weak = now
	}
}

// closeSpan ends the open span of key if it belongs to v.
func closeSpan[K comparable, T any](m map[K]timeline[T], key K, v T, now time.Time, same func(a, b T) bool, cfg IndexConfig, st *IndexStats) {
	tl := m[key]
	if n := len(tl); n > 0 && tl[n-1].to.IsZero() && same(tl[n-1].v, v) {
		tl[n-1].to = now
	}
	tl = prune(tl, now, cfg, st)
	if len(tl) == 0 {
		delete(m, key)
		return
	}
	m[key] = tl
}

func prune[T any](tl timeline[T], now time.Time, cfg IndexConfig, st *IndexStats) timeline[T] {
	i := 0
	for i < len(tl) && !tl[i].to.IsZero() && now.Sub(tl[i].to) > cfg.History {
		i++
	}
	if extra := len(tl) - i - cfg.MaxSpans; extra > 0 {
		i += extra
		st.Pruned.Add(uint64(extra))
	}
	if i == 0 {
		return tl
	}
	return append(tl[:0], tl[i:]...)
}

func samePod(a, b *Pod) bool        { return a.UID == b.UID }
func sameNode(a, b *Node) bool      { return a.Name == b.Name }
func sameSvc(a, b *Service) bool    { return a.Key() == b.Key() }
func sameEP(a, b *svcEndpoint) bool { return a.Service == b.Service && a.PodName == b.PodName }

// SetPod adds or updates a pod. Every address of status.podIPs is indexed,
// so both families of a dual-stack pod are named.
func (x *Index) SetPod(p *Pod, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	key := p.Namespace + "/" + p.Name
	old := x.pods[key]
	if old != nil {
		if !old.HostNetwork {
			for _, ip := range old.Addrs() {
				if !slices.Contains(p.Addrs(), ip) || p.HostNetwork {
					closeSpan(x.podByIP, ip, old, now, samePod, x.cfg, &x.Stats)
				}
			}
		}
		x.closeHostPorts(old, now)
	}
	x.pods[key] = p
	x.setUID(p, now)
	if !p.HostNetwork {
		// A pod that stops being a valid target (ready → not ready, or
		// terminating) may lose its IP to a new pod before its object goes.
		wasValid := old != nil && old.Ready && !old.Terminating
		for _, ip := range p.Addrs() {
			openSpan(x.podByIP, ip, p, now, samePod, x.cfg, &x.Stats)
			if p.Terminating || (wasValid && !p.Ready) {
				weaken(x.podByIP, ip, p, now, samePod)
			}
		}
	}
	if n := x.nodes[p.Node]; n != nil {
		for _, ip := range n.Addrs() {
			for _, hp := range p.HostPorts {
				openSpan(x.hostPort, netip.AddrPortFrom(ip, hp.HostPort), p, now, samePod, x.cfg, &x.Stats)
			}
		}
	}
}

func (x *Index) closeHostPorts(p *Pod, now time.Time) {
	if n := x.nodes[p.Node]; n != nil {
		for _, ip := range n.Addrs() {
			for _, hp := range p.HostPorts {
				closeSpan(x.hostPort, netip.AddrPortFrom(ip, hp.HostPort), p, now, samePod, x.cfg, &x.Stats)
			}
		}
	}
}

// DeletePod removes a pod; its address history stays for History.
func (x *Index) DeletePod(namespace, name string, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	key := namespace + "/" + name
	old := x.pods[key]
	if old == nil {
		return
	}
	delete(x.pods, key)
	x.deleteUID(old, now)
	if !old.HostNetwork {
		for _, ip := range old.Addrs() {
			closeSpan(x.podByIP, ip, old, now, samePod, x.cfg, &x.Stats)
		}
	}
	x.closeHostPorts(old, now)
}

// SetNode adds or updates a node; every InternalIP (both families on a
// dual-stack node) names it.
func (x *Index) SetNode(n *Node, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old := x.nodes[n.Name]; old != nil {
		for _, ip := range old.Addrs() {
			if !n.HasAddr(ip) {
				closeSpan(x.nodeByIP, ip, old, now, sameNode, x.cfg, &x.Stats)
			}
		}
	}
	if old := x.nodes[n.Name]; old != nil {
		x.closeNodeAddrs(old, n, now)
	}
	x.nodes[n.Name] = n
	for _, ip := range n.Addrs() {
		openSpan(x.nodeByIP, ip, n, now, sameNode, x.cfg, &x.Stats)
	}
	x.openNodeAddrs(n, now)
}

// DeleteNode removes a node.
func (x *Index) DeleteNode(name string, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old := x.nodes[name]; old != nil {
		delete(x.nodes, name)
		for _, ip := range old.Addrs() {
			closeSpan(x.nodeByIP, ip, old, now, sameNode, x.cfg, &x.Stats)
		}
		x.closeNodeAddrs(old, nil, now)
	}
}

func svcAddrs(s *Service) (addrs []protoAddr, nodePorts []protoPort) {
	for _, p := range s.Ports {
		proto := p.Protocol.norm()
		for _, ips := range [][]netip.Addr{s.ClusterIPs, s.LBIngress, s.ExternalIPs} {
			for _, ip := range ips {
				addrs = append(addrs, protoAddr{proto, netip.AddrPortFrom(ip, p.Port)})
			}
		}
		if p.NodePort != 0 {
			nodePorts = append(nodePorts, protoPort{proto, p.NodePort})
		}
	}
	return addrs, nodePorts
}

// SetService adds or updates a Service.
func (x *Index) SetService(s *Service, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.externalNameChanged(x.svcs[s.Key()], s, now)
	if old := x.svcs[s.Key()]; old != nil {
		if s.LBPending() && !old.LBPendingSince.IsZero() {
			s.LBPendingSince = old.LBPendingSince
		}
		x.closeService(old, now)
	}
	if s.LBPending() && s.LBPendingSince.IsZero() {
		s.LBPendingSince = s.Created
		if s.LBPendingSince.IsZero() {
			s.LBPendingSince = now
		}
	}
	x.svcs[s.Key()] = s
	addrs, nps := svcAddrs(s)
	for _, a := range addrs {
		openSpan(x.svcByAddr, a, s, now, sameSvc, x.cfg, &x.Stats)
	}
	for _, np := range nps {
		openSpan(x.svcByNP, np, s, now, sameSvc, x.cfg, &x.Stats)
	}
	if s.HealthCheckNodePort != 0 {
		openSpan(x.svcByHC, s.HealthCheckNodePort, s, now, sameSvc, x.cfg, &x.Stats)
	}
}

// closeService ends the spans of addresses the Service no longer has; the
// caller reopens the ones it keeps (openSpan keeps their start).
func (x *Index) closeService(old *Service, now time.Time) {
	addrs, nps := svcAddrs(old)
	for _, a := range addrs {
		closeSpan(x.svcByAddr, a, old, now, sameSvc, x.cfg, &x.Stats)
	}
	for _, np := range nps {
		closeSpan(x.svcByNP, np, old, now, sameSvc, x.cfg, &x.Stats)
	}
	if old.HealthCheckNodePort != 0 {
		closeSpan(x.svcByHC, old.HealthCheckNodePort, old, now, sameSvc, x.cfg, &x.Stats)
	}
}

// DeleteService removes a Service.
func (x *Index) DeleteService(namespace, name string, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old := x.svcs[namespace+"/"+name]; old != nil {
		delete(x.svcs, old.Key())
		x.closeService(old, now)
		x.externalNameChanged(old, nil, now)
	}
}

// SetEndpointSlice replaces the endpoints one EndpointSlice lists for its
// Service (slice is namespace/name of the slice, service namespace/name of
// its Service), with TCP ports.
func (x *Index) SetEndpointSlice(slice, service string, ports []uint16, eps []Endpoint, now time.Time) {
	sp := make([]SlicePort, len(ports))
	for i, p := range ports {
		sp[i] = SlicePort{Port: p, Protocol: ProtocolTCP}
	}
	x.SetEndpointSlicePorts(slice, service, sp, eps, now)
}

// SetEndpointSlicePorts is SetEndpointSlice with each port's protocol.
func (x *Index) SetEndpointSlicePorts(slice, service string, ports []SlicePort, eps []Endpoint, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.closeSlice(slice, now)
	var list []*svcEndpoint
	for _, port := range ports {
		for _, ep := range eps {
			se := &svcEndpoint{Service: service, Port: port, Endpoint: ep}
			list = append(list, se)
			openSpan(x.epByAddr, port.key(ep.IP), se, now, sameEP, x.cfg, &x.Stats)
		}
	}
	x.slices[slice] = list
	if x.svcSlices[service] == nil {
		x.svcSlices[service] = map[string]bool{}
	}
	x.svcSlices[service][slice] = true
	x.sliceSvc[slice] = service
}

func (x *Index) closeSlice(slice string, now time.Time) {
	if svc, ok := x.sliceSvc[slice]; ok {
		delete(x.sliceSvc, slice)
		if set := x.svcSlices[svc]; set != nil {
			delete(set, slice)
			if len(set) == 0 {
				delete(x.svcSlices, svc)
			}
		}
	}
	for _, se := range x.slices[slice] {
		closeSpan(x.epByAddr, se.Port.key(se.IP), se, now, sameEP, x.cfg, &x.Stats)
	}
	delete(x.slices, slice)
}

// DeleteEndpointSlice removes a slice.
func (x *Index) DeleteEndpointSlice(slice string, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.closeSlice(slice, now)
}

// SetReplicaSet records which Deployment owns a ReplicaSet ("" for none).
func (x *Index) SetReplicaSet(namespace, name, deployment string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if deployment == "" {
		delete(x.rsToDeploy, namespace+"/"+name)
		return
	}
	x.rsToDeploy[namespace+"/"+name] = deployment
}

// DeleteReplicaSet forgets a ReplicaSet. Pods keep the Deployment name
// they were given.
func (x *Index) DeleteReplicaSet(namespace, name string) {
	x.SetReplicaSet(namespace, name, "")
}

func (x *Index) miss(ok bool) {
	x.Stats.Lookups.Add(1)
	if !ok {
		x.Stats.Misses.Add(1)
	}
}

// PodAt returns the pod that had ip at t.
func (x *Index) PodAt(ip netip.Addr, t time.Time) (*Pod, bool) {
	x.mu.RLock()
	p, ok := x.podByIP[ip].at(t, x.cfg.Slack)
	if ok && p.Deployment == "" && p.ReplicaSet != "" {
		p = x.withDeployment(p)
	}
	x.mu.RUnlock()
	x.miss(ok)
	return p, ok
}

// withDeployment fills the Deployment of a pod whose ReplicaSet event came
// after the pod's; it falls back to the naming rule Deployments follow
// (<deployment>-<pod-template-hash>).
func (x *Index) withDeployment(p *Pod) *Pod {
	d := x.rsToDeploy[p.Namespace+"/"+p.ReplicaSet]
	if d == "" && p.TemplateHash != "" {
		d, _ = strings.CutSuffix(p.ReplicaSet, "-"+p.TemplateHash)
		if d == p.ReplicaSet {
			d = ""
		}
	}
	if d == "" {
		return p
	}
	c := *p
	c.Deployment = d
	return &c
}

// HostPortAt returns the pod that published ap (node IP:hostPort) at t.
func (x *Index) HostPortAt(ap netip.AddrPort, t time.Time) (*Pod, bool) {
	x.mu.RLock()
	p, ok := x.hostPort[ap].at(t, x.cfg.Slack)
	x.mu.RUnlock()
	return p, ok
}

// NodeAt returns the node that held ip at t: its InternalIP or any other
// address of Node.Addresses (a derived one only while no pod holds it).
func (x *Index) NodeAt(ip netip.Addr, t time.Time) (*Node, bool) {
	x.mu.RLock()
	n, _, ok := x.nodeAtLocked(ip, t)
	x.mu.RUnlock()
	x.miss(ok)
	return n, ok
}

// NodeByName returns a node's current view.
func (x *Index) NodeByName(name string) (*Node, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n, ok := x.nodes[name]
	return n, ok
}

// ServiceAt names the Service a TCP connection to ap addressed at t, and
// how: its ClusterIP, an LB ingress IP, or a NodePort on a node address.
func (x *Index) ServiceAt(ap netip.AddrPort, t time.Time) (*Service, Entry, bool) {
	return x.ServiceAtProto(ap, ProtocolTCP, t)
}

// ServiceAtProto is ServiceAt for a flow of protocol proto.
func (x *Index) ServiceAtProto(ap netip.AddrPort, proto Protocol, t time.Time) (*Service, Entry, bool) {
	proto = proto.norm()
	x.mu.RLock()
	defer x.mu.RUnlock()
	if s, ok := x.svcByAddr[protoAddr{proto, ap}].at(t, x.cfg.Slack); ok {
		entry := EntryClusterIP
		if slices.Contains(s.ExternalIPs, ap.Addr()) {
			entry = EntryExternalIP
		}
		if slices.Contains(s.LBIngress, ap.Addr()) {
			entry = EntryLoadBalancer
		}
		x.miss(true)
		return s, entry, true
	}
	if _, _, isNode := x.nodeAtLocked(ap.Addr(), t); isNode {
		if s, ok := x.svcByNP[protoPort{proto, ap.Port()}].at(t, x.cfg.Slack); ok {
			x.miss(true)
			return s, EntryNodePort, true
		}
	}
	x.miss(false)
	return nil, "", false
}

// HealthCheckAt names the Service whose healthCheckNodePort was port at t
// (on every node address kube-proxy answers there for it).
func (x *Index) HealthCheckAt(port uint16, t time.Time) (*Service, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	s, ok := x.svcByHC[port].at(t, x.cfg.Slack)
	x.miss(ok)
	return s, ok
}

// EndpointAt returns the Service endpoint ap (pod IP:target port, TCP) was
// at t, with its readiness as the EndpointSlice said.
func (x *Index) EndpointAt(ap netip.AddrPort, t time.Time) (service string, ep Endpoint, ok bool) {
	return x.EndpointAtProto(ap, ProtocolTCP, t)
}

// EndpointAtProto is EndpointAt for a port of protocol proto.
func (x *Index) EndpointAtProto(ap netip.AddrPort, proto Protocol, t time.Time) (service string, ep Endpoint, ok bool) {
	x.mu.RLock()
	se, ok := x.epByAddr[protoAddr{proto.norm(), ap}].at(t, x.cfg.Slack)
	x.mu.RUnlock()
	if !ok {
		return "", Endpoint{}, false
	}
	return se.Service, se.Endpoint, true
}

// Service returns a Service's current view.
func (x *Index) Service(namespace, name string) (*Service, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	s, ok := x.svcs[namespace+"/"+name]
	return s, ok
}

// Services returns the current Services.
func (x *Index) Services() []*Service {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]*Service, 0, len(x.svcs))
	for _, s := range x.svcs {
		out = append(out, s)
	}
	return out
}

// ReadyEndpoints counts a Service's ready endpoints now, in all and on node.
func (x *Index) ReadyEndpoints(service, node string) (all, onNode int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	seen := map[netip.Addr]bool{}
	for slice := range x.svcSlices[service] {
		for _, se := range x.slices[slice] {
			if !se.Ready || seen[se.IP] {
				continue
			}
			seen[se.IP] = true
			all++
			if se.Node == node {
				onNode++
			}
		}
	}
	return all, onNode
}

// Sizes reports how many objects and address keys the index holds.
func (x *Index) Sizes() (pods, services, nodes, keys int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.pods), len(x.svcs), len(x.nodes),
		len(x.podByIP) + len(x.hostPort) + len(x.nodeByIP) + len(x.svcByAddr) + len(x.svcByNP) + len(x.svcByHC) + len(x.epByAddr) + len(x.extByIP)
}
