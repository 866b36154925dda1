package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lbpath/lbpath/deploy/images"
	"github.com/lbpath/lbpath/deploy/manifests"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/k8s"
)

// Names the chart gives release "lbpath" in scale-out mode.
const (
	soGateway    = "lbpath-gateway"
	soAggregator = "lbpath-collector" // StatefulSet and headless Service
	soReplicas   = 3
	// The test's lbimbalance window: longer than the test, so the
	// reference collector, fed the same points later, sees the same window
	// (the processor's clock is the data's timestamps).
	soWindow = "5m"
)

// soServices are the Services the test sends traffic to, each with two
// pods of its own; those in soAffinity pin each client to one pod (a hot
// pod once the idle endpoints are known).
var (
	// Eight, so that all land on one collector by chance (the ring
	// hashes the collectors' pod IPs) only with probability 3·3⁻⁸ ≈ 0.05 %.
	soServices = []string{"cart", "checkout", "catalog", "search", "auth", "pay", "stock", "ship"}
	soAffinity = map[string]bool{"cart": true, "search": true}
)

// scaleOut is what TestScaleOut's steps share.
type scaleOut struct {
	*realNode
	addrs map[string]netip.AddrPort // Service → ClusterIP:port
	mu    sync.Mutex
	truth map[string]int // Service → connections the pods answered
}

// TestScaleOut installs the chart in its two-tier mode (two gateways
// routing by Service and trace ID, three lbpath-collector replicas in a
// StatefulSet) onto real nodes, with real agents pushing delta metrics of
// real connections through eight Services, and checks against ground truth:
// every connection is exported once through the collectors (the deltas
// they pass on add up to the connections the pods answered, no point
// arrives twice); every Service is counted on exactly one collector with
// the exact number; the three collectors' lbimbalance findings equal those
// of one reference lbpath-collector fed the same points over OTLP; when the
// collector holding the most Services is deleted under traffic, those
// Services have findings on a live collector again (how fast is logged),
// the replacement becomes Ready, and afterwards every connection was still
// exported exactly once and every other Service's Prometheus count is
// exact.
func TestScaleOut(t *testing.T) {
	ctx := context.Background()
	r := &scaleOut{realNode: &realNode{t: t}, truth: map[string]int{}}
	r.c = upK8s(t, "lbso", k8s.Options{RealNodes: true, Images: images.Product})
	var err error
	if r.helm, err = manifests.Helm(ctx); err != nil {
		t.Fatal(err)
	}
	// The aggregators push everything their metrics pipeline carries (the
	// agents' points, the cluster receiver's, their findings) here, and
	// their spans.
	if r.sink, err = otlpsink.StartOn(testbed.HostIP.String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.sink.Stop)
	took := r.install()
	t.Logf("helm install (scale-out) → agents, gateways and %d collectors Ready: %v", soReplicas, took.Round(100*time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(r.podReport(ctx))
		}
	})
	r.createServices(ctx)

	t.Run("OneCollectorPerService", r.onePerService)
	t.Run("FindingsEqualOneCollector", r.findingsEqualOne)
	t.Run("DeletedCollectorRecovers", r.deletedRecovers)
}

func (r *scaleOut) install() time.Duration {
	t := r.t
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: rnNamespace, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "privileged",
	}}}
	if _, err := r.c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	args := []string{"install", rnRelease, manifests.ChartDir(), "--namespace", rnNamespace,
		"--set", "collector.scaleOut.enabled=true",
		"--set", fmt.Sprintf("collector.scaleOut.replicas=%d", soReplicas),
		"--set", "agent.image.pullPolicy=Never",
		"--set", "collector.image.pullPolicy=Never",
		"--set", "collector.scaleOut.gateway.image.pullPolicy=Never",
		"--set", "collector.tracesEndpoint=" + r.sink.GRPCAddr,
		"--set", "collector.metricsEndpoint=" + r.sink.GRPCAddr,
		"--set", "collector.lbimbalance.window=" + soWindow,
		// The testbed's nodes share one kernel (see TestRealNode).
		"--set", "agent.sharedKernel=true",
		// This machine's cgroups are hybrid: the v2 root is at
		// /sys/fs/cgroup/unified, not the chart's default /sys/fs/cgroup.
		"--set", "agent.cgroup2Root=/sys/fs/cgroup/unified",
	}
	r.helmRun(args...)
	r.waitTiers(ctx, 3*time.Minute)
	return time.Since(start)
}

