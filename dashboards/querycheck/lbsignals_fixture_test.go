package querycheck

import (
	"testing"

	"github.com/prometheus/prometheus/promql/promqltest"
)

// addLBSignals adds the lbsignals receiver's series (receiver/lbsignals,
// resource service.name=lbpath-collector) to the synthetic cluster:
//
//   - 30 LoadBalancer Services in prod (more than LbpathManyLoadBalancers'
//     25); shop/legacy pending since minute 0 (age grows 60 s a minute).
//   - Ready endpoints: web's three pods, checkout's current pod, and api
//     (externalTrafficPolicy Local) with a pod on node-a and one on node-b.
//   - api's health check: node-a 200 with 1 local endpoint, node-b 503 with
//     0 although its pod is ready (kube-proxy out of sync), node-c times
//     out. shop/gone (Local, scaled to zero) answers 503 on every node.
func addLBSignals(f *fixture, coll map[string]string) {
	f.add("lbpath_loadbalancer_services", coll, gauge(30, 0, 60))
	f.add("lbpath_loadbalancer_pending", coll, gauge(1, 0, 60))
	svc := func(s string, more ...map[string]string) map[string]string {
		return merge(append([]map[string]string{coll, {"k8s_namespace_name": "shop", "k8s_service_name": s}}, more...)...)
	}
	f.add("lbpath_loadbalancer_pending_age_seconds", svc("legacy"), "0+60x60")
	for _, ep := range []struct{ svc, pod, node string }{
		{"web", hotPod, "node-a"}, {"web", "web-7d9f-a2", "node-b"}, {"web", "web-7d9f-b3", "node-b"},
		{"checkout", "checkout-8e9f-y1", "node-b"}, {"api", "api-1", "node-a"}, {"api", "api-2", "node-b"},
	} {
		f.add("lbpath_service_endpoint_ready", svc(ep.svc, map[string]string{"k8s_pod_name": ep.pod, "k8s_node_name": ep.node, "network_transport": "tcp"}), gauge(1, 0, 60))
	}
	for _, hc := range []struct {
		svc, node             string
		status, local, health float64
	}{{"api", "node-a", 200, 1, 1}, {"api", "node-b", 503, 0, 0}, {"gone", "node-a", 503, 0, 0}, {"gone", "node-b", 503, 0, 0}} {
		nl := svc(hc.svc, map[string]string{"k8s_node_name": hc.node})
		f.add("lbpath_service_health_check_status", nl, gauge(hc.status, 0, 60))
		f.add("lbpath_service_health_check_local_endpoints", nl, gauge(hc.local, 0, 60))
		f.add("lbpath_service_health_check_healthy", nl, gauge(hc.health, 0, 60))
	}
	f.add("lbpath_service_health_check_errors_total", svc("api", map[string]string{"k8s_node_name": silentNode, "error_type": "timeout"}), counter(2, 0, 60))
	addLBProbes(f)
}

// addLBProbes adds the agents' load-balancer probe counts (resource
// service.name=lbpath-agent; the probed node on the point): api's load
// balancer probes node-b (503) only, node-a (200, its pod's node) gets
// none — a stale backend pool; gone's probes reach both nodes. ok and
// refused are reported from 0 for every Service with the port.
func addLBProbes(f *fixture) {
	agent := map[string]string{"job": "lbpath-agent", "k8s_cluster_name": "prod", "otel_scope_name": "github.com/lbpath/lbpath/exporter"}
	for _, p := range []struct {
		svc, node string
		perMin    float64
	}{{"api", "node-a", 0}, {"api", "node-b", 6}, {"gone", "node-a", 6}, {"gone", "node-b", 6}} {
		ls := merge(agent, map[string]string{"k8s_namespace_name": "shop", "k8s_service_name": p.svc, "k8s_node_name": p.node})
		f.add("lbpath_loadbalancer_health_probes_total", merge(ls, map[string]string{"lbpath_outcome": "ok"}), counter(p.perMin, 0, 60))
		f.add("lbpath_loadbalancer_health_probes_total", merge(ls, map[string]string{"lbpath_outcome": "refused"}), counter(0, 0, 60))
	}
}

// TestLBSignalQueriesSingleOut: the LB-signal alerts and panels name
// exactly the Services and nodes the fixture makes faulty.
func TestLBSignalQueriesSingleOut(t *testing.T) {
	st := promqltest.LoadedStorage(t, buildFixture())
	ng := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	qs, err := All()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]map[string]string{}
	for _, q := range qs {
		got[q.Group+"/"+q.Name+"/"+q.RefID] = seriesOf(evaluate(t, ng, st, q))
	}
	for _, c := range []struct {
		key  string
		want []string // label=value pairs of each expected series, in any order
	}{
		{"lbpath-lb-signals/LbpathLoadBalancerPending/", []string{"k8s_service_name=legacy"}},
		{"lbpath-lb-signals/LbpathManyLoadBalancers/", []string{"k8s_cluster_name=prod"}},
		{"lbpath-lb-signals/LbpathLocalServiceNoHealthyNode/", []string{"k8s_service_name=gone"}},
		{"lbpath-lb-signals/LbpathLocalReadyPodsNotInLoadBalancer/", []string{"k8s_service_name=api,k8s_node_name=node-b"}},
		{"lbpath / LB signals/Pending LoadBalancers/A", []string{"k8s_service_name=legacy"}},
		{"lbpath / LB signals/Ready pods on nodes failing the health check/A", []string{"k8s_service_name=api,k8s_node_name=node-b"}},
		{"lbpath / LB signals/Passing nodes the load balancer does not probe/A", []string{"k8s_service_name=api,k8s_node_name=node-a"}},
	} {
		s, ok := got[c.key]
		if !ok {
			t.Errorf("no query %s", c.key)
			continue
		}
		if len(s) != len(c.want) {
			t.Errorf("%s: %d series %v, want %v", c.key, len(s), s, c.want)
			continue
		}
		for i, w := range c.want {
			for _, kv := range splitPairs(w) {
				if s[i][kv[0]] != kv[1] {
					t.Errorf("%s: series %v, want %s", c.key, s[i], w)
				}
			}
		}
	}
}

func splitPairs(s string) [][2]string {
	var out [][2]string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			kv := s[start:i]
			for j := 0; j < len(kv); j++ {
				if kv[j] == '=' {
					out = append(out, [2]string{kv[:j], kv[j+1:]})
					break
				}
			}
			start = i + 1
		}
	}
	return out
}
