package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// Config says how to reach the API server.
type Config struct {
	// Kubeconfig is a kubeconfig path; empty means in-cluster config.
	Kubeconfig string
	// Resync is the informers' resync period; 0 disables it.
	Resync time.Duration
	// Index bounds the address history.
	Index IndexConfig
	// GatewayRecheck is how often the agent asks whether the Gateway API
	// is served while its CRDs are absent; default a minute.
	GatewayRecheck time.Duration
	// ExternalNameResolver is the DNS server (host:port) the agent asks
	// for ExternalName Services' names; empty means the system resolver.
	ExternalNameResolver string
}

// RESTConfig builds the client configuration: the kubeconfig when given,
// else the in-cluster service account.
func (c Config) RESTConfig() (*rest.Config, error) {
	if c.Kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", c.Kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config (set --kubeconfig outside a cluster): %w", err)
	}
	return rc, nil
}

// APIStats counts requests to the API server. Failures (transport errors
// and 5xx answers) are what an outage looks like from the agent; client-go
// retries them, so they are counted here rather than at the informer.
type APIStats struct {
	Requests, Failures atomic.Uint64
	// Fresh, when set before the informers start, learns each watched
	// resource's request outcomes (see Freshness).
	Fresh *Freshness
}

type countingTransport struct {
	next http.RoundTripper
	st   *APIStats
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.st.Requests.Add(1)
	resp, err := c.next.RoundTrip(r)
	if err != nil || resp.StatusCode >= 500 {
		c.st.Failures.Add(1)
	}
	if f := c.st.Fresh; f != nil {
		if res := resourceOf(r.URL.Path); res != "" {
			switch {
			case err != nil || resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
				f.Fail(res)
			case resp.StatusCode < 300:
				f.OK(res, time.Now())
			}
		}
	}
	return resp, err
}

// Dynamic builds a JSON dynamic client (for the Gateway API's custom
// resources, which have no protobuf) whose requests are counted in st.
func (c Config) Dynamic(st *APIStats) (dynamic.Interface, error) {
	rc, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, st: st} })
	d, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return d, nil
}

// Client builds a clientset from the configuration whose requests are
// counted in st.
func (c Config) Client(st *APIStats) (kubernetes.Interface, error) {
	rc, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, st: st} })
	// Protobuf: lists of thousands of pods decode with a fraction of the
	// garbage (and CPU) of JSON, which is what sets the agent's peak RSS.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}

// Watcher runs the informers and feeds the Index.
type Watcher struct {
	Index   *Index
	factory informers.SharedInformerFactory
	log     *slog.Logger
	synced  []cache.InformerSynced
	// Events counts informer events handled; WatchErrors counts
	// list/watch cycles that failed, which client-go retries.
	Events, WatchErrors atomic.Uint64
	// API counts requests and failures when the client was built by
	// Config.Client.
	API APIStats
	// Fresh says whether the index is complete at a given time; the
	// client's transport reports to it through APIStats.Fresh.
	Fresh Freshness
	// BadAnnotations counts Service annotation values lbpath could not
	// use (lbpath.io/*), each counted and logged once per value.
	BadAnnotations atomic.Uint64

	annMu     sync.Mutex
	annLogged map[string]string // Service key → the errors last logged
	extCfg    ExternalNameConfig

	// Ingress holds IngressClasses and Ingresses (ingress.go);
	// IngressErrors counts their failed list/watch cycles.
	Ingress       *Ingresses
	IngressErrors atomic.Uint64
	ingressSynced []cache.InformerSynced
	// gatewayWatching: the Gateway API is served and watched (gateway.go).
	gatewayWatching atomic.Bool
}

func externalNameConfig(cfg Config) ExternalNameConfig {
	if cfg.ExternalNameResolver == "" {
		return ExternalNameConfig{}
	}
	return ExternalNameConfig{Resolver: NewDNSResolver(cfg.ExternalNameResolver)}
}

