package kube

import (
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// AnnotationDefaultIngressClass marks the IngressClass that Ingresses
// without spec.ingressClassName belong to.
const AnnotationDefaultIngressClass = "ingressclass.kubernetes.io/is-default-class"

// IngressRoute is one path of an Ingress and the Service it proxies to.
type IngressRoute struct {
	Host, Path string
	// Service is the backend's namespace/name.
	Service string
}

// Ingress is the agent's view of an Ingress: its class, the addresses its
// controller published in status (the proxy's LoadBalancer), and routes.
type Ingress struct {
	Namespace, Name string
	// Class is the IngressClass name ("" when none applies).
	Class  string
	LBIPs  []netip.Addr
	Routes []IngressRoute
}

// Key is namespace/name.
func (i *Ingress) Key() string { return i.Namespace + "/" + i.Name }

// IngressHop names the proxy hop of a connection from an ingress proxy pod
// to a backend Service.
type IngressHop struct {
	// Ingress is the Ingress's namespace/name, Class its IngressClass,
	// Controller that class's spec.controller.
	Ingress, Class, Controller string
	// ProxyService is the LoadBalancer Service in front of the proxy
	// (namespace/name): the one whose LB IP the Ingress's status holds.
	ProxyService string
	// ProxyPod is the proxy pod (namespace/name), an endpoint of
	// ProxyService.
	ProxyPod string
	// Route is "host/path" of the Ingress's one path to the backend, or
	// "*" when several paths lead there (which one a request took is not
	// visible from its connection).
	Route string
}

// Ingresses holds the cluster's IngressClasses and Ingresses (current
// state only: routes change rarely, and an Ingress's history would not
// tell which route a past request took any better).
type Ingresses struct {
	mu           sync.RWMutex
	controllers  map[string]string // class → controller
	defaultClass string
	byKey        map[string]*Ingress
	// Lookups and Hits count IngressHop calls and named hops.
	Lookups, Hits atomic.Uint64
}

// NewIngresses returns an empty table.
func NewIngresses() *Ingresses {
	return &Ingresses{controllers: map[string]string{}, byKey: map[string]*Ingress{}}
}

// SetClass records an IngressClass.
func (g *Ingresses) SetClass(name, controller string, isDefault bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.controllers[name] = controller
	if isDefault {
		g.defaultClass = name
	} else if g.defaultClass == name {
		g.defaultClass = ""
	}
}

// DeleteClass forgets an IngressClass.
func (g *Ingresses) DeleteClass(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.controllers, name)
	if g.defaultClass == name {
		g.defaultClass = ""
	}
}

// Set records an Ingress.
func (g *Ingresses) Set(i *Ingress) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.byKey[i.Key()] = i
}

// Delete forgets an Ingress.
func (g *Ingresses) Delete(namespace, name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.byKey, namespace+"/"+name)
}

// Len is the number of Ingresses known.
func (g *Ingresses) Len() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return len(g.byKey)
}

// IngressFrom converts an API Ingress to the agent's view.
func IngressFrom(v *networkingv1.Ingress) *Ingress {
	i := &Ingress{Namespace: v.Namespace, Name: v.Name}
	if v.Spec.IngressClassName != nil {
		i.Class = *v.Spec.IngressClassName
	}
	for _, lb := range v.Status.LoadBalancer.Ingress {
		if a := parseIP(lb.IP); a.IsValid() {
			i.LBIPs = append(i.LBIPs, a)
		}
	}
	add := func(host, path string, b *networkingv1.IngressServiceBackend) {
		if b != nil && b.Name != "" {
			i.Routes = append(i.Routes, IngressRoute{Host: host, Path: path, Service: v.Namespace + "/" + b.Name})
		}
	}
	if d := v.Spec.DefaultBackend; d != nil {
		add("", "", d.Service)
	}
	for _, r := range v.Spec.Rules {
		if r.HTTP == nil {
			continue
		}
		for _, p := range r.HTTP.Paths {
			add(r.Host, p.Path, p.Backend.Service)
		}
	}
	return i
}

// IngressHop names the hop when pod is an ingress proxy's and backend is a
// Service one of its Ingresses routes to: pod must be an endpoint of the
// LoadBalancer Service whose LB IP the Ingress's status publishes (what an
// ingress controller's publish-service writes). Several Ingresses may name
// the same proxy and backend; the first by key is taken.
func (x *Index) IngressHop(g *Ingresses, pod *Pod, backend *Service) (*IngressHop, bool) {
	if g == nil || pod == nil || backend == nil {
		return nil, false
	}
	g.Lookups.Add(1)
	g.mu.RLock()
	defer g.mu.RUnlock()
	keys := make([]string, 0, len(g.byKey))
	for k := range g.byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ing := g.byKey[k]
		route := routeTo(ing, backend.Key())
		if route == "" || len(ing.LBIPs) == 0 {
			continue
		}
		proxy := x.proxyService(ing.LBIPs, pod)
		if proxy == "" {
			continue
		}
		class := ing.Class
		if class == "" {
			class = g.defaultClass
		}
		g.Hits.Add(1)
		return &IngressHop{Ingress: k, Class: class, Controller: g.controllers[class], ProxyService: proxy,
			ProxyPod: pod.Namespace + "/" + pod.Name, Route: route}, true
	}
	return nil, false
}

