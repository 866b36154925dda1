package manifests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/lbpath/lbpath/deploy/rules"
)

// docs splits a multi-document YAML stream, dropping empty documents.
func docs(t *testing.T, raw []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for _, d := range bytes.Split(raw, []byte("\n---")) {
		var probe map[string]any
		if err := yaml.Unmarshal(d, &probe); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, d)
		}
		if len(probe) > 0 {
			out = append(out, d)
		}
	}
	return out
}

// decoded is every object of the main manifest, strictly decoded.
type decoded struct {
	ds   []appsv1.DaemonSet
	dep  []appsv1.Deployment
	svc  []corev1.Service
	cm   []corev1.ConfigMap
	sa   []corev1.ServiceAccount
	cr   []rbacv1.ClusterRole
	crb  []rbacv1.ClusterRoleBinding
	role []rbacv1.Role
	rb   []rbacv1.RoleBinding
	sts  []appsv1.StatefulSet
	kind []string
}

// Names of the agent's and the collector's accounts and roles.
const (
	agentAccount     = "lbpath"
	agentRole        = "lbpath-agent"
	collectorAccount = "lbpath-collector"
)

func named[T any](t *testing.T, objs []T, name string, meta func(T) metav1.ObjectMeta) T {
	t.Helper()
	for _, o := range objs {
		if meta(o).Name == name {
			return o
		}
	}
	t.Fatalf("no %T named %s", *new(T), name)
	return *new(T)
}

func saMeta(o corev1.ServiceAccount) metav1.ObjectMeta      { return o.ObjectMeta }
func crMeta(o rbacv1.ClusterRole) metav1.ObjectMeta         { return o.ObjectMeta }
func crbMeta(o rbacv1.ClusterRoleBinding) metav1.ObjectMeta { return o.ObjectMeta }
func roleMeta(o rbacv1.Role) metav1.ObjectMeta              { return o.ObjectMeta }
func rbMeta(o rbacv1.RoleBinding) metav1.ObjectMeta         { return o.ObjectMeta }

// strict decodes into the typed object, failing on any field the
// Kubernetes type does not have (a typo such as readOnlyRootFileSystem, or a
// field at the wrong level, would otherwise be dropped by the API server).
func strict[T any](t *testing.T, d []byte) T {
	t.Helper()
	var v T
	if err := yaml.UnmarshalStrict(d, &v); err != nil {
		t.Fatalf("strict decode: %v\n%s", err, d)
	}
	return v
}

func decodeMain(t *testing.T) decoded {
	t.Helper()
	d := decodeFile(t, "lbpath.yaml")
	if len(d.sts) > 0 {
		t.Errorf("unexpected StatefulSet in lbpath.yaml (only the scale-out mode has one)")
	}
	return d
}

// decodeFile strictly decodes every object of a committed rendering.
func decodeFile(t *testing.T, file string) decoded {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(Dir(), file))
	if err != nil {
		t.Fatal(err)
	}
	var out decoded
	for _, d := range docs(t, raw) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(d, &tm); err != nil {
			t.Fatal(err)
		}
		out.kind = append(out.kind, tm.Kind)
		switch tm.APIVersion + "/" + tm.Kind {
		case "apps/v1/DaemonSet":
			out.ds = append(out.ds, strict[appsv1.DaemonSet](t, d))
		case "apps/v1/Deployment":
			out.dep = append(out.dep, strict[appsv1.Deployment](t, d))
		case "apps/v1/StatefulSet":
			out.sts = append(out.sts, strict[appsv1.StatefulSet](t, d))
		case "v1/Service":
			out.svc = append(out.svc, strict[corev1.Service](t, d))
		case "v1/ConfigMap":
			out.cm = append(out.cm, strict[corev1.ConfigMap](t, d))
		case "v1/ServiceAccount":
			out.sa = append(out.sa, strict[corev1.ServiceAccount](t, d))
		case "rbac.authorization.k8s.io/v1/ClusterRole":
			out.cr = append(out.cr, strict[rbacv1.ClusterRole](t, d))
		case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
			out.crb = append(out.crb, strict[rbacv1.ClusterRoleBinding](t, d))
		case "rbac.authorization.k8s.io/v1/Role":
			out.role = append(out.role, strict[rbacv1.Role](t, d))
		case "rbac.authorization.k8s.io/v1/RoleBinding":
			out.rb = append(out.rb, strict[rbacv1.RoleBinding](t, d))
		default:
			t.Errorf("unexpected object %s %s in %s", tm.APIVersion, tm.Kind, file)
		}
	}
	return out
}