// waitTiers waits until the agents, the gateway Deployment and the
// aggregation StatefulSet are all rolled out and Ready.
func (r *scaleOut) waitTiers(ctx context.Context, timeout time.Duration) {
	r.t.Helper()
	err := poll(ctx, timeout, func() error {
		if err := agentsReady(ctx, r.c); err != nil {
			return err
		}
		if err := deploymentReady(ctx, r.c, soGateway); err != nil {
			return err
		}
		return statefulSetReady(ctx, r.c, soAggregator)
	})
	if err != nil {
		r.t.Fatalf("lbpath not ready: %v\n%s", err, r.podReport(ctx))
	}
}

func statefulSetReady(ctx context.Context, c *k8s.Cluster, name string) error {
	s, err := c.Client.AppsV1().StatefulSets(rnNamespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if !stsRolledOut(s) {
		return fmt.Errorf("StatefulSet %s status %+v", name, s.Status)
	}
	return nil
}

func stsRolledOut(s *appsv1.StatefulSet) bool {
	st := s.Status
	return st.ObservedGeneration >= s.Generation && st.ReadyReplicas == *s.Spec.Replicas &&
		st.AvailableReplicas == *s.Spec.Replicas && st.Replicas == *s.Spec.Replicas
}

// createServices creates each of soServices with a Deployment of its own
// (two podserver pods: a pod behind two Services would make the Service of
// a connection that arrives from another node ambiguous) and waits until
// each answers from node 1. The pods have no readiness probe: the kubelet's
// probes are connections to them too, which ground truth would have to
// subtract.
func (r *scaleOut) createServices(ctx context.Context) {
	t, c := r.t, r.c
	r.addrs = map[string]netip.AddrPort{}
	two := int32(2)
	for _, name := range soServices {
		labels := map[string]string{"app": "so-" + name}
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: k8s.Namespace, Name: name, Labels: labels},
			Spec: appsv1.DeploymentSpec{
				Replicas: &two,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{
						Name: "web", Image: c.Images[k8s.PodServerImage].Ref, ImagePullPolicy: corev1.PullNever,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: testbed.PodPort, Protocol: corev1.ProtocolTCP}},
						Env: []corev1.EnvVar{
							{Name: k8s.PodNameEnv, ValueFrom: &corev1.EnvVarSource{
								FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: k8s.DelayEnv, Value: "0s"},
						},
					}}},
				},
			},
		}
		if _, err := c.Client.AppsV1().Deployments(k8s.Namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: k8s.Namespace, Name: name},
			Spec: corev1.ServiceSpec{
				Selector: labels,
				Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
					TargetPort: intstr.FromInt32(testbed.PodPort)}},
			},
		}
		if soAffinity[name] {
			svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		}
		created, err := c.Client.CoreV1().Services(k8s.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r.addrs[name] = netip.AddrPortFrom(netip.MustParseAddr(created.Spec.ClusterIP), 80)
	}
	for _, name := range soServices {
		err := poll(ctx, 2*time.Minute, func() error {
			d, err := c.Client.AppsV1().Deployments(k8s.Namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if d.Status.ReadyReplicas != *d.Spec.Replicas {
				return fmt.Errorf("Deployment %s status %+v", name, d.Status)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// kube-proxy programs the new Services on its next sync. The probing
	// connections count as truth like any other.
	for _, name := range soServices {
		err := poll(ctx, time.Minute, func() error {
			_, err := r.request(ctx, name)
			return err
		})
		if err != nil {
			t.Fatalf("Service %s (%v) does not answer from %s: %v", name, r.addrs[name], c.TB.Node(1).Name, err)
		}
	}
}

// request makes one connection to Service name from node 1 (its own
// network namespace) and counts it as truth if a pod answered.
func (r *scaleOut) request(ctx context.Context, name string) (string, error) {
	tb := r.c.TB
	res := tb.Request(ctx, tb.Node(1).Netns, r.addrs[name], 64, 256)
	if res.Err != nil {
		// A connection that reached no pod makes no server record; one
		// that did but failed later would, and is not told apart here:
		// fail the test rather than guess.
		if res.Status != 0 || res.Pod != "" {
			return "", fmt.Errorf("request to %s answered by %q (status %d) but failed: %w", name, res.Pod, res.Status, res.Err)
		}
		return "", res.Err
	}
	r.mu.Lock()
	r.truth[name]++
	r.mu.Unlock()
	return res.Pod, nil
}

func (r *scaleOut) truthNow() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.truth)
}

// traffic sends n connections to every Service, interleaved.
func (r *scaleOut) traffic(ctx context.Context, t *testing.T, n int) {
	for range n {
		for _, name := range soServices {
			if _, err := r.request(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// sinkConnections sums, per Service, the server-side lbpath.connections
// deltas the aggregators exported: each connection's record exactly once
// if nothing was lost or sent twice. dups lists points that arrived more
// than once (same agent, series, start and end): a delivery repeated by
// the pipeline, whatever the agent counted.
func (r *scaleOut) sinkConnections(t *testing.T) (sums map[string]float64, dups []string) {
	sums = map[string]float64{}
	seen := map[string]int{}
	for _, md := range r.sink.Metrics() {
		rms := md.ResourceMetrics()
		for i := 0; i < rms.Len(); i++ {
			res := rms.At(i).Resource().Attributes()
			sms := rms.At(i).ScopeMetrics()
			for j := 0; j < sms.Len(); j++ {
				ms := sms.At(j).Metrics()
				for k := 0; k < ms.Len(); k++ {
					m := ms.At(k)
					if m.Name() != "lbpath.connections" || m.Type() != pmetric.MetricTypeSum {
						continue
					}
					if m.Sum().AggregationTemporality() != pmetric.AggregationTemporalityDelta {
						t.Fatalf("lbpath.connections arrived cumulative: the chart's scale-out mode must run the agents with delta temporality")
					}
					dps := m.Sum().DataPoints()
					for d := 0; d < dps.Len(); d++ {
						dp := dps.At(d)
						a := dp.Attributes()
						svc, _ := a.Get("k8s.service.name")
						role, _ := a.Get("lbpath.role")
						ns, _ := a.Get("k8s.namespace.name")
						if role.AsString() != "server" || ns.AsString() != k8s.Namespace || !slices.Contains(soServices, svc.AsString()) {
							continue
						}
						sums[svc.AsString()] += float64(dp.IntValue())
						key := fmt.Sprintf("%s %s %d-%d", seriesKey(res), seriesKey(a), dp.StartTimestamp(), dp.Timestamp())
						if seen[key]++; seen[key] == 2 {
							dups = append(dups, fmt.Sprintf("%s (value %d)", key, dp.IntValue()))
						}
					}
				}
			}
		}
	}
	return sums, dups
}

// waitSinkEqualsTruth waits until the exported deltas add up to the
// connections made, failing on any excess at once (double counting never
// heals) and on a shortfall after the timeout.
func (r *scaleOut) waitSinkEqualsTruth(ctx context.Context, t *testing.T, timeout time.Duration) {
	t.Helper()
	want := r.truthNow()
	var got map[string]float64
	err := poll(ctx, timeout, func() error {
		var dups []string
		got, dups = r.sinkConnections(t)
		if len(dups) > 0 {
			return fmt.Errorf("%d points delivered twice, e.g. %s", len(dups), dups[0])
		}
		for _, svc := range soServices {
			if got[svc] > float64(want[svc]) {
				return fmt.Errorf("counted twice: %s has %v connections exported, %d made", svc, got[svc], want[svc])
			}
		}
		for _, svc := range soServices {
			if got[svc] != float64(want[svc]) {
				return fmt.Errorf("exported %v, made %v", got, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("connections through the aggregators vs made: %v", err)
	}
}

// aggregator is one collector replica as its own Prometheus endpoint shows.
type aggregator struct {
	pod, uid, ip string
	families     map[string]*dto.MetricFamily
}

// aggregators scrapes every collector replica's Prometheus exporter.
func (r *scaleOut) aggregators(ctx context.Context) ([]aggregator, error) {
	pods, err := r.c.Client.CoreV1().Pods(rnNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=collector"})
	if err != nil {
		return nil, err
	}
	var out []aggregator
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			continue
		}
		fam, err := scrapeProm(ctx, netip.AddrPortFrom(netip.MustParseAddr(p.Status.PodIP), 9464).String())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Name, err)
		}
		out = append(out, aggregator{pod: p.Name, uid: string(p.UID), ip: p.Status.PodIP, families: fam})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pod < out[j].pod })
	return out, nil
}

func scrapeProm(ctx context.Context, addr string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(strings.NewReader(string(b)))
}

// perService sums family's samples by k8s_service_name (our Services
// only), keeping samples whose labels include every pair in match.
func perService(fams map[string]*dto.MetricFamily, family string, match map[string]string) map[string]float64 {
	out := map[string]float64{}
	f := fams[family]
	if f == nil {
		return out
	}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := labels["k8s_namespace_name"] == k8s.Namespace && slices.Contains(soServices, labels["k8s_service_name"])
		for k, v := range match {
			ok = ok && labels[k] == v
		}
		if !ok {
			continue
		}
		v := m.GetGauge().GetValue()
		if m.GetCounter() != nil {
			v = m.GetCounter().GetValue()
		}
		out[labels["k8s_service_name"]] += v
	}
	return out
}

// placement is which aggregator holds each Service's connection counts,
// and the counts summed over aggregators.
func placement(aggs []aggregator) (holders map[string][]string, sum map[string]float64) {
	holders, sum = map[string][]string{}, map[string]float64{}
	for _, a := range aggs {
		for svc, v := range perService(a.families, "lbpath_connections_total", map[string]string{"lbpath_role": "server"}) {
			holders[svc] = append(holders[svc], a.pod)
			sum[svc] += v
		}
	}
	return holders, sum
}

// onePerService: traffic through the Services; every connection is
// exported once through the aggregators, every Service's counts are on
// exactly one of them, and those counts equal the connections made.
func (r *scaleOut) onePerService(t *testing.T) {
	ctx := context.Background()
	r.traffic(ctx, t, 30)
	// The cluster receiver (one collector, leader-elected) reports the
	// Services' ready endpoints every 30 s through the gateway; once it
	// has, a little more traffic makes every collector recompute its
	// Services with their idle pods.
	err := poll(ctx, 90*time.Second, func() error {
		if missing := r.unreported(); len(missing) > 0 {
			return fmt.Errorf("no lbpath.service.endpoint.ready exported for %v", missing)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.traffic(ctx, t, 5)
	r.waitSinkEqualsTruth(ctx, t, 90*time.Second)
	want := r.truthNow()
	var holders map[string][]string
	err = poll(ctx, 30*time.Second, func() error {
		aggs, err := r.aggregators(ctx)
		if err != nil {
			return err
		}
		if len(aggs) != soReplicas {
			return fmt.Errorf("%d aggregators answer, want %d", len(aggs), soReplicas)
		}
		var sum map[string]float64
		holders, sum = placement(aggs)
		for _, svc := range soServices {
			if len(holders[svc]) != 1 {
				return fmt.Errorf("Service %s counted on %v, want exactly one collector", svc, holders[svc])
			}
			if sum[svc] != float64(want[svc]) {
				return fmt.Errorf("Service %s: %v connections on %v, %d made", svc, sum[svc], holders[svc], want[svc])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, h := range holders {
		used[h[0]] = true
	}
	t.Logf("placement %v over %d of %d collectors; connections %v", holders, len(used), soReplicas, want)
	if len(used) < 2 {
		t.Errorf("all Services on one collector: the test shows nothing about routing")
	}
	r.noRestarts(ctx, t, "")
}

// unreported lists the Services with no lbpath.service.endpoint.ready
// point among what the collectors exported.
func (r *scaleOut) unreported() []string {
	seen := map[string]bool{}
	for _, p := range r.sink.Points() {
		if p.Metric == "lbpath.service.endpoint.ready" && p.Attrs["k8s.namespace.name"] == k8s.Namespace {
			svc, _ := p.Attrs["k8s.service.name"].(string)
			seen[svc] = true
		}
	}
	var out []string
	for _, svc := range soServices {
		if !seen[svc] {
			out = append(out, svc)
		}
	}
	return out
}

// finding is one series of lbimbalance's output.
type finding struct {
	ts    pcommon.Timestamp
	value float64
}

// findings reads lbimbalance's output (lbpath.lb.*, service.name
// lbpath-collector) for our Services from exported batches: per series, the
// value with the newest timestamp.
func findings(mds []pmetric.Metrics) map[string]finding {
	out := map[string]finding{}
	for _, md := range mds {
		rms := md.ResourceMetrics()
		for i := 0; i < rms.Len(); i++ {
			sms := rms.At(i).ScopeMetrics()
			for j := 0; j < sms.Len(); j++ {
				ms := sms.At(j).Metrics()
				for k := 0; k < ms.Len(); k++ {
					m := ms.At(k)
					if !strings.HasPrefix(m.Name(), "lbpath.lb.") || m.Type() != pmetric.MetricTypeGauge {
						continue
					}
					dps := m.Gauge().DataPoints()
					for d := 0; d < dps.Len(); d++ {
						dp := dps.At(d)
						svc, _ := dp.Attributes().Get("k8s.service.name")
						if !slices.Contains(soServices, svc.AsString()) {
							continue
						}
						key := m.Name() + seriesKey(dp.Attributes())
						if f, ok := out[key]; !ok || dp.Timestamp() >= f.ts {
							out[key] = finding{dp.Timestamp(), dp.DoubleValue()}
						}
					}
				}
			}
		}
	}
	return out
}

func seriesKey(a pcommon.Map) string {
	raw := a.AsRaw()
	keys := slices.Sorted(maps.Keys(raw))
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "{%s=%v}", k, raw[k])
	}
	return b.String()
}

// isFinding says whether m is one of the processors' outputs, which the
// reference collector must compute itself rather than be fed.
func isFinding(name string) bool {
	return strings.HasPrefix(name, "lbpath.lb.") || strings.HasPrefix(name, "lbpath.deploy.")
}

// inputs strips the processors' outputs from exported batches, leaving what
// the aggregators were fed (the agents' and the cluster receiver's points).
func inputs(mds []pmetric.Metrics) []pmetric.Metrics {
	var out []pmetric.Metrics
	for _, md := range mds {
		c := pmetric.NewMetrics()
		md.CopyTo(c)
		c.ResourceMetrics().RemoveIf(func(rm pmetric.ResourceMetrics) bool {
			rm.ScopeMetrics().RemoveIf(func(sm pmetric.ScopeMetrics) bool {
				sm.Metrics().RemoveIf(func(m pmetric.Metric) bool { return isFinding(m.Name()) })
				return sm.Metrics().Len() == 0
			})
			return rm.ScopeMetrics().Len() == 0
		})
		if c.DataPointCount() > 0 {
			out = append(out, c)
		}
	}
	return out
}

// findingsEqualOne feeds one real lbpath-collector (the single-collector
// configuration, same lbimbalance settings) everything the three were fed,
// over OTLP, and compares its findings for our Services with theirs.
func (r *scaleOut) findingsEqualOne(t *testing.T) {
	ctx := context.Background()
	got := findings(r.sink.Metrics())
	if len(got) == 0 {
		t.Fatal("the aggregators exported no lbimbalance findings for the test's Services")
	}
	fed := inputs(r.sink.Metrics())

	refSink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer refSink.Stop()
	bin, err := collectorproc.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ref, err := collectorproc.Start(ctx, bin, collectorproc.Options{SinkHTTP: refSink.HTTPAddr,
		Imbalance: "    window: " + soWindow + "\n    bucket: 10s\n    hot_factor: 1.5\n    min_connections: 20\n    stale_after: 5m\n"})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Stop()
	conn, err := grpc.NewClient(ref.OTLPGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pmetricotlp.NewGRPCClient(conn)
	for _, md := range fed {
		if _, err := client.Export(ctx, pmetricotlp.NewExportRequestFromMetrics(md)); err != nil {
			t.Fatalf("feeding the reference collector: %v", err)
		}
	}
	var want map[string]finding
	err = poll(ctx, 30*time.Second, func() error {
		want = findings(refSink.Metrics())
		if d := diffFindings(got, want); d != "" {
			return fmt.Errorf("%s", d)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("three collectors' findings differ from one collector's fed the same %d batches: %v\nreference log:\n%s", len(fed), err, ref.Log())
	}
	// Ground truth for the hot flag: a Service with ClientIP affinity sent
	// every connection from node 1 to one of its two ready pods; the
	// other is idle, known only from the cluster receiver's report routed
	// through the gateway, so exactly one of its pods is hot. (The others'
	// random split may flag one by chance: equality above covers them.)
	hot := map[string]int{}
	for k, f := range got {
		if strings.HasPrefix(k, "lbpath.lb.hot{") && f.value == 1 {
			for _, svc := range soServices {
				if strings.Contains(k, "{k8s.service.name="+svc+"}") {
					hot[svc]++
				}
			}
		}
	}
	for svc := range soAffinity {
		if hot[svc] != 1 {
			t.Errorf("Service %s (ClientIP affinity: all traffic on one of two ready pods) has %d hot pods, want 1", svc, hot[svc])
		}
	}
	t.Logf("%d finding series equal on three collectors and on one; hot pods %v", len(got), hot)
}

// diffFindings lists the series whose latest values differ ("" if none).
func diffFindings(got, want map[string]finding) string {
	var d []string
	for _, k := range slices.Sorted(maps.Keys(got)) {
		w, ok := want[k]
		switch {
		case !ok:
			d = append(d, fmt.Sprintf("%s = %v on the three, absent on one", k, got[k].value))
		case w.value != got[k].value:
			d = append(d, fmt.Sprintf("%s = %v on the three, %v on one", k, got[k].value, w.value))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if _, ok := got[k]; !ok {
			d = append(d, fmt.Sprintf("%s = %v on one, absent on the three", k, want[k].value))
		}
	}
	if len(d) > 12 {
		d = append(d[:12], fmt.Sprintf("… %d more", len(d)-12))
	}
	return strings.Join(d, "\n")
}

// deletedRecovers deletes the collector holding the most Services while
// traffic flows, and measures how long until those Services have findings
// on a live collector again and the replacement is Ready; afterwards every
// connection made must have been exported exactly once, and the Services
// that never lived on the victim must be counted exactly on the collectors
// (summed: some may have moved to the replacement).
func (r *scaleOut) deletedRecovers(t *testing.T) {
	ctx := context.Background()
	aggs, err := r.aggregators(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r.noRestarts(ctx, t, "")
	if t.Failed() {
		t.FailNow()
	}
	holders, _ := placement(aggs)
	held := map[string][]string{}
	for svc, h := range holders {
		held[h[0]] = append(held[h[0]], svc)
	}
	victim := ""
	for pod, svcs := range held {
		if victim == "" || len(svcs) > len(held[victim]) || (len(svcs) == len(held[victim]) && pod < victim) {
			victim = pod
		}
	}
	oldUID := ""
	for _, a := range aggs {
		if a.pod == victim {
			oldUID = a.uid
		}
	}
	t.Logf("deleting %s, which holds %v", victim, held[victim])

	trafficCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		for trafficCtx.Err() == nil {
			for _, name := range soServices {
				if _, err := r.request(ctx, name); err != nil {
					done <- err
					return
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		done <- nil
	}()
	stopTraffic := func() {
		stop()
		if err := <-done; err != nil {
			t.Fatalf("traffic during the replacement: %v", err)
		}
	}

	start := time.Now()
	if err := r.c.Client.CoreV1().Pods(rnNamespace).Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
		stopTraffic()
		t.Fatal(err)
	}
	// Findings recover when every Service the victim held has findings on
	// a live collector again: one that never held it before, so they come
	// from data routed after the deletion (to a survivor while the victim
	// was out of the ring, or to whichever collector the ring with the
	// replacement's new IP gives it).
	var back, ready time.Duration
	err = poll(ctx, 3*time.Minute, func() error {
		if back == 0 {
			aggs, err := r.aggregators(ctx)
			if err != nil {
				return err
			}
			have := map[string]bool{}
			for _, a := range aggs {
				if a.pod == victim && a.uid == oldUID {
					continue
				}
				for svc, n := range perService(a.families, "lbpath_lb_pods", nil) {
					have[svc] = have[svc] || n > 0
				}
			}
			for _, svc := range held[victim] {
				if !have[svc] {
					return fmt.Errorf("no live collector has findings for %s yet", svc)
				}
			}
			back = time.Since(start)
		}
		p, err := r.c.Client.CoreV1().Pods(rnNamespace).Get(ctx, victim, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if string(p.UID) == oldUID || !podReady(p) {
			return fmt.Errorf("replacement of %s not Ready", victim)
		}
		ready = time.Since(start)
		return nil
	})
	if err != nil {
		stopTraffic()
		t.Fatalf("after deleting %s: %v", victim, err)
	}
	time.Sleep(5 * time.Second) // traffic on the settled ring
	stopTraffic()
	t.Logf("deleted %s: findings for %v on a live collector again after %v; replacement Ready after %v",
		victim, held[victim], back.Round(100*time.Millisecond), ready.Round(100*time.Millisecond))

	r.waitSinkEqualsTruth(ctx, t, 90*time.Second)
	want := r.truthNow()
	err = poll(ctx, 30*time.Second, func() error {
		aggs, err := r.aggregators(ctx)
		if err != nil {
			return err
		}
		_, sum := placement(aggs)
		for _, svc := range soServices {
			if slices.Contains(held[victim], svc) {
				continue // its counts before the deletion died with the pod; the sink has them
			}
			if sum[svc] != float64(want[svc]) {
				return fmt.Errorf("Service %s (never on %s): %v connections on the collectors, %d made", svc, victim, sum[svc], want[svc])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.logGatewayFailures(ctx, t)
	r.noRestarts(ctx, t, victim)
}

// noRestarts fails if a gateway or collector container restarted (an
// OOM kill loses what the process held), except the deleted one's
// replacement.
func (r *scaleOut) noRestarts(ctx context.Context, t *testing.T, except string) {
	t.Helper()
	pods, err := r.c.Client.CoreV1().Pods(rnNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if c := p.Labels["app.kubernetes.io/component"]; c != "collector" && c != "gateway" {
			continue
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.RestartCount > 0 && p.Name != except {
				reason := ""
				if lt := cs.LastTerminationState.Terminated; lt != nil {
					reason = lt.Reason
				}
				t.Errorf("%s restarted %d times (last: %s)", p.Name, cs.RestartCount, reason)
			}
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// logGatewayFailures logs the gateways' own export counters: what they
// could not deliver to a collector is counted there.
func (r *scaleOut) logGatewayFailures(ctx context.Context, t *testing.T) {
	pods, err := r.c.Client.CoreV1().Pods(rnNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=gateway"})
	if err != nil {
		t.Log(err)
		return
	}
	for _, p := range pods.Items {
		fam, err := scrapeProm(ctx, netip.AddrPortFrom(netip.MustParseAddr(p.Status.PodIP), 9464).String())
		if err != nil {
			t.Logf("gateway %s: %v", p.Name, err)
			continue
		}
		var b strings.Builder
		for _, name := range slices.Sorted(maps.Keys(fam)) {
			if strings.HasPrefix(name, "otelcol_exporter_sen") || strings.HasPrefix(name, "otelcol_loadbalancer_num_backend") {
				for _, m := range fam[name].GetMetric() {
					v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
					fmt.Fprintf(&b, " %s%v=%v", name, labelPairs(m), v)
				}
			}
		}
		t.Logf("gateway %s:%s", p.Name, b.String())
	}
}

func labelPairs(m *dto.Metric) []string {
	var out []string
	for _, l := range m.GetLabel() {
		if l.GetName() == "exporter" || l.GetName() == "resolver" {
			out = append(out, l.GetName()+"="+l.GetValue())
		}
	}
	return out
}