// routeTo is the one route of ing to service ("host/path"), "*" for
// several, "" for none.
func routeTo(ing *Ingress, service string) string {
	out := ""
	for _, r := range ing.Routes {
		if r.Service != service {
			continue
		}
		if out != "" {
			return "*"
		}
		out = r.Host + r.Path
		if out == "" {
			out = "/"
		}
	}
	return out
}

// proxyService is the Service whose LB IPs include one of lbIPs and that
// has pod as an endpoint now, or "".
func (x *Index) proxyService(lbIPs []netip.Addr, pod *Pod) string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for key, s := range x.svcs {
		if s.Namespace != pod.Namespace || !slices.ContainsFunc(s.LBIngress, func(a netip.Addr) bool { return slices.Contains(lbIPs, a) }) {
			continue
		}
		for slice := range x.svcSlices[key] {
			for _, se := range x.slices[slice] {
				if se.PodName == pod.Name {
					return key
				}
			}
		}
	}
	return ""
}

// stripIngress is strip for the networking objects the agent keeps.
func stripIngress(o any) (any, bool) {
	switch v := o.(type) {
	case *networkingv1.IngressClass:
		c := &networkingv1.IngressClass{ObjectMeta: slimMeta(v.ObjectMeta)}
		if a, ok := v.Annotations[AnnotationDefaultIngressClass]; ok {
			c.Annotations = map[string]string{AnnotationDefaultIngressClass: a}
		}
		c.Spec.Controller = v.Spec.Controller
		return c, true
	case *networkingv1.Ingress:
		i := &networkingv1.Ingress{ObjectMeta: slimMeta(v.ObjectMeta)}
		i.Spec.IngressClassName = v.Spec.IngressClassName
		i.Spec.DefaultBackend = v.Spec.DefaultBackend
		i.Spec.Rules = v.Spec.Rules
		i.Status = v.Status
		return i, true
	}
	return nil, false
}

// watchIngresses adds informers for IngressClasses and Ingresses. They
// stay out of WaitSynced and Freshness: routes are an addition to a path's
// names, and an agent whose RBAC lacks them (an older chart) must still
// name everything else; their errors are counted and logged once.
func (w *Watcher) watchIngresses() error {
	var logged atomic.Bool
	onErr := func(_ *cache.Reflector, err error) {
		w.IngressErrors.Add(1)
		if logged.CompareAndSwap(false, true) {
			w.log.Warn("cannot watch IngressClasses/Ingresses; ingress proxy hops stay unnamed", "err", err)
		}
	}
	g := w.Ingress
	classes := w.factory.Networking().V1().IngressClasses().Informer()
	ings := w.factory.Networking().V1().Ingresses().Informer()
	onClass := func(o any) {
		if v, ok := o.(*networkingv1.IngressClass); ok {
			g.SetClass(v.Name, v.Spec.Controller, v.Annotations[AnnotationDefaultIngressClass] == "true")
		}
	}
	onIng := func(o any) {
		if v, ok := o.(*networkingv1.Ingress); ok {
			g.Set(IngressFrom(v))
		}
	}
	for _, step := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{
		{classes, cache.ResourceEventHandlerFuncs{AddFunc: onClass, UpdateFunc: func(_, o any) { onClass(o) },
			DeleteFunc: func(o any) {
				if m, ok := unwrap(o).(metav1.Object); ok {
					g.DeleteClass(m.GetName())
				}
			}}},
		{ings, cache.ResourceEventHandlerFuncs{AddFunc: onIng, UpdateFunc: func(_, o any) { onIng(o) },
			DeleteFunc: func(o any) {
				if m, ok := unwrap(o).(metav1.Object); ok {
					g.Delete(m.GetNamespace(), m.GetName())
				}
			}}},
	} {
		if err := step.inf.SetWatchErrorHandler(onErr); err != nil {
			return err
		}
		if _, err := step.inf.AddEventHandler(step.h); err != nil {
			return err
		}
		w.ingressSynced = append(w.ingressSynced, step.inf.HasSynced)
	}
	return nil
}

// IngressSynced reports whether the Ingress informers have listed once.
func (w *Watcher) IngressSynced() bool {
	for _, s := range w.ingressSynced {
		if !s() {
			return false
		}
	}
	return len(w.ingressSynced) > 0
}