// NewWatcher prepares informers for Pods, Nodes, Services, EndpointSlices
// and ReplicaSets, cluster-wide. Pods are watched cluster-wide, not only this
// node's: a connection's client is often a pod on another node, and after the
// transform a pod costs a few hundred bytes (docs/PERFORMANCE.md).
func NewWatcher(cs kubernetes.Interface, cfg Config, log *slog.Logger) (*Watcher, error) {
	if log == nil {
		log = slog.Default()
	}
	w := &Watcher{Index: NewIndex(cfg.Index), log: log, extCfg: externalNameConfig(cfg), Ingress: NewIngresses(),
		factory: informers.NewSharedInformerFactoryWithOptions(cs, cfg.Resync, informers.WithTransform(strip))}
	add := func(resource string, inf cache.SharedIndexInformer, h cache.ResourceEventHandlerFuncs) error {
		if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			w.WatchErrors.Add(1)
			w.Fresh.Fail(resource)
			w.log.Debug("kube watch error; client-go retries", "err", err)
		}); err != nil {
			return fmt.Errorf("watch error handler: %w", err)
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("event handler: %w", err)
		}
		w.synced = append(w.synced, inf.HasSynced)
		return nil
	}
	x := w.Index
	now := time.Now
	for _, step := range []func() error{
		func() error {
			return add("nodes", w.factory.Core().V1().Nodes().Informer(), cache.ResourceEventHandlerFuncs{
				AddFunc:    func(o any) { w.Events.Add(1); w.onNode(o) },
				UpdateFunc: func(_, o any) { w.Events.Add(1); w.onNode(o) },
				DeleteFunc: func(o any) {
					w.Events.Add(1)
					if n, ok := unwrap(o).(*corev1.Node); ok {
						x.DeleteNode(n.Name, now())
					}
				},
			})
		},
		func() error {
			return add("pods", w.factory.Core().V1().Pods().Informer(), cache.ResourceEventHandlerFuncs{
				AddFunc:    func(o any) { w.Events.Add(1); w.onPod(o) },
				UpdateFunc: func(_, o any) { w.Events.Add(1); w.onPod(o) },
				DeleteFunc: func(o any) {
					w.Events.Add(1)
					if p, ok := unwrap(o).(*corev1.Pod); ok {
						x.DeletePod(p.Namespace, p.Name, now())
					}
				},
			})
		},
		func() error {
			return add("services", w.factory.Core().V1().Services().Informer(), cache.ResourceEventHandlerFuncs{
				AddFunc:    func(o any) { w.Events.Add(1); w.onService(o) },
				UpdateFunc: func(_, o any) { w.Events.Add(1); w.onService(o) },
				DeleteFunc: func(o any) {
					w.Events.Add(1)
					if s, ok := unwrap(o).(*corev1.Service); ok {
						x.DeleteService(s.Namespace, s.Name, now())
						w.annotationErrors(s.Namespace+"/"+s.Name, nil)
					}
				},
			})
		},
		func() error {
			return add("endpointslices", w.factory.Discovery().V1().EndpointSlices().Informer(), cache.ResourceEventHandlerFuncs{
				AddFunc:    func(o any) { w.Events.Add(1); w.onSlice(o) },
				UpdateFunc: func(_, o any) { w.Events.Add(1); w.onSlice(o) },
				DeleteFunc: func(o any) {
					w.Events.Add(1)
					if s, ok := unwrap(o).(*discoveryv1.EndpointSlice); ok {
						x.DeleteEndpointSlice(s.Namespace+"/"+s.Name, now())
					}
				},
			})
		},
		func() error {
			return add("replicasets", w.factory.Apps().V1().ReplicaSets().Informer(), cache.ResourceEventHandlerFuncs{
				AddFunc:    func(o any) { w.Events.Add(1); w.onRS(o) },
				UpdateFunc: func(_, o any) { w.Events.Add(1); w.onRS(o) },
				DeleteFunc: func(o any) {
					w.Events.Add(1)
					if rs, ok := unwrap(o).(*appsv1.ReplicaSet); ok {
						x.DeleteReplicaSet(rs.Namespace, rs.Name)
					}
				},
			})
		},
		w.watchIngresses,
	} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Run starts the informers and returns; they stop when ctx is done. The
