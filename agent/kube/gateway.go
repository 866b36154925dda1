package kube

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// GatewayGroupVersion is the Gateway API version the agent reads.
const GatewayGroupVersion = "gateway.networking.k8s.io/v1"

// Kinds of proxy hop (IngressHop.Kind, attribute lbpath.ingress.kind).
const (
	KindIngress = "Ingress"
	KindGateway = "Gateway"
)

// The Gateway API resources read. Through the dynamic client: the Gateway
// API's typed client would add its whole scheme to every agent for three
// small objects, and its CRDs are optional in a cluster.
var (
	gvrGatewayClass = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gatewayclasses"}
	gvrGateway      = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	gvrHTTPRoute    = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
)

// The fields of the Gateway API objects the agent uses, decoded from
// unstructured (json names as in gateway.networking.k8s.io/v1).
type (
	apiGatewayClass struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
		Spec     struct {
			ControllerName string `json:"controllerName"`
		} `json:"spec"`
	}
	apiGateway struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
		Spec     struct {
			GatewayClassName string `json:"gatewayClassName"`
		} `json:"spec"`
		Status struct {
			Addresses []struct {
				Type  *string `json:"type,omitempty"`
				Value string  `json:"value"`
			} `json:"addresses,omitempty"`
		} `json:"status"`
	}
	apiParentRef struct {
		Group     *string `json:"group,omitempty"`
		Kind      *string `json:"kind,omitempty"`
		Namespace *string `json:"namespace,omitempty"`
		Name      string  `json:"name"`
	}
	apiHTTPRoute struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
		Spec     struct {
			ParentRefs []apiParentRef `json:"parentRefs,omitempty"`
			Hostnames  []string       `json:"hostnames,omitempty"`
			Rules      []struct {
				Matches []struct {
					Path *struct {
						Value *string `json:"value,omitempty"`
					} `json:"path,omitempty"`
				} `json:"matches,omitempty"`
				BackendRefs []struct {
					Group     *string `json:"group,omitempty"`
					Kind      *string `json:"kind,omitempty"`
					Namespace *string `json:"namespace,omitempty"`
					Name      string  `json:"name"`
				} `json:"backendRefs,omitempty"`
			} `json:"rules,omitempty"`
		} `json:"spec"`
		Status struct {
			Parents []struct {
				ParentRef  apiParentRef       `json:"parentRef"`
				Conditions []metav1.Condition `json:"conditions,omitempty"`
			} `json:"parents,omitempty"`
		} `json:"status"`
	}
)

// gatewayRoute is one HTTPRoute path to a backend Service, attached to
// Gateway gateway (namespace/name).
type gatewayRoute struct {
	gateway string
	IngressRoute
}

// SetGatewayClass records a GatewayClass's controller.
func (g *Ingresses) SetGatewayClass(name, controller string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gwControllers[name] = controller
}

// DeleteGatewayClass forgets a GatewayClass.
func (g *Ingresses) DeleteGatewayClass(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.gwControllers, name)
}

// SetGateway records a Gateway: its class and the addresses its
// implementation published in status (the proxy's LoadBalancer).
func (g *Ingresses) SetGateway(namespace, name, class string, addrs []netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	key := namespace + "/" + name
	g.gateways[key] = &Ingress{Kind: KindGateway, Namespace: namespace, Name: name, Class: class, LBIPs: addrs}
	g.rebuildGateway(key)
}

// DeleteGateway forgets a Gateway.
func (g *Ingresses) DeleteGateway(namespace, name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	key := namespace + "/" + name
	delete(g.gateways, key)
	delete(g.byKey, gatewayKey(key))
}

// SetHTTPRoute records an HTTPRoute's paths to Services on each Gateway it
// is attached to.
func (g *Ingresses) SetHTTPRoute(key string, routes []gatewayRoute) {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.httpRoutes[key]
	g.httpRoutes[key] = routes
	g.rebuildGateways(old, routes)
}

// DeleteHTTPRoute forgets an HTTPRoute.
func (g *Ingresses) DeleteHTTPRoute(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.httpRoutes[key]
	delete(g.httpRoutes, key)
	g.rebuildGateways(old, nil)
}

