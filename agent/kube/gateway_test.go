package kube

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func mustUnstructured(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

// TestGatewayHop: a Gateway's proxy pod (an endpoint of the LoadBalancer
// Service whose LB IP the Gateway's status.addresses publishes) connecting
// to a Service an attached HTTPRoute routes to is named as that Gateway's
// hop, with its class's controller and the HTTPRoute. A hostname address
// names no pod, a parent the implementation did not accept carries no
// route, two HTTPRoutes to one backend give "*", and deletions unname.
func TestGatewayHop(t *testing.T) {
	now := time.Unix(1000, 0)
	x := NewIndex(IndexConfig{})
	lb := netip.MustParseAddr("203.0.113.13")
	proxy := &Pod{Namespace: "default", Name: "gw-1", UID: "g1", IP: netip.MustParseAddr("10.244.1.20"), Ready: true}
	x.SetPod(proxy, now)
	x.SetService(&Service{Namespace: "default", Name: "shop-gw", Type: "LoadBalancer", LBIngress: []netip.Addr{lb},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.60")}, Ports: []ServicePort{{Port: 80, TargetPort: 8080}}}, now)
	x.SetEndpointSlice("default/shop-gw-abc", "default/shop-gw", []uint16{8080},
		[]Endpoint{{IP: proxy.IP, Ready: true, PodName: proxy.Name}}, now)
	web := &Service{Namespace: "default", Name: "web"}
	api := &Service{Namespace: "default", Name: "api"}
	admin := &Service{Namespace: "default", Name: "admin"}

	g := NewIngresses()
	g.SetGatewayClass("nginx-gw", "example.com/gateway-controller")
	gw, addrs, err := gatewayFrom(mustUnstructured(t, `{"metadata":{"namespace":"default","name":"shop-gw"},
		"spec":{"gatewayClassName":"nginx-gw"},
		"status":{"addresses":[{"type":"Hostname","value":"gw.example"},{"value":"203.0.113.13"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0] != lb {
		t.Fatalf("addresses %v, want only the IP %v", addrs, lb)
	}
	g.SetGateway("default", "shop-gw", gw.Spec.GatewayClassName, addrs)
	route := func(doc string) {
		t.Helper()
		u := mustUnstructured(t, doc)
		rs, err := httpRouteFrom(u)
		if err != nil {
			t.Fatal(err)
		}
		g.SetHTTPRoute(u.GetNamespace()+"/"+u.GetName(), rs)
	}
	route(`{"metadata":{"namespace":"default","name":"shop"},"spec":{"parentRefs":[{"name":"shop-gw"},{"name":"other-gw"}],
		"hostnames":["shop.example"],
		"rules":[{"matches":[{"path":{"type":"PathPrefix","value":"/web"}}],"backendRefs":[{"name":"web","port":80}]},
		         {"matches":[{"path":{"value":"/api"}}],"backendRefs":[{"name":"api","port":80}]}]},
		"status":{"parents":[{"parentRef":{"name":"other-gw"},"conditions":[{"type":"Accepted","status":"False","reason":"NotAllowedByListeners","lastTransitionTime":"2026-12-08T00:00:00Z","message":""}]}]}}`)
	// Rejected by its Gateway: no route to admin.
	route(`{"metadata":{"namespace":"default","name":"admin"},"spec":{"parentRefs":[{"name":"shop-gw"}],
		"rules":[{"backendRefs":[{"name":"admin","port":80}]}]},
		"status":{"parents":[{"parentRef":{"name":"shop-gw"},"conditions":[{"type":"Accepted","status":"False","reason":"NotAllowedByListeners","lastTransitionTime":"2026-12-08T00:00:00Z","message":""}]}]}}`)

	h, ok := x.IngressHop(g, proxy, web)
	want := IngressHop{Kind: KindGateway, Ingress: "default/shop-gw", Class: "nginx-gw", Controller: "example.com/gateway-controller",
		HTTPRoute: "default/shop", ProxyService: "default/shop-gw", ProxyPod: "default/gw-1", Route: "shop.example/web"}
	if !ok || *h != want {
		t.Errorf("web: got %+v %v, want %+v", h, ok, want)
	}
	if h, ok := x.IngressHop(g, proxy, admin); ok {
		t.Errorf("a route its Gateway did not accept named %+v", h)
	}
	// A second HTTPRoute to api: which one a request took is not visible.
	route(`{"metadata":{"namespace":"default","name":"api-v2"},"spec":{"parentRefs":[{"name":"shop-gw"}],
		"rules":[{"matches":[{"path":{"value":"/v2/api"}}],"backendRefs":[{"name":"api","port":80}]}]}}`)
	if h, ok := x.IngressHop(g, proxy, api); !ok || h.Route != "*" || h.HTTPRoute != "*" {
		t.Errorf("api through two HTTPRoutes: got %+v %v, want route and HTTPRoute *", h, ok)
	}
	g.DeleteHTTPRoute("default/api-v2")
	if h, ok := x.IngressHop(g, proxy, api); !ok || h.Route != "shop.example/api" || h.HTTPRoute != "default/shop" {
		t.Errorf("api after the second route's deletion: got %+v %v", h, ok)
	}
	g.DeleteGateway("default", "shop-gw")
	if h, ok := x.IngressHop(g, proxy, web); ok || g.Len() != 0 {
		t.Errorf("deleted Gateway still names %+v (len %d)", h, g.Len())
	}
}