// agent does not wait for the API server: it captures regardless, and
// connections that cannot be named yet wait a bounded time in agent/path.
func (w *Watcher) Run(ctx context.Context) {
	w.factory.Start(ctx.Done())
	go w.Index.ResolveExternalNames(ctx, w.extCfg, w.log)
	// The initial lists of a large cluster leave tens of MiB of decoded
	// garbage; return it to the kernel once instead of keeping it in RSS
	// until the runtime's slow background scavenger gets to it.
	go func() {
		if w.WaitSynced(ctx) {
			w.Fresh.Synced(time.Now())
			debug.FreeOSMemory()
		}
	}()
}

// WaitSynced waits until every informer has listed once, or ctx is done.
func (w *Watcher) WaitSynced(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), w.synced...)
}

// CurrentAt reports whether the index held every change the API server
// knew of at t, so that an address it has no owner for at t had none (see
// Freshness).
func (w *Watcher) CurrentAt(t time.Time) bool { return w.Fresh.CurrentAt(t) }

// Synced reports whether every informer has listed once.
func (w *Watcher) Synced() bool {
	for _, s := range w.synced {
		if !s() {
			return false
		}
	}
	return true
}

func unwrap(o any) any {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return o
}

// strip drops what the agent never reads before the object enters the
// informer cache: managed fields, annotations, and most of the spec. It is
// idempotent, as client-go requires of transforms.
func strip(o any) (any, error) {
	if v, ok := stripIngress(o); ok {
		return v, nil
	}
	switch v := o.(type) {
	case *corev1.Pod:
		p := &corev1.Pod{ObjectMeta: slimMeta(v.ObjectMeta, "pod-template-hash")}
		p.Spec.NodeName = v.Spec.NodeName
		p.Spec.HostNetwork = v.Spec.HostNetwork
		for _, c := range v.Spec.Containers {
			var ports []corev1.ContainerPort
			for _, cp := range c.Ports {
				if cp.HostPort != 0 {
					ports = append(ports, corev1.ContainerPort{HostPort: cp.HostPort, ContainerPort: cp.ContainerPort, Protocol: cp.Protocol})
				}
			}
			if len(ports) > 0 {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Ports: ports})
			}
		}
		p.Status.PodIP = v.Status.PodIP
		p.Status.PodIPs = v.Status.PodIPs
		p.Status.Phase = v.Status.Phase
		for _, c := range v.Status.Conditions {
			if c.Type == corev1.PodReady {
				p.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
			}
		}
		return p, nil
	case *corev1.Node:
		n := &corev1.Node{ObjectMeta: slimMeta(v.ObjectMeta, "topology.kubernetes.io/zone")}
		for _, a := range v.Status.Addresses {
			if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
				n.Status.Addresses = append(n.Status.Addresses, a)
			}
		}
		// The node's other addresses (NodeAddresses): CNI annotations
		// and the pod CIDRs.
		n.Annotations = keptNodeAnnotations(v.Annotations)
		n.Spec.PodCIDR, n.Spec.PodCIDRs = v.Spec.PodCIDR, v.Spec.PodCIDRs
		return n, nil
	case *corev1.Service:
		s := &corev1.Service{ObjectMeta: slimMeta(v.ObjectMeta)}
		for _, k := range []string{AnnotationSpanSampling, AnnotationSlowThreshold} {
			if a, ok := v.Annotations[k]; ok {
				if s.Annotations == nil {
					s.Annotations = map[string]string{}
				}
				s.Annotations[k] = a
			}
		}
		s.Spec.Type = v.Spec.Type
		s.Spec.ClusterIPs = v.Spec.ClusterIPs
		s.Spec.ClusterIP = v.Spec.ClusterIP
		s.Spec.Ports = v.Spec.Ports
		s.Spec.ExternalIPs = v.Spec.ExternalIPs
		s.Spec.ExternalName = v.Spec.ExternalName
		s.Spec.ExternalTrafficPolicy = v.Spec.ExternalTrafficPolicy
		s.Spec.HealthCheckNodePort = v.Spec.HealthCheckNodePort
		s.Status.LoadBalancer = v.Status.LoadBalancer
		return s, nil
	case *discoveryv1.EndpointSlice:
		e := &discoveryv1.EndpointSlice{ObjectMeta: slimMeta(v.ObjectMeta, discoveryv1.LabelServiceName)}
		e.AddressType = v.AddressType
		e.Ports = v.Ports
		for _, ep := range v.Endpoints {
			ep.Hostname, ep.DeprecatedTopology, ep.Hints, ep.Zone = nil, nil, nil, nil
			if ep.TargetRef != nil {
				ep.TargetRef = &corev1.ObjectReference{Kind: ep.TargetRef.Kind, Name: ep.TargetRef.Name}
			}
			e.Endpoints = append(e.Endpoints, ep)
		}
		return e, nil
	case *appsv1.ReplicaSet:
		return &appsv1.ReplicaSet{ObjectMeta: slimMeta(v.ObjectMeta)}, nil
	}
	return o, nil
}