func (g *Ingresses) rebuildGateways(lists ...[]gatewayRoute) {
	done := map[string]bool{}
	for _, l := range lists {
		for _, r := range l {
			if !done[r.gateway] {
				done[r.gateway] = true
				g.rebuildGateway(r.gateway)
			}
		}
	}
}

// rebuildGateway refreshes Gateway key's view: its routes are the paths of
// every HTTPRoute attached to it, in a stable order. g.mu is held.
func (g *Ingresses) rebuildGateway(key string) {
	gw := g.gateways[key]
	if gw == nil {
		return // routes wait for their Gateway
	}
	view := *gw
	view.Routes = nil
	names := make([]string, 0, len(g.httpRoutes))
	for k := range g.httpRoutes {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		for _, r := range g.httpRoutes[k] {
			if r.gateway == key {
				view.Routes = append(view.Routes, r.IngressRoute)
			}
		}
	}
	g.byKey[gatewayKey(key)] = &view
}

// gatewayKey keeps Gateways and Ingresses of the same name apart in byKey.
func gatewayKey(key string) string { return "gateway:" + key }

// gatewayFrom decodes a Gateway: addresses of type IPAddress (the default)
// only; a hostname address names no pod.
func gatewayFrom(u *unstructured.Unstructured) (*apiGateway, []netip.Addr, error) {
	var v apiGateway
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &v); err != nil {
		return nil, nil, fmt.Errorf("decode Gateway %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	var addrs []netip.Addr
	for _, a := range v.Status.Addresses {
		if a.Type != nil && *a.Type != "IPAddress" {
			continue
		}
		if ip := parseIP(a.Value); ip.IsValid() {
			addrs = append(addrs, ip)
		}
	}
	return &v, addrs, nil
}

// httpRouteFrom decodes an HTTPRoute into its paths to Services per parent
// Gateway. A parent whose implementation set Accepted=False carries no
// traffic and is left out; one without status yet is kept (a hop is named
// only when the proxy pod really connects to the backend).
func httpRouteFrom(u *unstructured.Unstructured) ([]gatewayRoute, error) {
	var v apiHTTPRoute
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &v); err != nil {
		return nil, fmt.Errorf("decode HTTPRoute %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	ns := v.Metadata.Namespace
	key := ns + "/" + v.Metadata.Name
	host := ""
	if len(v.Spec.Hostnames) == 1 {
		host = v.Spec.Hostnames[0]
	}
	var out []gatewayRoute
	for _, p := range v.Spec.ParentRefs {
		if !isGatewayRef(p.Group, p.Kind) {
			continue
		}
		gw := orNS(p.Namespace, ns) + "/" + p.Name
		if rejected(&v, gw, ns) {
			continue
		}
		for _, rule := range v.Spec.Rules {
			paths := []string{"/"}
			if len(rule.Matches) > 0 {
				paths = paths[:0]
				for _, m := range rule.Matches {
					p := "/"
					if m.Path != nil && m.Path.Value != nil {
						p = *m.Path.Value
					}
					paths = append(paths, p)
				}
			}
			for _, b := range rule.BackendRefs {
				if !isServiceRef(b.Group, b.Kind) || b.Name == "" {
					continue
				}
				for _, p := range paths {
					out = append(out, gatewayRoute{gateway: gw, IngressRoute: IngressRoute{
						Host: host, Path: p, Service: orNS(b.Namespace, ns) + "/" + b.Name, HTTPRoute: key}})
				}
			}
		}
	}
	return out, nil
}

func rejected(v *apiHTTPRoute, gw, ns string) bool {
	for _, st := range v.Status.Parents {
		if !isGatewayRef(st.ParentRef.Group, st.ParentRef.Kind) || orNS(st.ParentRef.Namespace, ns)+"/"+st.ParentRef.Name != gw {
			continue
		}
		for _, c := range st.Conditions {
			if c.Type == "Accepted" && c.Status == metav1.ConditionFalse {
				return true
			}
		}
	}
	return false
}

func isGatewayRef(group, kind *string) bool {
	return (group == nil || *group == "gateway.networking.k8s.io") && (kind == nil || *kind == "Gateway")
}

func isServiceRef(group, kind *string) bool {
	return (group == nil || *group == "") && (kind == nil || *kind == "Service")
}

func orNS(ns *string, def string) string {
	if ns != nil && *ns != "" {
		return *ns
	}
	return def
}

// GatewayState says whether the agent reads the Gateway API: "absent" until
// the API server serves gateway.networking.k8s.io/v1, then "watching".
func (w *Watcher) GatewayState() string {
	if w.gatewayWatching.Load() {
		return "watching"
	}
	return "absent"
}

// WatchGateways reads GatewayClasses, Gateways and HTTPRoutes once the
// API server serves them. Their CRDs are optional: while they are absent
// the agent logs it once and asks discovery again every recheck; Gateway
// hops stay unnamed meanwhile. Like the Ingress informers they stay out of
// WaitSynced and Freshness, and their errors count in IngressErrors.
func (w *Watcher) WatchGateways(ctx context.Context, disc discovery.DiscoveryInterface, dyn dynamic.Interface, recheck time.Duration) {
	if recheck <= 0 {
		recheck = time.Minute
	}
	go func() {
		logged := false
		for {
			_, err := disc.ServerResourcesForGroupVersion(GatewayGroupVersion)
			switch {
			case err == nil:
				w.startGatewayInformers(ctx, dyn)
				return
			case apierrors.IsNotFound(err):
				if !logged {
					w.log.Info("Gateway API not served (its CRDs are not installed); Gateway proxy hops stay unnamed until they are", "group_version", GatewayGroupVersion)
					logged = true
				}
			default:
				w.IngressErrors.Add(1)
				w.log.Debug("Gateway API discovery failed; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(recheck):
			}
		}
	}()
}

func (w *Watcher) startGatewayInformers(ctx context.Context, dyn dynamic.Interface) {
	f := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	g := w.Ingress
	var logged atomic.Bool
	decodeErr := func(err error) {
		w.IngressErrors.Add(1)
		if logged.CompareAndSwap(false, true) {
			w.log.Warn("cannot read Gateway API objects; their proxy hops stay unnamed", "err", err)
		}
	}
	handlers := map[schema.GroupVersionResource]func(u *unstructured.Unstructured, deleted bool){
		gvrGatewayClass: func(u *unstructured.Unstructured, deleted bool) {
			if deleted {
				g.DeleteGatewayClass(u.GetName())
				return
			}
			var v apiGatewayClass
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &v); err != nil {
				decodeErr(err)
				return
			}
			g.SetGatewayClass(u.GetName(), v.Spec.ControllerName)
		},
		gvrGateway: func(u *unstructured.Unstructured, deleted bool) {
			if deleted {
				g.DeleteGateway(u.GetNamespace(), u.GetName())
				return
			}
			v, addrs, err := gatewayFrom(u)
			if err != nil {
				decodeErr(err)
				return
			}
			g.SetGateway(u.GetNamespace(), u.GetName(), v.Spec.GatewayClassName, addrs)
		},
		gvrHTTPRoute: func(u *unstructured.Unstructured, deleted bool) {
			key := u.GetNamespace() + "/" + u.GetName()
			if deleted {
				g.DeleteHTTPRoute(key)
				return
			}
			routes, err := httpRouteFrom(u)
			if err != nil {
				decodeErr(err)
				return
			}
			g.SetHTTPRoute(key, routes)
		},
	}
	for gvr, h := range handlers {
		inf := f.ForResource(gvr).Informer()
		_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) { decodeErr(err) })
		_ = inf.SetTransform(stripUnstructured)
		on := func(o any, deleted bool) {
			if u, ok := unwrap(o).(*unstructured.Unstructured); ok {
				h(u, deleted)
			}
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { on(o, false) },
			UpdateFunc: func(_, o any) { on(o, false) },
			DeleteFunc: func(o any) { on(o, true) },
		}); err != nil {
			decodeErr(err)
		}
	}
	f.Start(ctx.Done())
	w.gatewayWatching.Store(true)
	w.log.Info("watching the Gateway API", "group_version", GatewayGroupVersion)
}

// stripUnstructured drops what the agent never reads and what makes
// objects large (managed fields, annotations such as
// last-applied-configuration).
func stripUnstructured(o any) (any, error) {
	if u, ok := o.(*unstructured.Unstructured); ok {
		u.SetManagedFields(nil)
		u.SetAnnotations(nil)
		u.SetLabels(nil)
	}
	return o, nil
}
