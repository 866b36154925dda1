package lbsignals

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed/k8s"
)

// startAPIServer runs the real etcd, kube-apiserver and controller manager
// on loopback under a name of its own: no host link and no node
// namespaces, so it runs beside the one real-node test bed a machine holds.
func startAPIServer(t *testing.T) *k8s.ControlPlane {
	t.Helper()
	bins, err := k8s.FindBinaries()
	if err != nil {
		testenv.Unavailable(t, err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := k8s.Start(ctx, k8s.ControlPlaneOptions{Binaries: bins, Name: "lbsignals", BindAddress: netip.MustParseAddr("127.0.0.1"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("control plane stop: %v", err)
		}
	})
	return cp
}

// flat renders a batch as sorted "name{attr=value,…} value" lines, with
// the resource's attributes as one line of their own; double values
// (ages) are returned separately, keyed by the line without the value.
func flat(md pmetric.Metrics) (lines []string, doubles map[string]float64) {
	doubles = map[string]float64{}
	attrs := func(m pcommon.Map) string {
		var kv []string
		m.Range(func(k string, v pcommon.Value) bool {
			kv = append(kv, k+"="+v.AsString())
			return true
		})
		sort.Strings(kv)
		return "{" + strings.Join(kv, ",") + "}"
	}
	for _, rm := range md.ResourceMetrics().All() {
		lines = append(lines, "resource"+attrs(rm.Resource().Attributes()))
		for _, sm := range rm.ScopeMetrics().All() {
			for _, m := range sm.Metrics().All() {
				var dps pmetric.NumberDataPointSlice
				switch m.Type() {
				case pmetric.MetricTypeGauge:
					dps = m.Gauge().DataPoints()
				case pmetric.MetricTypeSum:
					dps = m.Sum().DataPoints()
				default:
					lines = append(lines, m.Name()+" unexpected type "+m.Type().String())
					continue
				}
				for _, p := range dps.All() {
					key := m.Name() + attrs(p.Attributes())
					if p.ValueType() == pmetric.NumberDataPointValueTypeDouble {
						doubles[key] = p.DoubleValue()
						lines = append(lines, key+" ~")
						continue
					}
					lines = append(lines, fmt.Sprintf("%s %d", key, p.IntValue()))
				}
			}
		}
	}
	sort.Strings(lines)
	return lines, doubles
}

// last returns the newest batch in sink, or nil.
func last(sink *consumertest.MetricsSink) *pmetric.Metrics {
	all := sink.AllMetrics()
	if len(all) == 0 {
		return nil
	}
	return &all[len(all)-1]
}

// waitFor polls sink until the newest batch satisfies ok.
func waitFor(t *testing.T, sink *consumertest.MetricsSink, what string, timeout time.Duration, ok func(lines []string, doubles map[string]float64) bool) ([]string, map[string]float64) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lines []string
	var doubles map[string]float64
	for time.Now().Before(deadline) {
		if md := last(sink); md != nil {
			lines, doubles = flat(*md)
			if ok(lines, doubles) {
				return lines, doubles
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v; newest batch:\n%s", what, timeout, strings.Join(lines, "\n"))
	return nil, nil
}

func testConfig(kubeconfig string) *Config {
	cfg := createDefaultConfig()
	cfg.Kubeconfig = kubeconfig
	cfg.ClusterName = "test"
	cfg.CollectionInterval = time.Second
	cfg.LeaderElection = LeaderElectionConfig{Enabled: true, LeaseName: "lbpath-lbsignals", LeaseNamespace: "default",
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 250 * time.Millisecond}
	cfg.HealthCheck.Timeout = 500 * time.Millisecond
	return cfg
}

func startReceiver(t *testing.T, cfg *Config, name string) (*signalsReceiver, *consumertest.MetricsSink) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	sink := new(consumertest.MetricsSink)
	// Through the factory, as the collector builds it.
	set := receivertest.NewNopSettings(Type)
	set.Logger = zap.NewNop().Named(name)
	rcv, err := NewFactory().CreateMetrics(context.Background(), set, cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	r := rcv.(*signalsReceiver)
	if err := r.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Shutdown(context.Background()) })
	return r, sink
}

// world is the cluster state the test writes and the ground truth it
// checks the receiver's metrics against.
type world struct {
	cs  kubernetes.Interface
	ns  string
	hc  int32 // lb-local's healthCheckNodePort
	now time.Time
}

func (w *world) create(t *testing.T, ctx context.Context) {
	t.Helper()
	if _, err := w.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: w.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Nodes: two probed on loopback addresses, one without an InternalIP
	// (cannot be probed: counted), one excluded from load balancers.
	for _, n := range []struct {
		name, ip string
		exclude  bool
	}{{"n1", "127.0.0.2", false}, {"n2", "127.0.0.3", false}, {"n3", "", false}, {"n4", "127.0.0.4", true}} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}
		if n.exclude {
			node.Labels = map[string]string{corev1.LabelNodeExcludeBalancers: ""}
		}
		created, err := w.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n.ip != "" {
			created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.ip}}
			if _, err := w.cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	port := []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}
	mk := func(name string, typ corev1.ServiceType, policy corev1.ServiceExternalTrafficPolicy, ingress []corev1.LoadBalancerIngress) *corev1.Service {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name},
			Spec: corev1.ServiceSpec{Type: typ, Ports: port, ExternalTrafficPolicy: policy}}
		created, err := w.cs.CoreV1().Services(w.ns).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ingress != nil {
			created.Status.LoadBalancer.Ingress = ingress
			if created, err = w.cs.CoreV1().Services(w.ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		return created
	}
	mk("web", corev1.ServiceTypeClusterIP, "", nil)
	mk("later", corev1.ServiceTypeClusterIP, "", nil)
	mk("lb-pending", corev1.ServiceTypeLoadBalancer, corev1.ServiceExternalTrafficPolicyCluster, nil)
	// An ingress entry with neither IP nor hostname is still pending.
	mk("lb-empty-ingress", corev1.ServiceTypeLoadBalancer, corev1.ServiceExternalTrafficPolicyCluster, []corev1.LoadBalancerIngress{{}})
	mk("lb-hostname", corev1.ServiceTypeLoadBalancer, corev1.ServiceExternalTrafficPolicyCluster,
		[]corev1.LoadBalancerIngress{{Hostname: "a1b2.elb.example.com"}})
	local := mk("lb-local", corev1.ServiceTypeLoadBalancer, corev1.ServiceExternalTrafficPolicyLocal,
		[]corev1.LoadBalancerIngress{{IP: "192.0.2.10"}})
	w.hc = local.Spec.HealthCheckNodePort
	if w.hc == 0 {
		t.Fatal("apiserver allocated no healthCheckNodePort for a Local LoadBalancer Service")
	}

	// web's EndpointSlices, written as the controller would: an IPv4 slice
	// with a TCP and a UDP port, and an IPv6 slice repeating p1 (dual
	// stack), plus endpoints that are not ready in every way the API has.
	yes, no := true, false
	n1, n2 := "n1", "n2"
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p80, p53 := int32(8080), int32(53)
	http, dns := "http", "dns"
	pod := func(name string) *corev1.ObjectReference {
		return &corev1.ObjectReference{Kind: "Pod", Namespace: w.ns, Name: name}
	}
	slices := []discoveryv1.EndpointSlice{{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-v4", Labels: map[string]string{discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "lbsignals-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &http, Port: &p80, Protocol: &tcp}, {Name: &dns, Port: &p53, Protocol: &udp}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}, TargetRef: pod("p1"), NodeName: &n1},
			{Addresses: []string{"10.0.0.2"}, TargetRef: pod("p2"), NodeName: &n2}, // ready unset: ready
			{Addresses: []string{"10.0.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}, TargetRef: pod("p3"), NodeName: &n1},
			{Addresses: []string{"10.0.0.4"}, Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}, TargetRef: pod("p4"), NodeName: &n2},
			{Addresses: []string{"10.0.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}}, // not a pod
		},
	}, {
		ObjectMeta:  metav1.ObjectMeta{Name: "web-v6", Labels: map[string]string{discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "lbsignals-test"}},
		AddressType: discoveryv1.AddressTypeIPv6,
		Ports:       []discoveryv1.EndpointPort{{Name: &http, Port: &p80, Protocol: &tcp}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"fd00::1"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}, TargetRef: pod("p1"), NodeName: &n1},
		},
	}}
	for _, sl := range slices {
		if _, err := w.cs.DiscoveryV1().EndpointSlices(w.ns).Create(ctx, &sl, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReceiverAgainstAPIServer runs the receiver on a real kube-apiserver
// with kube-proxy-like health-check servers on the nodes' addresses and
// compares every emitted point with the state written: ready endpoints,
// LoadBalancer count, pending ones and their age (also after a type
// change), health-check answers per node and counted probe errors.
func TestReceiverAgainstAPIServer(t *testing.T) {
	cp := startAPIServer(t)
	ctx := context.Background()
	w := &world{cs: cp.Client, ns: "shop"}
	w.create(t, ctx)
	// kube-proxy's health check on n1 (two local endpoints) and n2 (none).
	serve(t, fmt.Sprintf("127.0.0.2:%d", w.hc), kubeProxyHandler("shop", "lb-local", 2))
	serve(t, fmt.Sprintf("127.0.0.3:%d", w.hc), kubeProxyHandler("shop", "lb-local", 0))

	_, sink := startReceiver(t, testConfig(cp.Kubeconfig), "r1")
	want := []string{
		"resource{k8s.cluster.name=test,service.name=lbpath-collector}",
		"lbpath.loadbalancer.pending.age{k8s.namespace.name=shop,k8s.service.name=lb-empty-ingress} ~",
		"lbpath.loadbalancer.pending.age{k8s.namespace.name=shop,k8s.service.name=lb-pending} ~",
		"lbpath.loadbalancer.pending{} 2",
		"lbpath.loadbalancer.services{} 4",
		"lbpath.loadbalancer.address{k8s.namespace.name=shop,k8s.service.name=lb-hostname,lbpath.loadbalancer.address.type=hostname,lbpath.loadbalancer.address=a1b2.elb.example.com} 1",
		"lbpath.loadbalancer.address{k8s.namespace.name=shop,k8s.service.name=lb-local,lbpath.loadbalancer.address.type=ip,lbpath.loadbalancer.address=192.0.2.10} 1",
		"lbpath.service.endpoint.ready{k8s.namespace.name=shop,k8s.node.name=n1,k8s.pod.name=p1,k8s.service.name=web,network.transport=tcp} 1",
		"lbpath.service.endpoint.ready{k8s.namespace.name=shop,k8s.node.name=n1,k8s.pod.name=p1,k8s.service.name=web,network.transport=udp} 1",
		"lbpath.service.endpoint.ready{k8s.namespace.name=shop,k8s.node.name=n2,k8s.pod.name=p2,k8s.service.name=web,network.transport=tcp} 1",
		"lbpath.service.endpoint.ready{k8s.namespace.name=shop,k8s.node.name=n2,k8s.pod.name=p2,k8s.service.name=web,network.transport=udp} 1",
		"lbpath.service.health_check.errors{error.type=no_internal_ip,k8s.namespace.name=shop,k8s.node.name=n3,k8s.service.name=lb-local} ",
		"lbpath.service.health_check.healthy{k8s.namespace.name=shop,k8s.node.name=n1,k8s.service.name=lb-local} 1",
		"lbpath.service.health_check.healthy{k8s.namespace.name=shop,k8s.node.name=n2,k8s.service.name=lb-local} 0",
		"lbpath.service.health_check.local_endpoints{k8s.namespace.name=shop,k8s.node.name=n1,k8s.service.name=lb-local} 2",
		"lbpath.service.health_check.local_endpoints{k8s.namespace.name=shop,k8s.node.name=n2,k8s.service.name=lb-local} 0",
		"lbpath.service.health_check.status{k8s.namespace.name=shop,k8s.node.name=n1,k8s.service.name=lb-local} 200",
		"lbpath.service.health_check.status{k8s.namespace.name=shop,k8s.node.name=n2,k8s.service.name=lb-local} 503",
	}
	sort.Strings(want)
	// The error counter grows by one per collection: compare it without
	// its value, and check that it equals the number of batches.
	match := func(lines []string) bool {
		got := slices.Clone(lines)
		for i, l := range got {
			if strings.HasPrefix(l, "lbpath.service.health_check.errors") {
				got[i] = l[:strings.LastIndex(l, " ")+1]
			}
		}
		return slices.Equal(got, want)
	}
	lines, doubles := waitFor(t, sink, "first full collection", 30*time.Second, func(l []string, _ map[string]float64) bool { return match(l) })
	collected := time.Now()
	t.Logf("first full collection:\n%s", strings.Join(lines, "\n"))
	for _, l := range lines {
		if strings.HasPrefix(l, "lbpath.service.health_check.errors") {
			if n := len(sink.AllMetrics()); !strings.HasSuffix(l, fmt.Sprintf(" %d", n)) && !strings.HasSuffix(l, fmt.Sprintf(" %d", n-1)) {
				t.Errorf("%s after %d collections: one error per probe of n3", l, n)
			}
		}
	}
	// Ages: from the Services' creation (the API's timestamps have whole
	// seconds, hence the one-second margin).
	svc, err := w.cs.CoreV1().Services(w.ns).Get(ctx, "lb-pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	age := doubles["lbpath.loadbalancer.pending.age{k8s.namespace.name=shop,k8s.service.name=lb-pending}"]
	if truth := collected.Sub(svc.CreationTimestamp.Time).Seconds(); age < truth-2 || age > truth+1 {
		t.Errorf("lb-pending age %.2fs, created %.2fs before the batch was seen", age, truth)
	}

	// A Service turned into a LoadBalancer later is pending since then,
	// not since its creation.
	time.Sleep(3 * time.Second)
	later, err := w.cs.CoreV1().Services(w.ns).Get(ctx, "later", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	later.Spec.Type = corev1.ServiceTypeLoadBalancer
	changed := time.Now()
	if _, err := w.cs.CoreV1().Services(w.ns).Update(ctx, later, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	laterKey := "lbpath.loadbalancer.pending.age{k8s.namespace.name=shop,k8s.service.name=later}"
	_, doubles = waitFor(t, sink, "later pending", 10*time.Second, func(l []string, d map[string]float64) bool {
		_, ok := d[laterKey]
		return ok && slices.Contains(l, "lbpath.loadbalancer.pending{} 3") && slices.Contains(l, "lbpath.loadbalancer.services{} 5")
	})
	sinceChange, sinceCreation := time.Since(changed).Seconds(), time.Since(later.CreationTimestamp.Time).Seconds()
	if a := doubles[laterKey]; a < 0 || a > sinceChange || a > sinceCreation-2 {
		t.Errorf("later: pending age %.2fs, type changed %.2fs ago, created %.2fs ago: want the age since the change", a, sinceChange, sinceCreation)
	}

	// An LB that gets a hostname is no longer pending.
	pend, err := w.cs.CoreV1().Services(w.ns).Get(ctx, "lb-pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pend.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "x.elb.example.com"}}
	if _, err := w.cs.CoreV1().Services(w.ns).UpdateStatus(ctx, pend, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sink, "lb-pending provisioned", 10*time.Second, func(l []string, d map[string]float64) bool {
		_, stillPending := d["lbpath.loadbalancer.pending.age{k8s.namespace.name=shop,k8s.service.name=lb-pending}"]
		return !stillPending && slices.Contains(l, "lbpath.loadbalancer.pending{} 2") &&
			slices.Contains(l, "lbpath.loadbalancer.address{k8s.namespace.name=shop,k8s.service.name=lb-pending,lbpath.loadbalancer.address.type=hostname,lbpath.loadbalancer.address=x.elb.example.com} 1")
	})
}

// TestLeaderElection: a receiver waits out the Lease of a leader that
// crashed (never emits before it expires); two receivers on one Lease,
// only the leader emits; when it shuts down (releasing the Lease) the
// other takes over at once.
func TestLeaderElection(t *testing.T) {
	cp := startAPIServer(t)
	cfg := testConfig(cp.Kubeconfig)
	cfg.HealthCheck.Enabled = false
	// A leader that crashed a moment ago leaves only its Lease, renewed
	// just now: nobody may emit before it expires.
	dur := int32(cfg.LeaderElection.LeaseDuration / time.Second)
	holder, renewed := "crashed-replica", metav1.NewMicroTime(time.Now())
	if _, err := cp.Client.CoordinationV1().Leases("default").Create(context.Background(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.LeaderElection.LeaseName},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, AcquireTime: &renewed, RenewTime: &renewed},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r1, s1 := startReceiver(t, cfg, "r1")
	waitFor(t, s1, "r1 takes over from the crashed leader", 30*time.Second, func([]string, map[string]float64) bool { return true })
	if took := time.Since(renewed.Time); took < cfg.LeaderElection.LeaseDuration {
		t.Fatalf("r1 emitted %v after the crashed leader's last renewal, before its lease (%v) expired", took, cfg.LeaderElection.LeaseDuration)
	} else {
		t.Logf("takeover after a crash: %v after the last renewal (lease %v)", took.Round(time.Millisecond), cfg.LeaderElection.LeaseDuration)
	}
	r2, s2 := startReceiver(t, cfg, "r2")
	// Several renewals of r1's lease: r2 must stay silent throughout.
	time.Sleep(2 * cfg.LeaderElection.LeaseDuration)
	if n := len(s2.AllMetrics()); n != 0 || r2.isLeading() {
		t.Fatalf("standby emitted %d batches (leading=%v) while the leader held the lease", n, r2.isLeading())
	}
	if !r1.isLeading() {
		t.Fatal("r1 stopped leading with nobody competing")
	}
	stopped := time.Now()
	if err := r1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	n1 := len(s1.AllMetrics())
	waitFor(t, s2, "r2 takes over", 2*cfg.LeaderElection.LeaseDuration, func([]string, map[string]float64) bool { return true })
	t.Logf("takeover after a released lease: %v", time.Since(stopped).Round(time.Millisecond))
	if n := len(s1.AllMetrics()); n != n1 {
		t.Errorf("r1 emitted %d batches after shutdown", n-n1)
	}
}
