package kube

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informer transform keeps spec.healthCheckNodePort (idempotently),
// and ServiceFrom reads it.
func TestHealthCheckNodePortSurvivesStrip(t *testing.T) {
	in := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Labels: map[string]string{"x": "y"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			HealthCheckNodePort: 32101, Ports: []corev1.ServicePort{{Port: 80, NodePort: 30080}}}}
	o, err := strip(in)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := strip(o)
	s := ServiceFrom(again.(*corev1.Service))
	if s.HealthCheckNodePort != 32101 || s.ExternalTrafficPolicy != "Local" {
		t.Errorf("stripped twice: healthCheckNodePort %d policy %s, want 32101 Local", s.HealthCheckNodePort, s.ExternalTrafficPolicy)
	}
	if s := ServiceFrom(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "c"}}); s.HealthCheckNodePort != 0 {
		t.Errorf("no health check port: %d", s.HealthCheckNodePort)
	}
}

// HealthCheckAt names the Service that had the port at the time asked:
// the port is released when the Service turns Cluster (the API server
// frees it) and can then belong to another Service.
func TestHealthCheckAt(t *testing.T) {
	x := NewIndex(IndexConfig{})
	local := &Service{Namespace: "shop", Name: "web", Type: "LoadBalancer", ExternalTrafficPolicy: "Local", HealthCheckNodePort: 32101,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Ports: []ServicePort{{Port: 80, NodePort: 30080}}}
	x.SetService(local, at(0))
	cluster := *local
	cluster.ExternalTrafficPolicy, cluster.HealthCheckNodePort = "Cluster", 0
	x.SetService(&cluster, at(100))
	x.SetService(&Service{Namespace: "shop", Name: "api", Type: "LoadBalancer", ExternalTrafficPolicy: "Local", HealthCheckNodePort: 32101}, at(200))
	x.DeleteService("shop", "api", at(300))
	for _, c := range []struct {
		t    int
		want string
	}{{10, "shop/web"}, {99, "shop/web"}, {150, ""}, {250, "shop/api"}, {400, ""}} {
		s, ok := x.HealthCheckAt(32101, at(c.t))
		got := ""
		if ok {
			got = s.Key()
		}
		if got != c.want {
			t.Errorf("at %ds: %q, want %q", c.t, got, c.want)
		}
	}
	if _, ok := x.HealthCheckAt(30080, at(10)); ok {
		t.Error("a NodePort is no health-check port")
	}
}
