package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/lbpath/lbpath/deploy/images"
	"github.com/lbpath/lbpath/testbed"
)

// Names of the API objects Up creates, all in namespace default.
const (
	// Namespace holds the Deployment and the Services.
	Namespace = "default"
	// WebDeployment backs Service web.
	WebDeployment = "web"
	// WebLabel is the app label of web's pods.
	WebLabel = "app"
	// WebContainer is the name of web's one container.
	WebContainer = "web"
)

// Options configure Up. The zero value is two nodes, three web replicas,
// kube-proxy in iptables mode and externalTrafficPolicy Cluster.
type Options struct {
	// Prefix names the testbed's namespaces and the control plane's state
	// dir; default "lbpk8s".
	Prefix string
	// Mode is kube-proxy's mode; default iptables.
	Mode testbed.ProxyMode
	// Policy is Service web's externalTrafficPolicy; default Cluster.
	Policy testbed.Policy
	// Nodes is the number of nodes; default 2.
	Nodes int
	// Replicas of Deployment web; default 3.
	Replicas int32
	// PoolSize and TerminationGrace configure the kubelet stand-in.
	PoolSize         int
	TerminationGrace time.Duration
	// Binaries to run; zero means EnsureBinaries, which may build for
	// minutes.
	Binaries Binaries
	// Logger receives progress; default slog.Default().
	Logger *slog.Logger

	// RealNodes runs the real containerd and kubelet on every node (see
	// RealNode) instead of the kubelet stand-in, with kube-scheduler,
	// CoreDNS as the cluster DNS and web's pods from the podserver image
	// behind real readiness probes. PoolSize and TerminationGrace do not
	// apply.
	RealNodes bool
	// PodIPsPerNode limits each real node's host-local IPAM range to this
	// many addresses (default: .2 to .199 of the node's pod CIDR). A range
	// barely larger than the pods a node runs makes host-local hand a
	// freed address to the next pod, as on a crowded real node.
	PodIPsPerNode int
	// DNSReplicas is how many CoreDNS pods serve kube-dns on real nodes,
	// one per node (at most the number of nodes); default 1.
	DNSReplicas int
	// NodeBinaries are containerd and CoreDNS for RealNodes; zero means
	// EnsureNodeBinaries (which may build).
	NodeBinaries NodeBinaries
	// Images are built and imported into every real node besides the
	// testbed's own (pause, podserver, coredns); e.g. images.Product.
	Images []images.Image
	// Family is the IP family of pods, nodes and Services; default
	// IPv4. IPv6 and dual-stack run with the kubelet stand-in (the real
	// nodes' CNI config is IPv4-only).
	Family testbed.Family
	// Overlay is the network between nodes (testbed.Overlay); default
	// flat. The Nodes carry the annotations the overlay's CNI would set.
	Overlay testbed.Overlay
	// UDPService adds Service dns, UDP over web's pods (udp.go); the
	// stand-in pods then serve UDP too. Not with RealNodes.
	UDPService bool
	// SocketLB runs the testbed's socket load balancer (testbed/socketlb,
	// cgroup connect4/6 on the cgroup v2 root, as Cilium's socket-LB)
	// beside kube-proxy, its maps fed from the API server's Services and
	// ready EndpointSlice endpoints of both families (SocketLB()). ClusterIP
	// connects from the testbed's namespaces are translated inside
	// connect(); kube-proxy keeps serving NodePorts and LB IPs. Stand-in
	// kubelet only.
	SocketLB bool
}