// slimMeta keeps identity, owner references, deletion and the named labels.
func slimMeta(m metav1.ObjectMeta, keepLabels ...string) metav1.ObjectMeta {
	out := metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID,
		ResourceVersion: m.ResourceVersion, CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp}
	for _, r := range m.OwnerReferences {
		if r.Controller != nil && *r.Controller {
			// Keep Controller: client-go may transform an object twice, so
			// the transform must be idempotent.
			out.OwnerReferences = []metav1.OwnerReference{{Kind: r.Kind, Name: r.Name, APIVersion: r.APIVersion, Controller: r.Controller}}
		}
	}
	for _, k := range keepLabels {
		if v, ok := m.Labels[k]; ok {
			if out.Labels == nil {
				out.Labels = map[string]string{}
			}
			out.Labels[k] = v
		}
	}
	return out
}

func parseIP(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func ownerOf(m metav1.ObjectMeta, kind string) string {
	for _, r := range m.OwnerReferences {
		if r.Kind == kind {
			return r.Name
		}
	}
	return ""
}

// PodFrom converts an API Pod (stripped or not) to the index's view.
func PodFrom(v *corev1.Pod) *Pod {
	p := &Pod{Namespace: v.Namespace, Name: v.Name, UID: string(v.UID), Node: v.Spec.NodeName,
		IP: parseIP(v.Status.PodIP), HostNetwork: v.Spec.HostNetwork,
		Terminating:  v.DeletionTimestamp != nil,
		ReplicaSet:   ownerOf(v.ObjectMeta, "ReplicaSet"),
		TemplateHash: v.Labels["pod-template-hash"]}
	for _, a := range v.Status.PodIPs {
		if ip := parseIP(a.IP); ip.IsValid() {
			p.IPs = append(p.IPs, ip)
		}
	}
	for _, c := range v.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			p.Ready = true
		}
	}
	for _, c := range v.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.HostPort > 0 && cp.HostPort < 65536 && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				p.HostPorts = append(p.HostPorts, HostPort{HostPort: uint16(cp.HostPort), ContainerPort: uint16(cp.ContainerPort)})
			}
		}
	}
	return p
}

func (w *Watcher) onPod(o any) {
	if v, ok := o.(*corev1.Pod); ok {
		w.Index.SetPod(PodFrom(v), time.Now())
	}
}

func (w *Watcher) onNode(o any) {
	v, ok := o.(*corev1.Node)
	if !ok {
		return
	}
	n := &Node{Name: v.Name, Zone: v.Labels["topology.kubernetes.io/zone"], Addresses: NodeAddresses(v)}
	for _, a := range v.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip := parseIP(a.Address)
		if !n.InternalIP.IsValid() {
			n.InternalIP = ip
		}
		if ip.IsValid() {
			n.InternalIPs = append(n.InternalIPs, ip)
		}
	}
	w.Index.SetNode(n, time.Now())
}

