package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lbpath/lbpath/dashboards/querycheck"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/prometheus"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestEveryQueryOnARealRun: the real pipeline (real control plane and
// kube-proxy, node agents, lbpath-collector, a real Prometheus server fed
// over OTLP, with lbpath's alert rules loaded) runs a scenario with a hot
// pod, SNAT, refused connections and a regressed rollout. Then every
// dashboard and rule expression runs against that server: each returns
// data, and the hot-pod queries name the pod the scenario made hot.
func TestEveryQueryOnARealRun(t *testing.T) {
	c := upK8s(t, "lbq", k8s.Options{Mode: testbed.ModeNFTables, Policy: testbed.PolicyCluster})
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	promBin, err := prometheus.EnsureBinary(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	prom, err := prometheus.Start(ctx, promBin, prometheus.Options{Log: log,
		RuleFiles: []string{filepath.Join("..", "deploy", "rules", "lbpath-rules.yaml")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prom.Stop)
	bin := testbedtest.CollectorBinary(t)
	col, err := collectorproc.Start(ctx, bin, collectorproc.Options{PrometheusOTLP: prom.OTLPMetricsURL(),
		Imbalance:  "    window: 1m\n    bucket: 5s\n    min_connections: 20\n",
		Regression: "    before: 1m\n    after: 1m\n    resolution: 2s\n    current_window: 20s\n    min_samples: 40\n    retention: 10m\n",
		// The cluster's LB signals and ready endpoints, from the real API
		// server (one collector: no leader election needed).
		LBSignals: fmt.Sprintf("    kubeconfig: %s\n    collection_interval: 5s\n    leader_election:\n      enabled: false\n", c.Kubeconfig())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(col.Stop)
	startExportingAgents(t, c, col.OTLPGRPC)
	// A LoadBalancer no controller serves: EXTERNAL-IP <pending>, what the
	// pending panels show (web and empty have their LB IPs published).
	pending := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: k8s.Namespace, Name: "pending-lb"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "nothing"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}}}
	if _, err := c.Client.CoreV1().Services(k8s.Namespace).Create(ctx, pending, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Spread first (no affinity yet: kube-proxy picks at random), so every
	// web pod has connections in the imbalance window and the hot one
	// stands out against the others rather than being alone.
	for range 30 {
		c.TB.Request(ctx, c.TB.ClientPod.Netns, c.TB.Web().ClusterAddr(), 64, 512)
	}
	if _, err := c.Client.CoreV1().Services(k8s.Namespace).Patch(ctx, "web", types.StrategicMergePatchType,
		[]byte(`{"spec":{"sessionAffinity":"ClientIP"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	tb := c.TB
	if err := tb.RouteLB(1); err != nil {
		t.Fatal(err)
	}
	hot := map[string]int{}
	for i := range 120 {
		res := tb.Request(ctx, tb.Client.Netns, tb.Web().LoadBalancerAddr(), 64, 512)
		if res.Err == nil {
			hot[res.Pod]++
		}
		if i%5 == 0 {
			tb.Request(ctx, tb.ClientPod.Netns, tb.Web().ClusterAddr(), 64, 512)
		}
		if i%20 == 0 { // refused: Service empty has no endpoints
			tb.Request(ctx, tb.ClientPod.Netns, tb.Empty().ClusterAddr(), 0, 0)
		}
		time.Sleep(30 * time.Millisecond)
	}
	hotPod, most := "", 0
	for p, n := range hot {
		if n > most {
			hotPod, most = p, n
		}
	}
	qs, err := querycheck.All()
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for k, v := range querycheck.DefaultVars {
		vars[k] = v
	}
	vars["__rate_interval"], vars["__range"] = "2m", "10m"
	// The imbalance processor's window (30 s here) has moved past the skewed
	// phase by the time the rollout's regression is detected (tens of
	// seconds, varying), so queries that judge the current spread are
	// checked now, while the skew is the truth, and not again at the end.
	duringSkew := map[string]bool{"LbpathServiceImbalanced": true}
	var skewQs []querycheck.Query
	for _, q := range qs {
		if duringSkew[q.Name] {
			skewQs = append(skewQs, q)
		}
	}
	if len(skewQs) != len(duringSkew) {
		t.Fatalf("found %d of the %d queries to check during the skew", len(skewQs), len(duringSkew))
	}
	seenDuringSkew := map[string]bool{}
	for deadline := time.Now().Add(40 * time.Second); len(seenDuringSkew) < len(skewQs) && time.Now().Before(deadline); time.Sleep(time.Second) {
		for _, r := range querycheck.RunRemote(ctx, nil, prom.URL(), skewQs, vars, time.Now()) {
			if r.Err == nil && !r.Empty() {
				seenDuringSkew[r.Query.Name] = true
			}
		}
	}
	for _, q := range skewQs {
		if !seenDuringSkew[q.Name] {
			t.Errorf("%s returned nothing during the skewed phase", q)
		}
	}
	if err := c.SetWebDelay(ctx, 25*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitWebReady(ctx); err != nil {
		t.Fatal(err)
	}
	ka := tb.HTTPClient(tb.ClientPod.Netns, true)
	for range 100 {
		if resp, err := ka.Get("http://" + tb.Web().ClusterAddr().String() + "/"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	ka.CloseIdleConnections()
	// Let the processors decide and the rules evaluate.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		v, err := prom.Query(ctx, `max(lbpath_deploy_regression{k8s_deployment_name="web"})`, time.Now())
		if err == nil && len(v) > 0 && v[0].Value == 1 {
			break
		}
		time.Sleep(time.Second)
	}

	results := querycheck.RunRemote(ctx, nil, prom.URL(), qs, vars, time.Now())
	// Queries whose correct answer in this scenario is "nothing", with why.
	// Anything else that comes back empty is a broken query.
	emptyIsTruth := map[string]string{
		"Services that must keep the client IP": "no Service is on the opt-in list (Helm value clientIP.required) in this run",
		"lbpath:client_ip_required":             "same opt-in list, empty by default",
		"LbpathClientIPLost":                    "fires only for Services on the opt-in list",
		"LbpathAgentExportFailing":              "nothing failed to export in this run",
		"LbpathAgentSilent":                     "every agent reported throughout",
		// Before issue 11 these showed the node's own connections (kube-proxy
		// ↔ API server) as metadata/unattributed: a false alarm on every
		// healthy node. Nothing is lost in this run.
		"Dropped by stage and reason": "nothing is lost in this run (the node's own connections count in lbpath.agent.node_connections, not as drops)",
		"LbpathAgentDropping":         "same: nothing is lost in this run",
		"Conntrack drops per node":    "no node's conntrack table fills in this run (e2e TestConntrackFull fills one and checks the drops)",
		"LbpathConntrackDropping":     "same: no conntrack drops in this run",
		"LbpathConntrackNearlyFull":   "the node tables stay far below nf_conntrack_max in this run",
		// LB signals: every Service here has externalTrafficPolicy Cluster,
		// so none has a healthCheckNodePort to answer or be probed on
		// (receiver/lbsignals TestProbeRealKubeProxy runs the real kube-proxy
		// under Local; e2e TestLBHealthProbes counts probes).
		"Health check per node":                          "no Service has externalTrafficPolicy Local in this run",
		"Nodes passing the health check":                 "same: no Local Service",
		"Ready pods on nodes failing the health check":   "same: no Local Service",
		"Probe errors":                                   "same: nothing is probed",
		"Load-balancer probes arriving per node":         "same: no healthCheckNodePort to probe",
		"Passing nodes the load balancer does not probe": "same: no Local Service",
		"LbpathLocalServiceNoHealthyNode":                "same: no Local Service",
		"LbpathLocalReadyPodsNotInLoadBalancer":          "same: no Local Service",
		"LbpathLoadBalancerPending":                      "pending-lb is pending for minutes, not the rule's 10",
		"LbpathManyLoadBalancers":                        "three LoadBalancers, not the rule's 25",
		// No ingress proxy runs in this scenario. e2e TestIngressNginx checks
		// the edge metrics this panel reads against per-request ground truth
		// (from the OTLP wire, not through Prometheus); querycheck's
		// TestRunRemote runs the panel's queries on a real Prometheus over a
		// fixture holding those series.
		"Ingress route → backend pod share and latency": "no Ingress in this run",
	}
	var empty []string
	for _, r := range results {
		if r.Err != nil {
			t.Errorf("%s: %v\n  %s", r.Query, r.Err, r.Expanded)
			continue
		}
		if r.Empty() {
			if duringSkew[r.Query.Name] {
				t.Logf("checked during the skewed phase (its window has since moved on): %s", r.Query)
				continue
			}
			if why, ok := emptyIsTruth[r.Query.Name]; ok {
				t.Logf("empty, as it should be (%s): %s", why, r.Query)
				continue
			}
			empty = append(empty, fmt.Sprintf("%s\n      %s", r.Query, r.Expanded))
		} else if why, ok := emptyIsTruth[r.Query.Name]; ok {
			t.Errorf("%s returned data although %s: %v", r.Query, why, r.Series)
		}
	}
	t.Logf("%d queries checked against the real run", len(results))
	for _, e := range empty {
		t.Logf("empty: %s", e)
	}
	if len(empty) > 0 {
		t.Errorf("%d of %d dashboard/rule queries returned nothing on a run that exercises what they show", len(empty), len(results))
	}
	// The hot-pod answers must be the pod the scenario made hot.
	for _, r := range results {
		if !strings.Contains(strings.ToLower(r.Query.Name), "hot") || r.Err != nil {
			continue
		}
		for _, s := range r.Series {
			if p, ok := s["k8s_pod_name"]; ok && p != hotPod {
				t.Errorf("%s names %s hot; the scenario's hot pod is %s", r.Query, p, hotPod)
			}
		}
	}
}