func TestManifestsDecodeStrictly(t *testing.T) {
	d := decodeMain(t)
	// The agent's account and ClusterRole, and the collector's (lbsignals
	// receiver) with its Lease Role.
	if len(d.ds) != 1 || len(d.dep) != 1 || len(d.svc) != 1 || len(d.cm) != 1 || len(d.sa) != 2 || len(d.cr) != 2 || len(d.crb) != 2 ||
		len(d.role) != 1 || len(d.rb) != 1 {
		t.Fatalf("objects: %v", d.kind)
	}
	for _, o := range []metav1.ObjectMeta{d.ds[0].ObjectMeta, d.dep[0].ObjectMeta, d.svc[0].ObjectMeta, d.cm[0].ObjectMeta, d.sa[0].ObjectMeta,
		d.sa[1].ObjectMeta, d.role[0].ObjectMeta, d.rb[0].ObjectMeta} {
		if o.Namespace != Namespace {
			t.Errorf("%s: namespace %q", o.Name, o.Namespace)
		}
	}
	// Selectors must match their pod templates, or the API server rejects
	// the workload.
	for _, c := range []struct {
		name string
		sel  *metav1.LabelSelector
		tpl  map[string]string
	}{{d.ds[0].Name, d.ds[0].Spec.Selector, d.ds[0].Spec.Template.Labels}, {d.dep[0].Name, d.dep[0].Spec.Selector, d.dep[0].Spec.Template.Labels}} {
		for k, v := range c.sel.MatchLabels {
			if c.tpl[k] != v {
				t.Errorf("%s: selector %s=%s not on the pod template", c.name, k, v)
			}
		}
	}
	for k, v := range d.svc[0].Spec.Selector {
		if d.dep[0].Spec.Template.Labels[k] != v {
			t.Errorf("collector Service selects %s=%s, not on the collector pods", k, v)
		}
	}
	ports := map[int32]bool{}
	for _, p := range d.svc[0].Spec.Ports {
		ports[p.Port] = true
	}
	for _, p := range []int32{4317, 4318, 9464} {
		if !ports[p] {
			t.Errorf("collector Service lacks port %d", p)
		}
	}
	sa := named(t, d.sa, agentAccount, saMeta)
	if named(t, d.crb, agentRole, crbMeta).Subjects[0].Name != sa.Name || d.ds[0].Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Error("ServiceAccount, binding and DaemonSet disagree on the account")
	}
}

// TestAgentLeastPrivilege pins the agent's security posture to what
// docs and the chart's comments justify.
func TestAgentLeastPrivilege(t *testing.T) {
	d := decodeMain(t)
	spec := d.ds[0].Spec.Template.Spec
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork %v, dnsPolicy %s", spec.HostNetwork, spec.DNSPolicy)
	}
	// hostPID: server pods are named from their socket's network
	// namespace, found through the pods' processes (chart comment).
	if !spec.HostPID || spec.HostIPC {
		t.Errorf("hostPID %v (want true: pods named by namespace), hostIPC %v (want false)", spec.HostPID, spec.HostIPC)
	}
	if spec.SecurityContext == nil || spec.SecurityContext.SeccompProfile == nil || spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("seccomp RuntimeDefault missing")
	}
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("containers: %d, init: %d", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Fatal("agent must set privileged: false")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("runAsUser must be 0 (capabilities of a non-root UID are not effective)")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities must drop ALL, got %+v", sc.Capabilities)
	}
	add := slices.Clone(sc.Capabilities.Add)
	slices.Sort(add)
	if want := []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON", "SYS_PTRACE"}; !slices.Equal(add, want) {
		t.Errorf("capabilities added %v, want exactly %v", add, want)
	}
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			continue
		}
		// BTF for CO-RE; the cgroup v2 root for the UDP capture; tracefs
		// for the connect() capture. All read-only (below); nothing is
		// pinned, so no /sys/fs/bpf.
		if !slices.Contains([]string{"/sys/kernel/btf", "/sys/fs/cgroup", "/sys/kernel/tracing"}, v.HostPath.Path) {
			t.Errorf("unexpected hostPath %s", v.HostPath.Path)
		}
	}
	for _, m := range c.VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("mount %s must be read-only", m.MountPath)
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["NODE_NAME"] != "spec.nodeName" {
		t.Error("NODE_NAME must come from spec.nodeName")
	}
	args := strings.Join(c.Args, " ")
	for _, a := range []string{"--output=none", serviceLinkEndpoint(t, d.svc[0], d.ds[0].Namespace, 4317), "--otlp-insecure"} {
		if !strings.Contains(args, a) {
			t.Errorf("agent args lack %s: %s", a, args)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("agent resources unset")
	}
}