// ServiceFrom converts an API Service to the index's view (TCP and UDP
// ports; SCTP ones are left out: the agent captures no SCTP).
func ServiceFrom(v *corev1.Service) *Service {
	s := &Service{Namespace: v.Namespace, Name: v.Name, Type: string(v.Spec.Type),
		ExternalTrafficPolicy: string(v.Spec.ExternalTrafficPolicy), Created: v.CreationTimestamp.Time}
	if s.ExternalTrafficPolicy == "" {
		s.ExternalTrafficPolicy = "Cluster"
	}
	ips := v.Spec.ClusterIPs
	if len(ips) == 0 && v.Spec.ClusterIP != "" {
		ips = []string{v.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if a := parseIP(ip); a.IsValid() {
			s.ClusterIPs = append(s.ClusterIPs, a)
		}
	}
	for _, p := range v.Spec.Ports {
		proto, ok := captured(p.Protocol)
		if !ok || p.Port <= 0 || p.Port > 65535 || p.NodePort < 0 || p.NodePort > 65535 {
			continue
		}
		sp := ServicePort{Name: p.Name, Port: uint16(p.Port), NodePort: uint16(p.NodePort), Protocol: proto}
		if p.TargetPort.IntVal > 0 && p.TargetPort.IntVal < 65536 {
			sp.TargetPort = uint16(p.TargetPort.IntVal)
		}
		s.Ports = append(s.Ports, sp)
	}
	if hc := v.Spec.HealthCheckNodePort; hc > 0 && hc < 65536 {
		s.HealthCheckNodePort = uint16(hc)
	}
	for _, in := range v.Status.LoadBalancer.Ingress {
		if a := parseIP(in.IP); a.IsValid() {
			s.LBIngress = append(s.LBIngress, a)
		}
		if in.Hostname != "" {
			s.LBHostnames = append(s.LBHostnames, in.Hostname)
		}
	}
	for _, ip := range v.Spec.ExternalIPs {
		if a := parseIP(ip); a.IsValid() {
			s.ExternalIPs = append(s.ExternalIPs, a)
		}
	}
	if v.Spec.Type == corev1.ServiceTypeExternalName {
		s.ExternalName = v.Spec.ExternalName
	}
	s.AnnotationErrors = samplingAnnotations(s, v.Annotations)
	return s
}

func (w *Watcher) onService(o any) {
	if v, ok := o.(*corev1.Service); ok {
		s := ServiceFrom(v)
		w.annotationErrors(s.Key(), s.AnnotationErrors)
		w.Index.SetService(s, time.Now())
	}
}

// annotationErrors logs and counts a Service's unusable annotations when
// they change: resyncs and unrelated updates repeat them.
func (w *Watcher) annotationErrors(key string, errs []string) {
	msg := strings.Join(errs, "; ")
	w.annMu.Lock()
	defer w.annMu.Unlock()
	if w.annLogged[key] == msg {
		return
	}
	if msg == "" {
		delete(w.annLogged, key)
		return
	}
	if w.annLogged == nil {
		w.annLogged = map[string]string{}
	}
	w.annLogged[key] = msg
	w.BadAnnotations.Add(uint64(len(errs)))
	w.log.Warn("Service annotation ignored: the agent's setting applies", "service", key, "err", msg)
}

func (w *Watcher) onSlice(o any) {
	v, ok := o.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	svc := v.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return
	}
	var ports []SlicePort
	for _, p := range v.Ports {
		var proto corev1.Protocol
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if kp, ok := captured(proto); ok && p.Port != nil && *p.Port > 0 && *p.Port < 65536 {
			ports = append(ports, SlicePort{Port: uint16(*p.Port), Protocol: kp})
		}
	}
	var eps []Endpoint
	for _, e := range v.Endpoints {
		ep := Endpoint{
			Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
			Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
			Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
		}
		if e.NodeName != nil {
			ep.Node = *e.NodeName
		}
		if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
			ep.PodName = e.TargetRef.Name
		}
		for _, a := range e.Addresses {
			if ip := parseIP(a); ip.IsValid() {
				ep.IP = ip
				eps = append(eps, ep)
			}
		}
	}
	w.Index.SetEndpointSlicePorts(v.Namespace+"/"+v.Name, v.Namespace+"/"+svc, ports, eps, time.Now())
}

// captured maps an API port protocol ("" is TCP) to the index's, and
// reports whether the agent captures it.
func captured(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case "", corev1.ProtocolTCP:
		return ProtocolTCP, true
	case corev1.ProtocolUDP:
		return ProtocolUDP, true
	}
	return "", false
}

func (w *Watcher) onRS(o any) {
	if v, ok := o.(*appsv1.ReplicaSet); ok {
		w.Index.SetReplicaSet(v.Namespace, v.Name, ownerOf(v.ObjectMeta, "Deployment"))
	}
}
