package testbed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/testbed/socketlb"
	"github.com/lbpath/lbpath/testbed/tcnodeport"
)

// Addresses of the fixed parts of the topology.
var (
	// LANPrefix is the L2 segment shared by the nodes and the external
	// client.
	LANPrefix = netip.MustParsePrefix("192.168.77.0/24")
	// LANGateway is the bridge's own address. Nodes use it as their
	// default route, which proxy ARP for the pods' 169.254.1.1 gateway
	// requires and which sends un-DNATed service traffic into FORWARD,
	// where kube-proxy's filter rules drop or reject it.
	LANGateway = netip.MustParseAddr("192.168.77.1")
	// ClientIP is the external client's address.
	ClientIP = netip.MustParseAddr("192.168.77.100")
	// ClusterCIDR is the pod range; node i gets 10.244.i.0/24.
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	// ServiceCIDR is the ClusterIP range.
	ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	// ClientPodIP is the address of the in-cluster client pod on node1.
	ClientPodIP = netip.MustParseAddr("10.244.1.200")
	// HostIP is the host (root) namespace's address on the LAN when
	// Options.HostLink is set: where host processes such as a
	// kube-apiserver listen for the nodes.
	HostIP = netip.MustParseAddr("192.168.77.2")
	// podGateway is Calico's fake next hop, answered by proxy ARP on the
	// node side of every pod veth.
	podGateway = "169.254.1.1"
)

// Names of the services every cluster has.
const (
	// ServiceWeb has all server pods as endpoints.
	ServiceWeb = "web"
	// ServiceEmpty has no endpoints; kube-proxy rejects its traffic.
	ServiceEmpty = "empty"
	// ClientPodName is the name of the in-cluster client pod.
	ClientPodName = "cpod"
	// PodPort is the port every server pod listens on (the targetPort).
	PodPort = 8080
)

// PodSpec places a server pod on a node.
type PodSpec struct {
	Name string
	// Node is 1-based: 1 is "node1".
	Node int
	// Delay makes the pod's server wait this long before answering, to
	// play a slower version of an application.
	Delay time.Duration
	// UDP makes the pod serve UDP on UDPPort too (StartUDPServer), as a
	// pod declaring a UDP containerPort does.
	UDP bool
	// Command, when set, runs this program (argv) inside the pod's
	// network namespace in place of the in-process HTTP server: a real
	// third-party server such as an ingress proxy. It must listen on
	// PodPort; AddPod returns once it does. Delay does not apply.
	Command []string
}

// Options configure Up. The zero value means the default two-node cluster in
// iptables mode with externalTrafficPolicy=Cluster.
type Options struct {
	// Prefix starts every namespace name; default "lbp".
	Prefix string
	// Mode selects the built-in NAT writer; default iptables. Ignored if
	// Writer is set.
	Mode ProxyMode
	// Writer replaces the built-in NAT writer, e.g. with a real
	// kube-proxy.
	Writer NATWriter
	// Policy is the externalTrafficPolicy of service web; default Cluster.
	Policy Policy
	// Nodes is the number of nodes; default 2.
	Nodes int
	// Pods are the server pods; default pod-a and pod-b on node1, pod-c on
	// node2.
	Pods []PodSpec
	// Logger receives setup progress; default slog.Default().
	Logger *slog.Logger
	// HostLink adds a veth from the host (root) namespace into the LAN
	// bridge, addressed HostIP, so that the nodes can reach processes on
	// the host such as a kube-apiserver. The host then routes LANPrefix
	// over it, so only one cluster per host may set HostLink.
	HostLink bool
	// NoStaticPods makes Up create no server pods (Pods is ignored); a
	// kubelet stand-in adds them at run time with AddPod. The client pod
	// is always created.
	NoStaticPods bool
	// Family is the IP family of pods, nodes and Services; default
	// FamilyIPv4. The built-in NAT writers render IPv4 only, so another
	// family needs a Writer (a real kube-proxy); until one is set the
	// cluster has no Service NAT.
	Family Family
	// Overlay is the network between nodes; default flat (see Overlay).
	Overlay Overlay
}

// DefaultPods is the pod layout used when Options.Pods is empty.
func DefaultPods() []PodSpec {
	return []PodSpec{{Name: "pod-a", Node: 1}, {Name: "pod-b", Node: 1}, {Name: "pod-c", Node: 2}}
}

