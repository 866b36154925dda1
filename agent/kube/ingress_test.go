package kube

import (
	"net/netip"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestIngressHop: a connection from a pod behind the LoadBalancer Service
// whose LB IP an Ingress's status publishes, to a Service that Ingress
// routes to, is named as that Ingress's proxy hop; a pod not behind that
// Service, a backend no route names, and an Ingress without published
// status are not.
func TestIngressHop(t *testing.T) {
	now := time.Unix(1000, 0)
	x := NewIndex(IndexConfig{})
	lb := netip.MustParseAddr("203.0.113.12")
	proxy := &Pod{Namespace: "default", Name: "proxy-1", UID: "p1", IP: netip.MustParseAddr("10.244.1.10"), Ready: true}
	other := &Pod{Namespace: "default", Name: "other", UID: "o1", IP: netip.MustParseAddr("10.244.1.11"), Ready: true}
	x.SetPod(proxy, now)
	x.SetPod(other, now)
	x.SetService(&Service{Namespace: "default", Name: "ingress-nginx", Type: "LoadBalancer", LBIngress: []netip.Addr{lb},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.50")}, Ports: []ServicePort{{Port: 80, TargetPort: 8080}}}, now)
	x.SetEndpointSlice("default/ingress-nginx-abc", "default/ingress-nginx", []uint16{8080},
		[]Endpoint{{IP: proxy.IP, Ready: true, PodName: proxy.Name}}, now)
	web := &Service{Namespace: "default", Name: "web"}
	api := &Service{Namespace: "default", Name: "api"}
	admin := &Service{Namespace: "default", Name: "admin"}

	g := NewIngresses()
	g.SetClass("nginx", "k8s.io/ingress-nginx", true)
	class := "nginx"
	prefix := networkingv1.PathTypePrefix
	backend := func(p, svc string) networkingv1.HTTPIngressPath {
		return networkingv1.HTTPIngressPath{Path: p, PathType: &prefix, Backend: networkingv1.IngressBackend{
			Service: &networkingv1.IngressServiceBackend{Name: svc}}}
	}
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "shop"},
		Spec: networkingv1.IngressSpec{IngressClassName: &class, Rules: []networkingv1.IngressRule{{Host: "shop.example",
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
				Paths: []networkingv1.HTTPIngressPath{backend("/web", "web"), backend("/api", "api"), backend("/v2/api", "api")}}}}}}}
	// Not published yet: the proxy is unknown.
	g.Set(IngressFrom(ing))
	if h, ok := x.IngressHop(g, proxy, web); ok {
		t.Fatalf("hop %+v named before the Ingress's status names its LB", h)
	}
	ing.Status.LoadBalancer.Ingress = []networkingv1.IngressLoadBalancerIngress{{IP: lb.String()}}
	stripped, err := strip(ing)
	if err != nil {
		t.Fatal(err)
	}
	g.Set(IngressFrom(stripped.(*networkingv1.Ingress)))

	h, ok := x.IngressHop(g, proxy, web)
	want := IngressHop{Ingress: "default/shop", Class: "nginx", Controller: "k8s.io/ingress-nginx",
		ProxyService: "default/ingress-nginx", ProxyPod: "default/proxy-1", Route: "shop.example/web"}
	if !ok || *h != want {
		t.Errorf("web: got %+v %v, want %+v", h, ok, want)
	}
	if h, ok := x.IngressHop(g, proxy, api); !ok || h.Route != "*" {
		t.Errorf("api has two paths: got %+v %v, want route *", h, ok)
	}
	if h, ok := x.IngressHop(g, other, web); ok {
		t.Errorf("pod not behind the proxy Service named as proxy: %+v", h)
	}
	if h, ok := x.IngressHop(g, proxy, admin); ok {
		t.Errorf("backend without a route named: %+v", h)
	}
	g.Delete("default", "shop")
	if h, ok := x.IngressHop(g, proxy, web); ok {
		t.Errorf("deleted Ingress still names %+v", h)
	}
}

// TestStripIngressIdempotent: client-go may transform an object twice.
func TestStripIngressIdempotent(t *testing.T) {
	c := &networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: "nginx",
		Annotations: map[string]string{AnnotationDefaultIngressClass: "true", "other": "x"}},
		Spec: networkingv1.IngressClassSpec{Controller: "k8s.io/ingress-nginx"}}
	once, _ := strip(c)
	twice, _ := strip(once)
	got := twice.(*networkingv1.IngressClass)
	if got.Spec.Controller != "k8s.io/ingress-nginx" || len(got.Annotations) != 1 || got.Annotations[AnnotationDefaultIngressClass] != "true" {
		t.Errorf("stripped twice: %+v", got)
	}
}