// Cluster is a testbed driven by a real control plane: kube-apiserver and
// kube-controller-manager own the Deployment, ReplicaSets, Pods and
// EndpointSlices, a real kube-proxy per node programs the NAT, and the
// Kubelet stand-in turns Pods into pod namespaces.
type Cluster struct {
	// TB is the network: nodes, client, pod namespaces. Its Service
	// addresses (Web, Empty) match the API objects; its endpoint lists do
	// not, as the EndpointSlices are the truth here.
	TB *testbed.Cluster
	// CP is the control plane; CP.Kubeconfig works with kubectl.
	CP *ControlPlane
	// Kubelet is the stand-in; nil with Options.RealNodes.
	Kubelet *Kubelet
	// RealNodes are the nodes' real kubelets and containerds, in node
	// order; empty without Options.RealNodes.
	RealNodes []*RealNode
	// Images are the images imported into every real node, by name.
	Images map[string]images.Built
	// Client is an admin clientset.
	Client kubernetes.Interface

	opt Options
	log *slog.Logger
	// policy is the externalTrafficPolicy SetPolicy last set.
	policy testbed.Policy
	slb    *slbFeed
}

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = "lbpk8s"
	}
	if o.Mode == "" {
		o.Mode = testbed.ModeIPTables
	}
	if o.Policy == "" {
		o.Policy = testbed.PolicyCluster
	}
	if o.Replicas == 0 {
		o.Replicas = 3
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Up builds the testbed with a host link, starts the control plane on it,
// registers the nodes, creates Deployment web and Services web and empty,
// starts the kubelet stand-in and a kube-proxy per node, and returns when
// all web replicas are ready and in web's EndpointSlices. On error
// everything is torn down.
func Up(ctx context.Context, opt Options) (*Cluster, error) {
	began := time.Now()
	opt = opt.withDefaults()
	if opt.Binaries.Dir == "" {
		var err error
		if opt.Binaries, err = EnsureBinaries(ctx, opt.Logger); err != nil {
			return nil, err
		}
	}
	if opt.RealNodes && opt.UDPService {
		return nil, errors.New("k8s testbed: UDPService needs the kubelet stand-in, not RealNodes")
	}
	if opt.RealNodes && opt.SocketLB {
		return nil, errors.New("k8s options: SocketLB runs with the kubelet stand-in only (RealNodes' pods are in namespaces the translator is not told of)")
	}
	if opt.RealNodes {
		if err := prepareReal(ctx, &opt); err != nil {
			return nil, err
		}
	}
	// The built-in writer covers the seconds until kube-proxy can run,
	// which needs the apiserver, which needs the host link.
	tb, err := testbed.Up(ctx, testbed.Options{
		Prefix: opt.Prefix, Mode: opt.Mode, Policy: opt.Policy, Nodes: opt.Nodes,
		Logger: opt.Logger, HostLink: true, NoStaticPods: true, Family: opt.Family, Overlay: opt.Overlay,
	})
	if err != nil {
		return nil, err
	}
	c := &Cluster{TB: tb, opt: opt, log: opt.Logger, policy: opt.Policy}
	if err := c.up(ctx); err != nil {
		return nil, errors.Join(err, c.Down())
	}
	c.log.Info("kubernetes testbed up", "prefix", opt.Prefix, "mode", opt.Mode, "policy", opt.Policy,
		"real_nodes", opt.RealNodes, "kubeconfig", c.CP.Kubeconfig, "took", time.Since(began).Round(time.Millisecond))
	return c, nil
}

func (c *Cluster) up(ctx context.Context) error {
	cp, err := Start(ctx, ControlPlaneOptions{
		Binaries: c.opt.Binaries, BindAddress: testbed.HostIP, Name: c.opt.Prefix, Logger: c.log,
		RealNodes: c.opt.RealNodes, ServiceCIDRs: c.TB.ServiceCIDRs(), ClusterCIDRs: c.dualCIDRs(),
	})
	if err != nil {
		return err
	}
	c.CP, c.Client = cp, cp.Client
	if err := c.registerNodes(ctx); err != nil {
		return err
	}
	if err := c.createServices(ctx); err != nil {
		return err
	}
	if c.opt.RealNodes {
		return c.upReal(ctx)
	}
	if err := c.createDeployment(ctx); err != nil {
		return err
	}
	// kube-proxy first: SetWriter holds the testbed's lock while the
	// kube-proxies sync, which would stall the kubelet's AddPod calls.
	if err := c.SetMode(ctx, c.opt.Mode); err != nil {
		return err
	}
	if c.opt.SocketLB {
		// Before the kubelet: every pod it adds is then in the
		// translator's namespaces from its start.
		if err := c.startSocketLB(ctx); err != nil {
			return err
		}
	}
	if c.Kubelet, err = RunKubelet(ctx, c.Client, c.TB, KubeletOptions{
		PoolSize: c.opt.PoolSize, TerminationGrace: c.opt.TerminationGrace, Logger: c.log,
	}); err != nil {
		return err
	}
	_, err = c.WaitWebReady(ctx)
	return err
}

// Down stops the kubelet stand-in or the real nodes (every container,
// cgroup and mount of theirs), every control-plane process and kube-proxy,
// and deletes the testbed's namespaces. Safe to call twice.
func (c *Cluster) Down() error {
	var errs []error
	if c.Kubelet != nil {
		c.Kubelet.Stop()
	}
	c.stopSocketLB()
	if err := c.stopReal(); err != nil {
		errs = append(errs, err)
	}
	if c.CP != nil {
		if err := c.CP.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.TB.Down(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Kubeconfig is the admin kubeconfig path, for kubectl.
func (c *Cluster) Kubeconfig() string { return c.CP.Kubeconfig }

// SetMode runs kube-proxy in mode on every node: the running kube-proxies
// stop and their rules are cleaned up, then new ones start and sync.
func (c *Cluster) SetMode(ctx context.Context, mode testbed.ProxyMode) error {
	if w, ok := c.TB.Writer().(*KubeProxyWriter); ok && w.Mode == mode {
		// Same mode: SetWriter would not flush a writer of the same name,
		// and two kube-proxies per node would fight over the rules.
		return c.TB.Sync(ctx)
	}
	w := NewKubeProxyWriter(c.CP, mode)
	w.ClusterCIDRs = c.TB.ClusterCIDRs()
	if err := c.TB.SetWriter(ctx, w); err != nil {
		return fmt.Errorf("switch kube-proxy to %s: %w", mode, err)
	}
	return nil
}

// registerNodes creates a Node per testbed node with the LAN address as
// InternalIP; kube-proxy waits for its Node and, in nftables mode, serves
// NodePorts on that address only.
func (c *Cluster) registerNodes(ctx context.Context) error {
	for _, n := range c.TB.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
				HostnameLabel: n.Name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			}},
			Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: prefixStrings(n.PodCIDR, n.PodCIDRs)},
		}
		node.Annotations = OverlayAnnotations(c.opt.Overlay, n)
		created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create Node %s: %w", n.Name, err)
		}
		if c.opt.RealNodes {
			// The kubelet registers into this object and reports
			// addresses and readiness itself; the podCIDR matches
			// the node's CNI range.
			continue
		}
		now := metav1.Now()
		created.Status = corev1.NodeStatus{
			Addresses: append(internalIPs(n), corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name}),
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: now, LastTransitionTime: now,
			}},
		}
		if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("report Node %s ready: %w", n.Name, err)
		}
	}
	return nil
}