var validName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

func (o Options) withDefaults() (Options, error) {
	if o.Prefix == "" {
		o.Prefix = "lbp"
	}
	if !validName.MatchString(o.Prefix) || len(o.Prefix) > 32 {
		return o, fmt.Errorf("invalid prefix %q: want lowercase letters, digits, dashes", o.Prefix)
	}
	if o.Mode == "" {
		o.Mode = ModeIPTables
	}
	if o.Family == "" {
		o.Family = FamilyIPv4
	}
	if err := validFamily(o.Family); err != nil {
		return o, err
	}
	if o.Writer == nil {
		if _, err := NewNATWriter(o.Mode); err != nil {
			return o, err
		}
	}
	if o.Policy == "" {
		o.Policy = PolicyCluster
	}
	if o.Policy != PolicyCluster && o.Policy != PolicyLocal {
		return o, fmt.Errorf("unknown externalTrafficPolicy %q", o.Policy)
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes < 1 || o.Nodes > 50 {
		return o, fmt.Errorf("node count %d out of range 1..50", o.Nodes)
	}
	switch {
	case o.NoStaticPods:
		o.Pods = nil
	case len(o.Pods) == 0:
		o.Pods = DefaultPods()
	}
	o.Pods = slices.Clone(o.Pods)
	seen := map[string]bool{ClientPodName: true}
	perNode := map[int]int{}
	for _, p := range o.Pods {
		if !validName.MatchString(p.Name) {
			return o, fmt.Errorf("invalid pod name %q", p.Name)
		}
		if seen[p.Name] {
			return o, fmt.Errorf("duplicate or reserved pod name %q", p.Name)
		}
		seen[p.Name] = true
		if p.Node < 1 || p.Node > o.Nodes {
			return o, fmt.Errorf("pod %s on node %d: only %d nodes", p.Name, p.Node, o.Nodes)
		}
		// Pod IPs are 10.244.i.(10+k) and must stay below the client
		// pod's .200.
		if perNode[p.Node]++; perNode[p.Node] > 150 {
			return o, fmt.Errorf("too many pods on node %d", p.Node)
		}
	}
	if !o.Overlay.valid() {
		return o, fmt.Errorf("unknown overlay %q: want flannel, calico, cilium or empty (flat)", o.Overlay)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Node is a Kubernetes node: a namespace that routes for its pods and runs
// the service NAT.
type Node struct {
	// Name is "node1", "node2", …
	Name string
	// Index is 1-based.
	Index int
	// Netns is the namespace path under /var/run/netns.
	Netns   string
	IP      netip.Addr
	PodCIDR netip.Prefix
	// IPs and PodCIDRs are one per family of the cluster, primary (IP,
	// PodCIDR) first.
	IPs      []netip.Addr
	PodCIDRs []netip.Prefix
	// Tunnel is the node's VXLAN end in the primary family with
	// Options.Overlay; zero on the flat network. Tunnels has one per
	// family, Tunnel first (TunnelIn picks by family).
	Tunnel  Tunnel
	Tunnels []Tunnel
}

// Pod is a pod namespace with one eth0 routed through its node.
type Pod struct {
	Name  string
	Node  *Node
	Netns string
	IP    netip.Addr
	// Port is the HTTP server port; 0 for the client pod, which runs no
	// server.
	Port uint16
	// HostVeth is the node-side interface name (cali<N>).
	HostVeth string
	// IPs are the pod's addresses, one per family, IP first.
	IPs []netip.Addr
}

// Host is a namespace outside the cluster: the external client or the LAN.
type Host struct {
	Name  string
	Netns string
	IP    netip.Addr
	// IPs are one per family of the cluster, IP first (the LAN's own
	// namespace leaves it empty).
	IPs []netip.Addr
}

// Cluster is a running testbed. Its methods are safe for concurrent use.
type Cluster struct {
	// Opt are the options after defaults were applied.
	Opt   Options
	Nodes []*Node
	// Pods are the server pods, in Options.Pods order.
	Pods []*Pod
	// ClientPod is the in-cluster client (no server), on node1.
	ClientPod *Pod
	// Client is the external client on the LAN.
	Client *Host
	// LAN holds the bridge.
	LAN *Host

	log *slog.Logger

	mu     sync.Mutex
	writer NATWriter
	state  ServiceState
	lbNode int
	// extraLB are LB IPs of Services the testbed does not model (a
	// real kube-proxy serves them), routed like its own (RouteLBIP).
	extraLB    []netip.Addr
	servers    []*podServer
	transports []*http.Transport
	inodes     map[string]uint32 // netns name → inode we created
	down       bool
	// added are the pods created by AddPod, by name.
	added map[string]*addedPod
	// hostLock is held from Up to Down when Opt.HostLink is set.
	hostLock *os.File
	// slb is the socket load balancer in ModeSocketLB (socketlb.go).
	slb *socketlb.Translator
	// slbExternal: the translator's Services are fed by its caller
	// (AttachSocketLB), not from state.
	slbExternal bool
	// tcnp are the TC NodePort load balancers attached (tcnodeport.go).
	tcnp []*tcnodeport.LB
	// nextVeth numbers the node-side veths of added pods; the static pods
	// and the client pod use cali0…cali<len(Pods)>.
	nextVeth int
}

// addedPod is a pod created at run time and the server answering in it.
type addedPod struct {
	pod    *Pod
	server podRunner
}

// podRunner is what answers in a pod: the in-process server or a process.
type podRunner interface{ stop() error }

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// Up builds a cluster. Leftovers with the same prefix (a crashed run) are
// removed first, so Up is idempotent. On error everything created so far is
// torn down.
func Up(ctx context.Context, opt Options) (*Cluster, error) {
	start := time.Now()
	opt, err := opt.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("testbed options: %w", err)
	}
	var hostLock *os.File
	if opt.HostLink {
		if hostLock, err = lockHostLink(ctx, opt.Logger); err != nil {
			return nil, err
		}
	}
	if err := Cleanup(opt.Prefix); err != nil {
		if hostLock != nil {
			hostLock.Close()
		}
		return nil, fmt.Errorf("remove leftovers of %s: %w", opt.Prefix, err)
	}
	c := newCluster(opt)
	c.hostLock = hostLock
	if err := c.build(ctx); err != nil {
		return nil, errors.Join(err, c.Down())
	}
	c.log.Debug("testbed up", "prefix", opt.Prefix, "mode", c.writer.Name(), "policy", opt.Policy,
		"nodes", len(c.Nodes), "pods", len(c.Pods), "took", time.Since(start).Round(time.Millisecond))
	return c, nil
}

// newCluster lays out names and addresses; nothing touches the kernel yet.
func newCluster(opt Options) *Cluster {
	c := &Cluster{Opt: opt, log: opt.Logger, inodes: map[string]uint32{}, lbNode: 1,
		added: map[string]*addedPod{}, nextVeth: len(opt.Pods) + 1}
	c.writer = opt.Writer
	if c.writer == nil {
		c.writer, _ = NewNATWriter(opt.Mode) // validated in withDefaults
		if opt.Family != FamilyIPv4 {
			c.writer = noNATWriter{}
		}
	}
	ns := func(s string) string { return opt.Prefix + "-" + s }
	c.LAN = &Host{Name: "lan", Netns: netnsPath(ns("lan")), IP: LANGateway}
	c.Client = &Host{Name: "client", Netns: netnsPath(ns("client")), IP: ClientIP}
	for i := 1; i <= opt.Nodes; i++ {
		c.Nodes = append(c.Nodes, &Node{
			Name:    fmt.Sprintf("node%d", i),
			Index:   i,
			Netns:   netnsPath(ns(fmt.Sprintf("node%d", i))),
			IP:      netip.AddrFrom4([4]byte{192, 168, 77, byte(10 + i)}),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
		})
	}
	perNode := map[int]int{}
	for k, spec := range opt.Pods {
		n := c.Nodes[spec.Node-1]
		ip := netip.AddrFrom4([4]byte{10, 244, byte(n.Index), byte(10 + perNode[n.Index])})
		perNode[n.Index]++
		c.Pods = append(c.Pods, &Pod{
			Name: spec.Name, Node: n, Netns: netnsPath(ns("p-" + spec.Name)), IP: ip, Port: PodPort,
			HostVeth: fmt.Sprintf("cali%d", k),
		})
	}
	c.ClientPod = &Pod{
		Name: ClientPodName, Node: c.Nodes[0], Netns: netnsPath(ns("p-" + ClientPodName)), IP: ClientPodIP,
		HostVeth: fmt.Sprintf("cali%d", len(opt.Pods)),
	}

	web := Service{
		Namespace: "default", Name: ServiceWeb, PortName: "http",
		ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, NodePort: 30080,
		LoadBalancerIP: netip.MustParseAddr("203.0.113.10"), TargetPort: PodPort, Policy: opt.Policy,
	}
	for _, p := range c.Pods {
		web.Endpoints = append(web.Endpoints, Endpoint{Pod: p.Name, Node: p.Node.Name, IP: p.IP, Port: PodPort})
	}
	empty := Service{
		Namespace: "default", Name: ServiceEmpty, PortName: "http",
		ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, NodePort: 30081,
		LoadBalancerIP: netip.MustParseAddr("203.0.113.11"), TargetPort: PodPort, Policy: PolicyCluster,
	}
	c.state = ServiceState{ClusterCIDR: ClusterCIDR, ServiceCIDR: ServiceCIDR, Services: []Service{web, empty}}
	c.applyFamily()
	for _, n := range c.Nodes {
		if n.Tunnels = tunnelsFor(opt.Overlay, n); len(n.Tunnels) > 0 {
			n.Tunnel = n.Tunnels[0]
		}
	}
	return c
}

// allPods is every pod namespace, server pods and client pod.
func (c *Cluster) allPods() []*Pod { return append(slices.Clone(c.Pods), c.ClientPod) }

func (c *Cluster) netnsNames() []string {
	names := []string{filepath.Base(c.LAN.Netns), filepath.Base(c.Client.Netns)}
	for _, n := range c.Nodes {
		names = append(names, filepath.Base(n.Netns))
	}
	for _, p := range c.allPods() {
		names = append(names, filepath.Base(p.Netns))
	}
	return names
}

func (c *Cluster) build(ctx context.Context) error {
	// Namespaces first: veth peers are created directly inside their
	// target namespace, so no link ever appears in the host namespace
	// and deleting the namespaces is a complete cleanup.
	names := c.netnsNames()
	var add []string
	for _, n := range names {
		add = append(add, "netns add "+n)
	}
	if err := ipBatch(ctx, "", add); err != nil {
		return fmt.Errorf("create namespaces: %w", err)
	}
	c.mu.Lock()
	for _, n := range names {
		ino, err := netns.Inode(netnsPath(n))
		if err != nil {
			c.mu.Unlock()
			return err
		}
		c.inodes[n] = ino
	}
	c.mu.Unlock()

	// Defaults before links exist, so every new interface inherits them.
	base := [][2]string{
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
		// IPv4 only: no link-local addresses, RS or DAD noise.
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv6.conf.default.disable_ipv6", "1"},
	}
	for _, n := range names {
		isNode := strings.HasPrefix(n, c.Opt.Prefix+"-node")
		kv := base
		if c.Opt.has6() {
			kv = append(slices.Clone(base[:2]), c.ipv6Sysctls(isNode)...)
		}
		if isNode {
			kv = append(slices.Clone(kv),
				[2]string{"net.ipv4.ip_forward", "1"},
				// The per-destination ICMP limit (burst 6, then
				// 1/s) would turn kube-proxy's REJECTs into
				// SYN timeouts after a handful of requests from
				// the same client; tests send hundreds.
				[2]string{"net.ipv4.icmp_ratelimit", "0"})
		}
		if err := writeSysctls(netnsPath(n), kv); err != nil {
			return err
		}
	}

	lan := filepath.Base(c.LAN.Netns)
	lanCmds := []string{
		"link set lo up",
		"link add name br0 type bridge",
		"addr add " + netip.PrefixFrom(LANGateway, LANPrefix.Bits()).String() + " dev br0",
		"link set br0 up",
	}
	lanCmds = append(lanCmds, c.lan6Cmds()...)
	lanCmds = append(lanCmds,
		"link add name veth-cl type veth peer name eth0 netns "+filepath.Base(c.Client.Netns),
		"link set veth-cl master br0 up",
	)
	for _, n := range c.Nodes {
		v := fmt.Sprintf("veth-n%d", n.Index)
		lanCmds = append(lanCmds,
			"link add name "+v+" type veth peer name eth0 netns "+filepath.Base(n.Netns),
			"link set "+v+" master br0 up")
	}
	if c.Opt.Overlay != OverlayFlat {
		lanCmds = append(lanCmds, c.lanOverlayCmds()...)
	}
	if err := ipBatch(ctx, lan, lanCmds); err != nil {
		return fmt.Errorf("set up LAN: %w", err)
	}
	if c.Opt.HostLink {
		if err := c.buildHostLink(ctx); err != nil {
			return err
		}
	}

	for _, n := range c.Nodes {
		// The IPv4 LAN address exists in every family: in an IPv6-only
		// cluster it only reaches the host link.
		cmds := []string{
			"link set lo up",
			"addr add " + netip.PrefixFrom(lanIP4(n.Index), LANPrefix.Bits()).String() + " dev eth0",
			"link set eth0 up",
			"route add default via " + LANGateway.String(),
		}
		cmds = append(cmds, c.node6Cmds(n)...)
		if c.Opt.Overlay != OverlayFlat {
			cmds = append(cmds, c.overlayNodeCmds(n)...)
		} else {
			cmds = append(cmds, c.nodeRoutes(n)...)
		}
		for _, p := range c.allPods() {
			if p.Node != n {
				continue
			}
			cmds = append(cmds,
				"link add name "+p.HostVeth+" type veth peer name eth0 netns "+filepath.Base(p.Netns),
				"link set "+p.HostVeth+" up")
			cmds = append(cmds, c.podVethCmds(p, "add")...)
		}
		if err := ipBatch(ctx, filepath.Base(n.Netns), cmds); err != nil {
			return fmt.Errorf("set up %s: %w", n.Name, err)
		}
		if c.Opt.Overlay != OverlayFlat {
			if err := c.overlayFDB(ctx, n); err != nil {
				return err
			}
		}
	}
	for _, p := range c.allPods() {
		if err := ipBatch(ctx, filepath.Base(p.Netns), podCmds(p)); err != nil {
			return fmt.Errorf("set up pod %s: %w", p.Name, err)
		}
	}
	clientCmds := []string{
		"link set lo up",
		"addr add " + netip.PrefixFrom(ClientIP, LANPrefix.Bits()).String() + " dev eth0",
		"link set eth0 up",
	}
	if c.Opt.has6() {
		clientCmds = append(clientCmds,
			"addr add "+netip.PrefixFrom(ClientIP6, LANPrefix6.Bits()).String()+" dev eth0 nodad")
	}
	if err := ipBatch(ctx, filepath.Base(c.Client.Netns), clientCmds); err != nil {
		return fmt.Errorf("set up client: %w", err)
	}

	for _, n := range c.Nodes {
		kv := [][2]string{{"net.ipv4.conf.eth0.rp_filter", "0"}}
		for _, p := range c.allPods() {
			if p.Node == n {
				kv = append(kv,
					[2]string{"net.ipv4.conf." + p.HostVeth + ".rp_filter", "0"},
					[2]string{"net.ipv4.conf." + p.HostVeth + ".proxy_arp", "1"},
					// Proxy ARP answers after a random delay of
					// up to 0.8 s by default; Calico sets 0 too.
					[2]string{"net.ipv4.neigh." + p.HostVeth + ".proxy_delay", "0"})
			}
		}
		if err := writeSysctls(n.Netns, kv); err != nil {
			return err
		}
	}

	if err := c.RouteLB(1); err != nil {
		return err
	}
	if err := c.Sync(ctx); err != nil {
		return err
	}
	if c.writer.Name() == string(ModeSocketLB) {
		if err := c.startSocketLB(); err != nil {
			return fmt.Errorf("socket-LB translator: %w", err)
		}
	}
	for i, p := range c.Pods {
		s, err := startPodServer(p, c.Opt.Pods[i].Delay, c.Opt.Pods[i].UDP)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.servers = append(c.servers, s)
		c.mu.Unlock()
	}
	return nil
}

// Down stops the pod servers, closes idle client connections and deletes
// every namespace this cluster created. It is safe to call more than once,
// and it never deletes a same-named namespace created by a later Up.
func (c *Cluster) Down() error {
	c.mu.Lock()
	if c.down {
		c.mu.Unlock()
		return nil
	}
	c.down = true
	var servers []podRunner
	for _, s := range c.servers {
		servers = append(servers, s)
	}
	transports := c.transports
	c.servers, c.transports = nil, nil
	for _, a := range c.added {
		if a.server != nil { // nil while AddPod is still building it
			servers = append(servers, a.server)
		}
	}
	clear(c.added)
	inodes := maps.Clone(c.inodes)
	c.mu.Unlock()

	var errs []error
	if err := c.stopSocketLB(); err != nil {
		errs = append(errs, fmt.Errorf("detach socket-LB translator: %w", err))
	}
	if err := c.stopTCNodePort(); err != nil {
		errs = append(errs, fmt.Errorf("detach TC NodePort: %w", err))
	}
	for _, tr := range transports {
		tr.CloseIdleConnections()
	}
	for _, s := range servers {
		if err := s.stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop pod server: %w", err))
		}
	}
	var del []string
	// inodes holds the pods added at run time too, not only netnsNames.
	for _, name := range slices.Sorted(maps.Keys(inodes)) {
		want := inodes[name]
		if got, err := netns.Inode(netnsPath(name)); err != nil || got != want {
			continue // already gone, or replaced by someone else's Up
		}
		del = append(del, "netns del "+name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c.Opt.HostLink {
		// Deleted explicitly: with the LAN namespace it would go only
		// when the kernel gets round to dismantling that namespace,
		// and the next Up's host link needs the name and address.
		// Only while the LAN namespace is still ours: a stale Down
		// must not cut a newer cluster's link.
		if slices.Contains(del, "netns del "+filepath.Base(c.LAN.Netns)) {
			if err := deleteHostLink(ctx, HostLinkName(c.Opt.Prefix)); err != nil {
				errs = append(errs, fmt.Errorf("delete host link: %w", err))
			}
		}
	}
	if err := ipBatch(ctx, "", del); err != nil {
		errs = append(errs, fmt.Errorf("delete namespaces of %s: %w", c.Opt.Prefix, err))
	}
	if c.hostLock != nil {
		c.hostLock.Close() // releases the flock
	}
	return errors.Join(errs...)
}

// Cleanup deletes every namespace named "<prefix>-*", the leftovers of a run
// that crashed before Down. Links and rules live only inside those
// namespaces, so nothing else remains.
func Cleanup(prefix string) error {
	if !validName.MatchString(prefix) {
		return fmt.Errorf("invalid prefix %q", prefix)
	}
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", netnsDir, err)
	}
	var del []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			del = append(del, "netns del "+e.Name())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ipBatch(ctx, "", del); err != nil {
		return fmt.Errorf("delete leftover namespaces: %w", err)
	}
	return nil
}

// RouteLB points the external client's routes for all LoadBalancer IPs at
// node (1-based), like a cloud L4 load balancer picking the entry node.
func (c *Cluster) RouteLB(node int) error {
	if node < 1 || node > len(c.Nodes) {
		return fmt.Errorf("route LB via node %d: only %d nodes", node, len(c.Nodes))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var cmds []string
	for _, s := range c.state.Services {
		for _, ip := range s.lbIPs() {
			cmds = append(cmds, "route replace "+hostBits(ip)+" via "+c.Nodes[node-1].IPIn(ip).String())
		}
	}
	for _, ip := range c.extraLB {
		cmds = append(cmds, "route replace "+hostBits(ip)+" via "+c.Nodes[node-1].IPIn(ip).String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ipBatch(ctx, filepath.Base(c.Client.Netns), cmds); err != nil {
		return fmt.Errorf("route LB via node%d: %w", node, err)
	}
	c.lbNode = node
	return nil
}

// RouteLBIP routes ip, the LB IP of a Service created in the API server
// only (the real kube-proxy programs it), from the external client through
// the current LB node, and keeps it routed with the others by RouteLB.
func (c *Cluster) RouteLBIP(ip netip.Addr) error {
	c.mu.Lock()
	if !slices.Contains(c.extraLB, ip) {
		c.extraLB = append(c.extraLB, ip)
	}
	node := c.lbNode
	c.mu.Unlock()
	return c.RouteLB(node)
}

// LBNode is the node the LoadBalancer IPs are currently routed through.
func (c *Cluster) LBNode() *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Nodes[c.lbNode-1]
}

// Node returns the node with the given 1-based index.
func (c *Cluster) Node(i int) *Node { return c.Nodes[i-1] }

// Pod returns the server or client pod with the given name, including pods
// added with AddPod, or nil.
func (c *Cluster) Pod(name string) *Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.podLocked(name)
}

func (c *Cluster) podLocked(name string) *Pod {
	for _, p := range c.allPods() {
		if p.Name == name {
			return p
		}
	}
	if a, ok := c.added[name]; ok && a.server != nil {
		return a.pod
	}
	return nil
}

// NodeByIP returns the node whose LAN address is ip, or nil.
func (c *Cluster) NodeByIP(ip netip.Addr) *Node {
	for _, n := range c.Nodes {
		if n.IP == ip || slices.Contains(n.IPs, ip) {
			return n
		}
	}
	return nil
}

// Service returns a copy of the named service's current state.
func (c *Cluster) Service(name string) (Service, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.state.Services {
		if s.Name == name {
			return s.clone(), true
		}
	}
	return Service{}, false
}

// Web is the current state of service web.
func (c *Cluster) Web() Service { s, _ := c.Service(ServiceWeb); return s }

// Empty is the current state of service empty.
func (c *Cluster) Empty() Service { s, _ := c.Service(ServiceEmpty); return s }

// State returns a copy of all services.
func (c *Cluster) State() ServiceState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state.Clone()
}

// Writer is the NAT writer currently programming the nodes.
func (c *Cluster) Writer() NATWriter {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writer
}

// Sync rewrites the NAT of every node from the current state.
func (c *Cluster) Sync(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syncLocked(ctx)
}

func (c *Cluster) syncLocked(ctx context.Context) error {
	for _, n := range c.Nodes {
		if err := c.writer.Sync(ctx, n, c.state.Clone()); err != nil {
			return fmt.Errorf("sync %s NAT: %w", c.writer.Name(), err)
		}
	}
	return c.syncSocketLBLocked()
}

// SetMode switches every node to a built-in kube-proxy mode: the other
// mode's rules are removed, then the new ones written. Existing conntrack
// entries are kept, as they are when kube-proxy restarts in another mode.
func (c *Cluster) SetMode(ctx context.Context, mode ProxyMode) error {
	w, err := NewNATWriter(mode)
	if err != nil {
		return err
	}
	return c.SetWriter(ctx, w)
}

// SetWriter replaces the NAT writer: the old writer and all built-in writers
// of another kind flush their rules from every node, then w syncs.
func (c *Cluster) SetWriter(ctx context.Context, w NATWriter) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	flush := []NATWriter{c.writer, IPTablesWriter{}, NFTablesWriter{}}
	done := map[string]bool{w.Name(): true}
	for _, f := range flush {
		if done[f.Name()] {
			continue
		}
		done[f.Name()] = true
		for _, n := range c.Nodes {
			if err := f.Flush(ctx, n); err != nil {
				return fmt.Errorf("switch to %s: %w", w.Name(), err)
			}
		}
	}
	c.writer = w
	return c.syncLocked(ctx)
}

// SetPolicy sets service web's externalTrafficPolicy and rewrites the NAT.
func (c *Cluster) SetPolicy(ctx context.Context, p Policy) error {
	if p != PolicyCluster && p != PolicyLocal {
		return fmt.Errorf("unknown externalTrafficPolicy %q", p)
	}
	return c.updateService(ctx, ServiceWeb, func(s *Service) error { s.Policy = p; return nil })
}

// SetEndpoints makes the named server pods the endpoints of service (web or
// empty) and rewrites the NAT on every node, as kube-proxy does when an
// EndpointSlice changes. No pods means no endpoints (REJECT).
func (c *Cluster) SetEndpoints(ctx context.Context, service string, pods ...string) error {
	return c.updateService(ctx, service, func(s *Service) error {
		s.Endpoints = nil
		for _, name := range pods {
			p := c.podLocked(name) // updateService holds c.mu
			if p == nil || p.Port == 0 {
				return fmt.Errorf("no server pod %q", name)
			}
			s.Endpoints = append(s.Endpoints, Endpoint{Pod: p.Name, Node: p.Node.Name, IP: p.IP, Port: p.Port})
		}
		return nil
	})
}

func (c *Cluster) updateService(ctx context.Context, name string, fn func(*Service) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.state.Services {
		if c.state.Services[i].Name != name {
			continue
		}
		s := c.state.Services[i].clone()
		if err := fn(&s); err != nil {
			return fmt.Errorf("update service %s: %w", name, err)
		}
		c.state.Services[i] = s
		return c.syncLocked(ctx)
	}
	return fmt.Errorf("no service %q", name)
}