func TestRBACIsReadOnly(t *testing.T) {
	d := decodeMain(t)
	want := map[string]bool{"/pods": true, "/services": true, "/nodes": true, "discovery.k8s.io/endpointslices": true, "apps/replicasets": true,
		"networking.k8s.io/ingressclasses": true, "networking.k8s.io/ingresses": true,
		"gateway.networking.k8s.io/gatewayclasses": true, "gateway.networking.k8s.io/gateways": true, "gateway.networking.k8s.io/httproutes": true}
	got := map[string]bool{}
	for _, r := range named(t, d.cr, agentRole, crMeta).Rules {
		verbs := slices.Clone(r.Verbs)
		slices.Sort(verbs)
		if !slices.Equal(verbs, []string{"get", "list", "watch"}) {
			t.Errorf("rule %v: verbs %v, want only get, list, watch", r.Resources, r.Verbs)
		}
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %v: unexpected resourceNames/nonResourceURLs", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				if res == "*" || g == "*" {
					t.Errorf("wildcard in %v", r)
				}
				got[g+"/"+res] = true
			}
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("ClusterRole lacks %s", k)
		}
	}
	for k := range got {
		if !want[k] {
			t.Errorf("ClusterRole grants %s, which the agent does not watch", k)
		}
	}
}

// TestMonitoringObjects decodes the Prometheus Operator objects against the
// subset of their schema the chart uses (strictly), and checks that the
// PrometheusRule carries exactly the committed rules file.
func TestMonitoringObjects(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(Dir(), "lbpath-monitoring.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, d := range docs(t, raw) {
		var o struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        metav1.ObjectMeta `json:"metadata"`
			Spec            map[string]any    `json:"spec"`
		}
		if err := yaml.UnmarshalStrict(d, &o); err != nil {
			t.Fatalf("%v\n%s", err, d)
		}
		kinds = append(kinds, o.Kind)
		switch o.Kind {
		case "ServiceMonitor":
			var sm struct {
				Selector metav1.LabelSelector `json:"selector"`
				// Prometheus Operator's ServiceMonitorSpec.ScrapeProtocols:
				// protobuf first, or the agents' exponential histograms
				// arrive as a classic histogram with only +Inf.
				ScrapeProtocols []string `json:"scrapeProtocols"`
				Endpoints       []struct {
					Port        string `json:"port"`
					Interval    string `json:"interval"`
					HonorLabels bool   `json:"honorLabels"`
				} `json:"endpoints"`
			}
			b, _ := yaml.Marshal(o.Spec)
			if err := yaml.UnmarshalStrict(b, &sm); err != nil {
				t.Fatalf("ServiceMonitor spec: %v", err)
			}
			known := []string{"PrometheusProto", "OpenMetricsText0.0.1", "OpenMetricsText1.0.0", "PrometheusText0.0.4", "PrometheusText1.0.0"}
			for _, p := range sm.ScrapeProtocols {
				if !slices.Contains(known, p) {
					t.Errorf("ServiceMonitor scrapeProtocols: %q is not one of the operator's %v", p, known)
				}
			}
			if len(sm.ScrapeProtocols) == 0 || sm.ScrapeProtocols[0] != "PrometheusProto" {
				t.Errorf("ServiceMonitor scrapeProtocols %v: PrometheusProto must come first (native histograms)", sm.ScrapeProtocols)
			}
			if len(sm.Endpoints) != 1 || sm.Endpoints[0].Port != "metrics" || !sm.Endpoints[0].HonorLabels {
				t.Errorf("ServiceMonitor endpoints %+v", sm.Endpoints)
			}
		case "PrometheusRule":
			b, _ := yaml.Marshal(o.Spec)
			got, err := rules.Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			want, err := rules.All()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("PrometheusRule has %d rules, lbpath-rules.yaml %d", len(got), len(want))
			}
			for i := range want {
				if got[i].Name() != want[i].Name() || got[i].Expr != want[i].Expr {
					t.Errorf("rule %d: %s differs from lbpath-rules.yaml", i, got[i].Name())
				}
			}
		}
	}
	slices.Sort(kinds)
	if !slices.Equal(kinds, []string{"PrometheusRule", "ServiceMonitor"}) {
		t.Errorf("monitoring objects %v", kinds)
	}
}

// TestChartRulesCopyIsCurrent: the chart can only read files inside
// itself, so it carries a copy of deploy/rules/lbpath-rules.yaml.
func TestChartRulesCopyIsCurrent(t *testing.T) {
	got, err := os.ReadFile(filepath.Join(ChartDir(), "files", rules.File))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, rules.YAML) {
		t.Error("deploy/helm/lbpath/files/lbpath-rules.yaml is stale: run go run ./deploy/manifests/cmd/render")
	}
}