// createServices creates web and empty with the testbed's fixed ClusterIPs,
// NodePorts and LB IPs, so the testbed's routes and accessors stay right, and
// publishes the LB IPs as a cloud controller would.
func (c *Cluster) createServices(ctx context.Context) error {
	for _, s := range []testbed.Service{c.TB.Web(), c.TB.Empty()} {
		selector := map[string]string{WebLabel: WebDeployment}
		if s.Name == testbed.ServiceEmpty {
			selector = map[string]string{WebLabel: "nothing"}
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: s.Name},
			Spec: corev1.ServiceSpec{
				Type:                  corev1.ServiceTypeLoadBalancer,
				ClusterIP:             s.ClusterIP.String(),
				ClusterIPs:            addrStrings(s.ClusterIP, s.ClusterIPs),
				IPFamilyPolicy:        familyPolicy(s.ClusterIPs),
				IPFamilies:            ipFamilies(s.ClusterIPs),
				Selector:              selector,
				ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicy(s.Policy),
				Ports: []corev1.ServicePort{{
					Name: s.PortName, Protocol: corev1.ProtocolTCP, Port: int32(s.Port),
					TargetPort: intstr.FromInt32(int32(s.TargetPort)), NodePort: int32(s.NodePort),
				}},
			},
		}
		created, err := c.Client.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create Service %s: %w", s.Name, err)
		}
		created.Status.LoadBalancer.Ingress = nil
		for _, ip := range addrStrings(s.LoadBalancerIP, s.LoadBalancerIPs) {
			created.Status.LoadBalancer.Ingress = append(created.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
		}
		if _, err := c.Client.CoreV1().Services(Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("publish LB IP of Service %s: %w", s.Name, err)
		}
	}
	if c.opt.UDPService {
		return c.createUDPService(ctx)
	}
	return nil
}

