package manifests

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// scaleOut is every object of the scale-out manifest, strictly decoded.
type scaleOut struct{ decoded }

func decodeScaleOut(t *testing.T) scaleOut {
	t.Helper()
	return scaleOut{decodeFile(t, ScaleOutFile)}
}

func (s scaleOut) service(t *testing.T, name string) corev1.Service {
	t.Helper()
	for _, v := range s.svc {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no Service %s", name)
	return corev1.Service{}
}

func (s scaleOut) configMap(t *testing.T, name string) corev1.ConfigMap {
	t.Helper()
	for _, v := range s.cm {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no ConfigMap %s", name)
	return corev1.ConfigMap{}
}

// selects fails unless every selector label is on the pod template.
func selects(t *testing.T, what string, sel, pod map[string]string) {
	t.Helper()
	if len(sel) == 0 {
		t.Errorf("%s: empty selector", what)
	}
	for k, v := range sel {
		if pod[k] != v {
			t.Errorf("%s: selector %s=%s not on the pods", what, k, v)
		}
	}
}

// TestScaleOutObjects: the two tiers are wired to each other — agents to
// the gateway Service, the gateway's selectors and the aggregation tier's
// headless Service to their pods — and the aggregation pods are exactly the
// single collector's, so both modes run the same processors and settings.
func TestScaleOutObjects(t *testing.T) {
	s := decodeScaleOut(t)
	if len(s.ds) != 1 || len(s.dep) != 1 || len(s.sts) != 1 || len(s.svc) != 2 {
		t.Fatalf("objects: %v", s.kind)
	}
	gw, sts := s.dep[0], s.sts[0]
	if gw.Name != "lbpath-gateway" || sts.Name != "lbpath-collector" {
		t.Fatalf("gateway %s, aggregation tier %s", gw.Name, sts.Name)
	}
	if *sts.Spec.Replicas != 3 || sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("StatefulSet replicas %d policy %s, want 3 Parallel (the default scaleOut.replicas)", *sts.Spec.Replicas, sts.Spec.PodManagementPolicy)
	}
	selects(t, "gateway Deployment", gw.Spec.Selector.MatchLabels, gw.Spec.Template.Labels)
	selects(t, "StatefulSet", sts.Spec.Selector.MatchLabels, sts.Spec.Template.Labels)

	head := s.service(t, sts.Spec.ServiceName)
	if head.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service %s (the StatefulSet's serviceName) clusterIP %q, want None: the resolver needs one address per replica", head.Name, head.Spec.ClusterIP)
	}
	selects(t, "headless Service", head.Spec.Selector, sts.Spec.Template.Labels)
	selects(t, "gateway Service", s.service(t, "lbpath-gateway").Spec.Selector, gw.Spec.Template.Labels)
	for _, k := range []string{"app.kubernetes.io/component"} {
		if gw.Spec.Template.Labels[k] == sts.Spec.Template.Labels[k] {
			t.Errorf("gateway and collector pods share %s=%s: each Service would select both tiers", k, gw.Spec.Template.Labels[k])
		}
	}

	// The aggregation pods are the single collector's pods.
	single := decodeMain(t).dep[0].Spec.Template
	if !reflect.DeepEqual(sts.Spec.Template.Spec, single.Spec) {
		t.Errorf("aggregation pod spec differs from the single collector's:\n%+v\n%+v", sts.Spec.Template.Spec, single.Spec)
	}
	checkAggregatorConfig(t, s, decodeMain(t).cm[0])

	// Agents push deltas to the gateway Service.
	args := strings.Join(s.ds[0].Spec.Template.Spec.Containers[0].Args, " ")
	for _, a := range []string{serviceLinkEndpoint(t, s.service(t, "lbpath-gateway"), s.ds[0].Namespace, 4317), "--metrics-temporality=delta"} {
		if !strings.Contains(args, a) {
			t.Errorf("agent args lack %s: %s", a, args)
		}
	}
	if single := strings.Join(decodeMain(t).ds[0].Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(single, "--metrics-temporality") {
		t.Errorf("single-collector mode sets a temporality (must keep the agent's default): %s", single)
	}
	if !hasPort(s.service(t, "lbpath-gateway"), 4317) {
		t.Error("gateway Service lacks port 4317")
	}
}

// collectorConfig is the part of the collector's configuration the tests
// compare between the modes.
type collectorConfig struct {
	Processors map[string]any `json:"processors"`
	Exporters  map[string]struct {
		Endpoint string `json:"endpoint"`
	} `json:"exporters"`
	Service struct {
		Pipelines map[string]struct {
			Receivers  []string `json:"receivers"`
			Processors []string `json:"processors"`
			Exporters  []string `json:"exporters"`
		} `json:"pipelines"`
	} `json:"service"`
}

// checkAggregatorConfig: the aggregation tier runs the single collector's
// processors with the same settings on the agents' data; the cluster
// receiver (lbsignals) is not in that pipeline but sends its points back
// through the gateway, so they are routed by Service like the agents'.
func checkAggregatorConfig(t *testing.T, s scaleOut, single corev1.ConfigMap) {
	t.Helper()
	var agg, one collectorConfig
	for _, c := range []struct {
		raw string
		dst *collectorConfig
	}{{s.configMap(t, "lbpath-collector").Data["config.yaml"], &agg}, {single.Data["config.yaml"], &one}} {
		if err := yaml.Unmarshal([]byte(c.raw), c.dst); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := agg.Processors["delta_to_cumulative"]; !ok {
		t.Error("no delta_to_cumulative processor: the Prometheus exporter drops deltas that skipped an interval")
	}
	delete(agg.Processors, "delta_to_cumulative")
	if !reflect.DeepEqual(agg.Processors, one.Processors) {
		t.Errorf("processors differ from the single collector's:\n%v\n%v", agg.Processors, one.Processors)
	}
	m, m1 := agg.Service.Pipelines["metrics"], one.Service.Pipelines["metrics"]
	if !slices.Equal(m.Processors, m1.Processors) || !slices.Equal(m.Receivers, []string{"otlp"}) {
		t.Errorf("aggregation metrics pipeline %+v: want the single collector's processors %v fed by otlp alone", m, m1.Processors)
	}
	// The agents' deltas reach Prometheus as cumulative series.
	prom := agg.Service.Pipelines["metrics/prometheus"]
	if len(m.Exporters) == 0 || slices.Contains(m.Exporters, "prometheus") || len(prom.Receivers) != 1 ||
		!slices.Contains(m.Exporters, prom.Receivers[0]) || !slices.Equal(prom.Processors, []string{"delta_to_cumulative"}) ||
		!slices.Equal(prom.Exporters, []string{"prometheus"}) {
		t.Errorf("metrics %+v → metrics/prometheus %+v: want the processors' output through delta_to_cumulative into prometheus", m, prom)
	}
	if !slices.Contains(m1.Receivers, "lbsignals") {
		return // the cluster receiver is off by values: nothing to route
	}
	sig, ok := agg.Service.Pipelines["metrics/lbsignals"]
	if !ok || !slices.Equal(sig.Receivers, []string{"lbsignals"}) || len(sig.Exporters) != 1 {
		t.Fatalf("no metrics/lbsignals pipeline from lbsignals to one exporter: %+v", agg.Service.Pipelines)
	}
	gw := s.service(t, "lbpath-gateway")
	want := fmt.Sprintf("%s.%s.svc:4317", gw.Name, gw.Namespace)
	if got := agg.Exporters[sig.Exporters[0]].Endpoint; got != want {
		t.Errorf("lbsignals exports to %q, want the gateway Service %s", got, want)
	}
}

func hasPort(s corev1.Service, p int32) bool {
	return slices.ContainsFunc(s.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Port == p })
}

// gatewayConfig is the part of the gateway's collector configuration the
// tests check.
type gatewayConfig struct {
	Extensions struct {
		HealthCheck struct {
			Endpoint string `json:"endpoint"`
		} `json:"health_check"`
	} `json:"extensions"`
	Exporters map[string]struct {
		RoutingKey        string   `json:"routing_key"`
		RoutingAttributes []string `json:"routing_attributes"`
		Resolver          struct {
			K8s struct {
				Service         string  `json:"service"`
				Ports           []int32 `json:"ports"`
				ReturnHostnames bool    `json:"return_hostnames"`
			} `json:"k8s"`
		} `json:"resolver"`
	} `json:"exporters"`
	Service struct {
		Extensions []string `json:"extensions"`
		Pipelines  map[string]struct {
			Receivers  []string `json:"receivers"`
			Processors []string `json:"processors"`
			Exporters  []string `json:"exporters"`
		} `json:"pipelines"`
	} `json:"service"`
}

// TestGatewayRoutesByServiceAndTrace: metrics are keyed by the Service's
// namespace and name (the attributes lbpath's agents put on every data
// point), spans by trace ID; both resolve the headless Service's replicas'
// pod IPs on its OTLP port; the probes ask the health_check
// extension's port.
func TestGatewayRoutesByServiceAndTrace(t *testing.T) {
	s := decodeScaleOut(t)
	var cfg gatewayConfig
	if err := yaml.Unmarshal([]byte(s.configMap(t, "lbpath-gateway").Data["config.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	head := s.service(t, s.sts[0].Spec.ServiceName)
	for pipeline, want := range map[string]struct {
		key   string
		attrs []string
	}{
		"metrics": {"attributes", []string{"k8s.namespace.name", "k8s.service.name"}},
		"traces":  {"traceID", nil},
	} {
		p, ok := cfg.Service.Pipelines[pipeline]
		if !ok || len(p.Exporters) != 1 || !slices.Contains(p.Receivers, "otlp") {
			t.Errorf("%s pipeline %+v: want otlp in, one exporter out", pipeline, p)
			continue
		}
		e, ok := cfg.Exporters[p.Exporters[0]]
		if !ok || !strings.HasPrefix(p.Exporters[0], "loadbalancing") {
			t.Errorf("%s pipeline exports to %s, not a loadbalancing exporter", pipeline, p.Exporters[0])
			continue
		}
		if e.RoutingKey != want.key || !slices.Equal(e.RoutingAttributes, want.attrs) {
			t.Errorf("%s: routing_key %q attributes %v, want %q %v", pipeline, e.RoutingKey, e.RoutingAttributes, want.key, want.attrs)
		}
		k := e.Resolver.K8s
		if k.Service != head.Name+"."+head.Namespace || len(k.Ports) != 1 || !hasPort(head, k.Ports[0]) || k.ReturnHostnames {
			t.Errorf("%s resolver %+v: want service %s.%s, a port of it, pod IPs (no DNS on the data path)", pipeline, k, head.Name, head.Namespace)
		}
	}
	c := s.dep[0].Spec.Template.Spec.Containers[0]
	ep := cfg.Extensions.HealthCheck.Endpoint
	port := ep[strings.LastIndex(ep, ":")+1:]
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("gateway %s probe: none", name)
			continue
		}
		var probePort string
		for _, cp := range c.Ports {
			if cp.Name == p.HTTPGet.Port.String() {
				probePort = fmt.Sprint(cp.ContainerPort)
			}
		}
		if probePort != port {
			t.Errorf("gateway %s probe asks port %s (%s), health_check listens on %s", name, p.HTTPGet.Port.String(), probePort, port)
		}
	}
	if !slices.Contains(cfg.Service.Extensions, "health_check") {
		t.Error("health_check extension not enabled in service.extensions")
	}
}

// TestGatewayRBAC: the gateway may only read EndpointSlices in its own
// namespace (the k8s resolver's list and watch), under its own account.
func TestGatewayRBAC(t *testing.T) {
	s := decodeScaleOut(t)
	gw := s.dep[0]
	i := slices.IndexFunc(s.role, func(r rbacv1.Role) bool { return r.Name == "lbpath-gateway" })
	j := slices.IndexFunc(s.rb, func(r rbacv1.RoleBinding) bool { return r.RoleRef.Name == "lbpath-gateway" })
	if i < 0 || j < 0 {
		t.Fatalf("no Role and RoleBinding lbpath-gateway: %v", s.kind)
	}
	role, rb := s.role[i], s.rb[j]
	if role.Namespace != Namespace || len(role.Rules) != 1 {
		t.Fatalf("Role %s/%s rules %v", role.Namespace, role.Name, role.Rules)
	}
	r := role.Rules[0]
	verbs := slices.Sorted(slices.Values(r.Verbs))
	if !slices.Equal(r.APIGroups, []string{"discovery.k8s.io"}) || !slices.Equal(r.Resources, []string{"endpointslices"}) ||
		!slices.Equal(verbs, []string{"get", "list", "watch"}) {
		t.Errorf("Role rule %+v: want get/list/watch on discovery.k8s.io endpointslices only", r)
	}
	if rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != role.Name || len(rb.Subjects) != 1 ||
		rb.Subjects[0].Name != gw.Spec.Template.Spec.ServiceAccountName || rb.Subjects[0].Namespace != Namespace {
		t.Errorf("RoleBinding %+v does not bind %s to the gateway's account %s", rb, role.Name, gw.Spec.Template.Spec.ServiceAccountName)
	}
	if a := gw.Spec.Template.Spec.AutomountServiceAccountToken; a != nil && !*a {
		t.Error("gateway pods mount no service account token: the resolver cannot list EndpointSlices")
	}
	if !slices.ContainsFunc(s.sa, func(sa corev1.ServiceAccount) bool { return sa.Name == gw.Spec.Template.Spec.ServiceAccountName }) {
		t.Errorf("no ServiceAccount %s", gw.Spec.Template.Spec.ServiceAccountName)
	}
}

// TestDeltaAgentsReachPrometheusCumulative: whenever the agents push deltas
// — scale-out mode, or agent.metricsTemporality=delta with one collector —
// the collector's Prometheus exporter is fed through delta_to_cumulative;
// with the default (cumulative) it is fed directly, as before.
func TestDeltaAgentsReachPrometheusCumulative(t *testing.T) {
	ctx := context.Background()
	helm, err := Helm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args  []string
		delta bool
	}{
		{nil, false},
		{[]string{"--set", "agent.metricsTemporality=delta"}, true},
		{[]string{"--set", "agent.metricsTemporality=cumulative"}, false},
		{[]string{"--set", "collector.scaleOut.enabled=true"}, true},
	} {
		out, err := Render(ctx, helm, Rendering{File: "delta", Args: append(c.args, "--show-only", "templates/collector.yaml")})
		if err != nil {
			t.Fatal(err)
		}
		var cfg collectorConfig
		for _, d := range docs(t, out) {
			var cm corev1.ConfigMap
			if err := yaml.Unmarshal(d, &cm); err == nil && cm.Kind == "ConfigMap" {
				if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
					t.Fatal(err)
				}
			}
		}
		m, prom := cfg.Service.Pipelines["metrics"], cfg.Service.Pipelines["metrics/prometheus"]
		direct := slices.Contains(m.Exporters, "prometheus")
		converted := slices.Equal(prom.Processors, []string{"delta_to_cumulative"}) && slices.Equal(prom.Exporters, []string{"prometheus"}) &&
			len(prom.Receivers) == 1 && slices.Contains(m.Exporters, prom.Receivers[0])
		if c.delta != converted || c.delta == direct {
			t.Errorf("%v: metrics %+v, metrics/prometheus %+v; want Prometheus fed %s", c.args, m, prom,
				map[bool]string{true: "through delta_to_cumulative", false: "directly"}[c.delta])
		}
	}
}