// TestCommittedManifestsMatchChart re-renders the chart with the pinned Helm
// and compares with the committed files.
func TestCommittedManifestsMatchChart(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the helm binary (built once, about 3 minutes cold)")
	}
	ctx := context.Background()
	helm, err := Helm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range Renderings {
		want, err := Render(ctx, helm, r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(Dir(), r.File))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run go run ./deploy/manifests/cmd/render", r.File)
		}
	}
	// clientIP.required must turn into one matcher per Service.
	out, err := Render(ctx, helm, Rendering{File: "client-ip", Args: []string{"--set", "prometheusRule.enabled=true",
		"--set", "clientIP.required[0].namespace=shop", "--set", "clientIP.required[0].service=web",
		"--show-only", "templates/monitoring.yaml"}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte(`lbpath_connections_total{lbpath_role="server", k8s_namespace_name="shop", k8s_service_name="web"}`)) || bytes.Contains(out, []byte("_none_\"}")) {
		t.Errorf("clientIP.required not rendered into the recording rule:\n%s", out)
	}
}

// TestAgentShutdownInsideGrace: the agent's flush budget ends well before
// the kubelet's SIGKILL, so a deleted or upgraded agent pod exits on its own
// with its last records sent (e2e TestRealNode measures the real exit).
func TestAgentShutdownInsideGrace(t *testing.T) {
	spec := decodeMain(t).ds[0].Spec.Template.Spec
	if spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("terminationGracePeriodSeconds unset")
	}
	grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	var budget time.Duration
	for _, a := range spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--shutdown-timeout="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("%s: %v", a, err)
			}
			budget = d
		}
	}
	// The rest of the grace period is for the signal's delivery and the
	// process exit; half of it is the chart's choice.
	if budget <= 0 || budget > grace/2 {
		t.Errorf("--shutdown-timeout %v with a grace period of %v: want more than 0 and at most half", budget, grace)
	}
}

// TestCollectorRBAC: the collector's own account may read Services, Nodes
// and EndpointSlices (the lbsignals receiver's informers) and hold one
// Lease in its namespace, nothing more, and its pods run as that account
// with a token.
func TestCollectorRBAC(t *testing.T) {
	d := decodeMain(t)
	sa := named(t, d.sa, collectorAccount, saMeta)
	spec := d.dep[0].Spec.Template.Spec
	if spec.ServiceAccountName != sa.Name || spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken {
		t.Errorf("collector pods: serviceAccountName %q automount %v, want %s with a token", spec.ServiceAccountName, spec.AutomountServiceAccountToken, sa.Name)
	}
	grants := func(rules []rbacv1.PolicyRule) map[string]string {
		out := map[string]string{}
		for _, r := range rules {
			if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
				t.Errorf("rule %v: unexpected resourceNames/nonResourceURLs", r)
			}
			verbs := slices.Clone(r.Verbs)
			slices.Sort(verbs)
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					out[g+"/"+res] = strings.Join(verbs, ",")
				}
			}
		}
		return out
	}
	cr := named(t, d.cr, collectorAccount, crMeta)
	want := map[string]string{"/services": "get,list,watch", "/nodes": "get,list,watch", "discovery.k8s.io/endpointslices": "get,list,watch"}
	if got := grants(cr.Rules); !mapsEqual(got, want) {
		t.Errorf("collector ClusterRole grants %v, want %v", got, want)
	}
	role := d.role[0]
	if got := grants(role.Rules); !mapsEqual(got, map[string]string{"coordination.k8s.io/leases": "create,get,update"}) {
		t.Errorf("collector Role grants %v, want get/create/update on leases", got)
	}
	crb := named(t, d.crb, collectorAccount, crbMeta)
	for _, b := range []struct {
		what    string
		ref     rbacv1.RoleRef
		subject []rbacv1.Subject
		refName string
	}{{"ClusterRoleBinding", crb.RoleRef, crb.Subjects, cr.Name}, {"RoleBinding", d.rb[0].RoleRef, d.rb[0].Subjects, role.Name}} {
		if b.ref.Name != b.refName || len(b.subject) != 1 || b.subject[0].Name != sa.Name || b.subject[0].Namespace != Namespace {
			t.Errorf("%s %+v %+v does not bind %s to %s", b.what, b.ref, b.subject, b.refName, sa.Name)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// serviceLinkEndpoint is the agent's --otlp-endpoint for port of svc: the
// variable the kubelet sets to tcp://<ClusterIP>:<port> in pods of svc's
// namespace (no DNS lookup; agent-daemonset.yaml), which must be ns.
func serviceLinkEndpoint(t *testing.T, svc corev1.Service, ns string, port int32) string {
	t.Helper()
	if svc.Namespace != ns || !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
		return p.Port == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP)
	}) {
		t.Errorf("Service %s/%s has no TCP port %d in the agents' namespace %s: no Service link variable for it", svc.Namespace, svc.Name, port, ns)
	}
	prefix := strings.ToUpper(strings.ReplaceAll(svc.Name, "-", "_"))
	return fmt.Sprintf("--otlp-endpoint=$(%s_PORT_%d_TCP)", prefix, port)
}