func (c *Cluster) createDeployment(ctx context.Context) error {
	labels := map[string]string{WebLabel: WebDeployment}
	tmpl := c.standInTemplate(labels)
	if c.opt.RealNodes {
		tmpl = c.realTemplate(labels)
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: WebDeployment, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &c.opt.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: tmpl,
		},
	}
	if _, err := c.Client.AppsV1().Deployments(Namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Deployment %s: %w", WebDeployment, err)
	}
	return nil
}

// realTemplate runs the podserver image: it answers with the pod name the
// downward API gives it, and its readiness probe is what puts the pod into
// web's EndpointSlices.
func (c *Cluster) realTemplate(labels map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:  WebContainer,
				Image: c.Images[PodServerImage].Ref,
				// Imported, never pulled.
				ImagePullPolicy: corev1.PullNever,
				Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: testbed.PodPort, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{
					{Name: PodNameEnv, ValueFrom: &corev1.EnvVarSource{
						FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: DelayEnv, Value: "0s"},
				},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/readyz", Port: intstr.FromInt32(testbed.PodPort)}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

func (c *Cluster) standInTemplate(labels map[string]string) corev1.PodTemplateSpec {
	ports := []corev1.ContainerPort{{Name: "http", ContainerPort: testbed.PodPort, Protocol: corev1.ProtocolTCP}}
	if c.opt.UDPService {
		ports = append(ports, udpContainerPort())
	}
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{
			// terminationGracePeriodSeconds stays at its default: with
			// 0 the apiserver deletes pods at once, so the kubelet
			// stand-in could not report them terminating first. How
			// long a pod drains is KubeletOptions.TerminationGrace.
			Containers: []corev1.Container{{
				Name:  WebContainer,
				Image: "lbpath.invalid/podserver:v1", // never pulled
				Ports: ports,
				Env:   []corev1.EnvVar{{Name: DelayEnv, Value: "0s"}},
			}},
		},
	}
}

// SetPolicy sets the externalTrafficPolicy of Service web (and dns, with
// Options.UDPService); kube-proxy follows within about a second.
func (c *Cluster) SetPolicy(ctx context.Context, p testbed.Policy) error {
	patch := fmt.Sprintf(`{"spec":{"externalTrafficPolicy":%q}}`, p)
	names := []string{testbed.ServiceWeb}
	if c.opt.UDPService {
		names = append(names, UDPService)
	}
	for _, name := range names {
		if _, err := c.Client.CoreV1().Services(Namespace).Patch(ctx, name, types.StrategicMergePatchType,
			[]byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("set externalTrafficPolicy of %s to %s: %w", name, p, err)
		}
	}
	c.policy = p
	return nil
}

// SetWebDelay changes web's LBPATH_DELAY, which rolls out a new version
// whose pods answer that much later. Use WaitWebReady for the end of the
// rollout.
func (c *Cluster) SetWebDelay(ctx context.Context, d time.Duration) error {
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":%q,"env":[{"name":%q,"value":%q}]}]}}}}`,
		WebContainer, DelayEnv, d.String())
	if _, err := c.Client.AppsV1().Deployments(Namespace).Patch(ctx, WebDeployment, types.StrategicMergePatchType,
		[]byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("set %s of %s to %s: %w", DelayEnv, WebDeployment, d, err)
	}
	return nil
}

// WebPod is a running web pod as the API reports it.
type WebPod struct {
	Name string
	UID  types.UID
	Node string
	IP   netip.Addr
}

// WaitWebReady waits until Deployment web is fully rolled out (all replicas
// updated, available, no old ones left) and web's EndpointSlices list
// exactly its pods as ready, then returns the pods sorted by name.
func (c *Cluster) WaitWebReady(ctx context.Context) ([]WebPod, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		pods, err := c.webReady(ctx)
		if err == nil {
			return pods, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for web to be ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) webReady(ctx context.Context) ([]WebPod, error) {
	d, err := c.Client.AppsV1().Deployments(Namespace).Get(ctx, WebDeployment, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	want := *d.Spec.Replicas
	s := d.Status
	if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != want || s.ReadyReplicas != want ||
		s.AvailableReplicas != want || s.Replicas != want {
		return nil, fmt.Errorf("deployment status %+v, want %d replicas", s, want)
	}
	pods, err := c.WebPods(ctx)
	if err != nil {
		return nil, err
	}
	if len(pods) != int(want) {
		return nil, fmt.Errorf("%d web pods, want %d", len(pods), want)
	}
	eps, err := c.WebEndpoints(ctx)
	if err != nil {
		return nil, err
	}
	// A dual-stack Service has one EndpointSlice per family; the pods'
	// primary addresses are checked, and the other family's slice must
	// list as many.
	if eps, err = c.primaryEndpoints(eps); err != nil {
		return nil, err
	}
	var ready []WebPod
	for _, e := range eps {
		if e.Ready {
			ready = append(ready, WebPod{Name: e.Pod, Node: e.Node, IP: e.IP})
		}
	}
	if len(ready) != len(pods) || len(eps) != len(pods) {
		return nil, fmt.Errorf("endpoints %+v, want ready ones for %+v only", eps, pods)
	}
	for _, p := range pods {
		if !slices.ContainsFunc(ready, func(e WebPod) bool { return e.Name == p.Name && e.Node == p.Node && e.IP == p.IP }) {
			return nil, fmt.Errorf("pod %+v missing from endpoints %+v", p, eps)
		}
	}
	if c.opt.RealNodes {
		if err := c.proxied(ctx, pods); err != nil {
			return nil, err
		}
	}
	return pods, nil
}

// WebPods lists web's pods that run and are not being deleted, by name.
func (c *Cluster) WebPods(ctx context.Context) ([]WebPod, error) {
	list, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: WebLabel + "=" + WebDeployment})
	if err != nil {
		return nil, fmt.Errorf("list web pods: %w", err)
	}
	var out []WebPod
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			return nil, fmt.Errorf("pod %s: podIP %q: %w", p.Name, p.Status.PodIP, err)
		}
		out = append(out, WebPod{Name: p.Name, UID: p.UID, Node: p.Spec.NodeName, IP: ip})
	}
	slices.SortFunc(out, func(a, b WebPod) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Endpoint is one endpoint of a Service's EndpointSlices.
type Endpoint struct {
	Pod   string
	Node  string
	IP    netip.Addr
	Ready bool
	// Terminating is set while the pod is being deleted.
	Terminating bool
}

// WebEndpoints flattens web's EndpointSlices.
func (c *Cluster) WebEndpoints(ctx context.Context) ([]Endpoint, error) {
	return c.Endpoints(ctx, testbed.ServiceWeb)
}

// Endpoints flattens the EndpointSlices of Service name in Namespace.
func (c *Cluster) Endpoints(ctx context.Context, name string) ([]Endpoint, error) {
	return c.endpointsIn(ctx, Namespace, name)
}

func (c *Cluster) endpointsIn(ctx context.Context, namespace, name string) ([]Endpoint, error) {
	list, err := c.Client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + name,
	})
	if err != nil {
		return nil, fmt.Errorf("list EndpointSlices of %s: %w", name, err)
	}
	var out []Endpoint
	for _, s := range list.Items {
		for _, e := range s.Endpoints {
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					return nil, fmt.Errorf("EndpointSlice %s: address %q: %w", s.Name, a, err)
				}
				ep := Endpoint{IP: ip, Ready: e.Conditions.Ready != nil && *e.Conditions.Ready,
					Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating}
				if e.TargetRef != nil {
					ep.Pod = e.TargetRef.Name
				}
				if e.NodeName != nil {
					ep.Node = *e.NodeName
				}
				out = append(out, ep)
			}
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return a.IP.Compare(b.IP) })
	return out, nil
}
