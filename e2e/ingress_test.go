package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestIngressNginx: a real nginx (Debian's) runs as the ingress proxy pod
// behind a LoadBalancer Service, described by an IngressClass and an
// Ingress in the real API server, and routes /web and /api to Services web
// and api (real kube-proxy). 32 concurrent clients send requests through
// the LB IP; each backend pod's count on the aggregate edge (proxy pod →
// backend Service → backend pod) must equal exactly the requests that pod
// answered (X-Pod, the ground truth), both in lbpath.ingress.requests
// (counted at the backend pod) and lbpath.ingress.connections (counted at
// the proxy's node: nginx sends each request on its own upstream
// connection). No per-request link is made (see docs/ARCHITECTURE.md), so
// per-request precision is reported as n/a, the edge's precision and
// recall are printed.
//
// Then the Gateway API, in the same cluster and with the same agents: the
// agents start before its CRDs exist (they must say so and name the rest),
// UpGateway installs the real CRDs, a Gateway, an HTTPRoute and a second
// real nginx as the Gateway's data plane; the agents find the API on their
// own and the Gateway's edge must match its own ground truth the same way,
// with kind Gateway and the HTTPRoute named.
func TestIngressNginx(t *testing.T) {
	c := upK8s(t, "lbing", k8s.Options{PoolSize: 6})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ing, err := c.UpIngress(ctx, k8s.IngressOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	sink := testbedtest.Sink(t)
	set, _ := startNamedAgents(t, c, nodeagents.Options{GatewayRecheck: 500 * time.Millisecond,
		Export: &exporter.Config{Endpoint: sink.GRPCAddr, Insecure: true, MetricInterval: time.Second}})
	for _, a := range set.Agents {
		if !waitFor(t, 30*time.Second, func() bool { return a.Watcher().IngressSynced() && a.Watcher().Ingress.Len() == 1 }) {
			t.Fatal("an agent never learnt the Ingress")
		}
		if st := a.Watcher().GatewayState(); st != "absent" {
			t.Errorf("Gateway API state %q before its CRDs exist, want absent", st)
		}
	}
	checkProxyEdge(t, c, sink, ing, k8s.Namespace+"/"+k8s.IngressName, "Ingress")

	gw, err := c.UpGateway(ctx, k8s.IngressOptions{Dir: t.TempDir(), Node: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range set.Agents {
		if !waitFor(t, 30*time.Second, func() bool { return a.Watcher().GatewayState() == "watching" && a.Watcher().Ingress.Len() == 2 }) {
			t.Fatalf("an agent never learnt the Gateway (state %s, %d proxies known)", a.Watcher().GatewayState(), a.Watcher().Ingress.Len())
		}
	}
	checkProxyEdge(t, c, sink, gw, k8s.Namespace+"/"+k8s.GatewayName, "Gateway")
	for _, p := range sink.Points() {
		if p.Metric == exporter.MetricIngressRequests && p.Attrs["lbpath.ingress.name"] == k8s.Namespace+"/"+k8s.GatewayName &&
			p.Attrs["lbpath.ingress.httproute"] != k8s.Namespace+"/"+k8s.HTTPRouteName {
			t.Errorf("Gateway edge point names HTTPRoute %v, want %s/%s", p.Attrs["lbpath.ingress.httproute"], k8s.Namespace, k8s.HTTPRouteName)
			break
		}
	}
}

// checkProxyEdge sends 32 concurrent clients × 20 requests through proxy
// px and checks its aggregate edge (lbpath.ingress.name name, kind) per
// backend pod against the answers, and the link precision as exported.
func checkProxyEdge(t *testing.T, c *k8s.Cluster, sink *otlpsink.Sink, px *k8s.Ingress, name, kind string) {
	t.Helper()
	truth, total := ingressLoad(t, c, px, 32, 20)
	t.Logf("%s %s ground truth: %d requests, per backend pod %v", kind, name, total, truth)

	var got map[string][2]float64
	ok := waitFor(t, 30*time.Second, func() bool {
		got = ingressEdge(sink.Points(), name, kind)
		for pod, n := range truth {
			if got[pod] != [2]float64{float64(n), float64(n)} {
				return false
			}
		}
		return len(got) == len(truth)
	})
	named := 0.0
	for pod, v := range got {
		if truth[pod] > 0 {
			named += min(v[0], float64(truth[pod]))
		}
	}
	t.Logf("%s via nginx: aggregate edge precision %.4f recall %.4f (requests named to their backend pod / made); per-request links: none made (n/a)",
		kind, precision(named, got), named/float64(total))
	if !ok {
		t.Errorf("%s %s: aggregate edge per backend pod [requests, connections] = %v, want %v for both", kind, name, got, truth)
	}
	// Link precision as exported: every outbound connection joined to the
	// aggregate edge (exactly the lbpath.ingress.connections points, any
	// outcome), none linked per request (stated as 0, not absent).
	links := ingressLinks(sink.Points())
	t.Logf("lbpath.ingress.links by lbpath.link %v; lbpath.ingress.connections (any outcome) %v", links, links[""])
	if pr, seen := links["per_request"]; !seen || pr != 0 {
		t.Errorf("lbpath.ingress.links{per_request} = %v (exported: %v), want an exported 0", pr, seen)
	}
	if links["aggregate"] != links[""] || links[""] < float64(total) {
		t.Errorf("lbpath.ingress.links{aggregate} = %v, want the %v outbound edge connections (≥ %d requests, one upstream connection each)", links["aggregate"], links[""], total)
	}
}

// ingressLinks sums the newest cumulative point of each
// lbpath.ingress.links series by lbpath.link over all agents, and under ""
// those of lbpath.ingress.connections (every outcome).
func ingressLinks(points []otlpsink.Point) map[string]float64 {
	last := map[string]otlpsink.Point{}
	for _, p := range points {
		if p.Metric == exporter.MetricIngressLinks || p.Metric == exporter.MetricIngressConns {
			last[fmt.Sprint(p.Metric, p.Resource, p.Attrs)] = p
		}
	}
	out := map[string]float64{}
	for _, p := range last {
		k := ""
		if p.Metric == exporter.MetricIngressLinks {
			k = fmt.Sprint(p.Attrs["lbpath.link"])
		}
		out[k] += p.Value
	}
	return out
}

// ingressLoad runs clients concurrent keep-alive clients from the external
// client through the proxy's LB IP, each sending perClient requests
// alternately to /web and /api, and returns the requests each backend pod
// answered (X-Pod); every answer must come from the routed Service's pods.
func ingressLoad(t *testing.T, c *k8s.Cluster, ing *k8s.Ingress, clients, perClient int) (map[string]int, int) {
	t.Helper()
	truth := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, clients*perClient)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := c.TB.HTTPClient(c.TB.Client.Netns, true)
			for j := range perClient {
				p := k8s.PathWeb
				if (i+j)%2 == 1 {
					p = k8s.PathAPI
				}
				pod, err := ingressGet(hc, fmt.Sprintf("http://%s%s/%d/%d", ing.LB, p, i, j))
				if err == nil && !strings.HasPrefix(pod, ing.Backends[p]+"-") {
					err = fmt.Errorf("%s answered by pod %s, not a pod of %s", p, pod, ing.Backends[p])
				}
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				truth[pod]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return truth, clients * perClient
}

func ingressGet(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return resp.Header.Get(testbed.HeaderPod), nil
}

// ingressEdge reads the aggregate edge per backend pod from the newest
// cumulative point of each series: [lbpath.ingress.requests,
// lbpath.ingress.connections that closed ok] of the Ingress or Gateway
// name of kind.
func ingressEdge(points []otlpsink.Point, name, kind string) map[string][2]float64 {
	type series struct {
		metric, pod string
		v           float64
	}
	last := map[string]series{}
	for _, p := range points {
		if p.Metric != exporter.MetricIngressRequests && p.Metric != exporter.MetricIngressConns {
			continue
		}
		if p.Attrs["lbpath.ingress.name"] != name || p.Attrs["lbpath.ingress.kind"] != kind {
			continue
		}
		if p.Metric == exporter.MetricIngressConns && p.Attrs["lbpath.outcome"] != string(flow.OutcomeOK) {
			continue
		}
		key := fmt.Sprint(p.Metric, p.Resource, p.Attrs)
		last[key] = series{p.Metric, fmt.Sprint(p.Attrs["k8s.pod.name"]), p.Value}
	}
	out := map[string][2]float64{}
	for _, s := range last {
		v := out[s.pod]
		if s.metric == exporter.MetricIngressRequests {
			v[0] += s.v
		} else {
			v[1] += s.v
		}
		out[s.pod] = v
	}
	return out
}

// precision is the share of the edge's requests named to a pod that
// answered at least that many.
func precision(named float64, got map[string][2]float64) float64 {
	all := 0.0
	for _, v := range got {
		all += v[0]
	}
	if all == 0 {
		return 0
	}
	return named / all
}

// TestIngressHotBackendAndRegression: what only the cluster-wide view sees
// behind an ingress proxy, with a real nginx Ingress, the real kube-proxy
// and a real lbpath-collector. Web has ClientIP session affinity, so every
// request the proxy forwards (all from the proxy pod's one address) lands
// on one web pod: lbimbalance must flag exactly the pod that answered them
// (X-Pod, ground truth) and no other. Then web rolls out to a version 30 ms
// slower while the traffic still comes only through the Ingress:
// deployregression must flag it, and the ingress edge's latency behind the
// proxy must show it per backend pod (every new pod ≥ 30 ms on average,
// every old one below).
func TestIngressHotBackendAndRegression(t *testing.T) {
	c := upK8s(t, "lbih", k8s.Options{PoolSize: 6})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sink := testbedtest.Sink(t)
	col, err := collectorproc.Start(ctx, testbedtest.CollectorBinary(t), collectorproc.Options{
		SinkHTTP:   sink.HTTPAddr,
		Imbalance:  "    window: 20s\n    bucket: 5s\n    min_connections: 10\n",
		Regression: "    before: 1m\n    after: 30s\n    resolution: 2s\n    current_window: 15s\n    min_samples: 40\n    retention: 10m\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(col.Stop)
	ing, err := c.UpIngress(ctx, k8s.IngressOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	set := startExportingAgents(t, c, col.OTLPGRPC)
	for _, a := range set.Agents {
		if !waitFor(t, 30*time.Second, func() bool { return a.Watcher().Ingress.Len() == 1 }) {
			t.Fatal("an agent never learnt the Ingress")
		}
	}
	hc := c.TB.HTTPClient(c.TB.Client.Netns, true)
	answered := map[string]int{}
	traffic := func(n int) {
		t.Helper()
		for i := range n {
			pod, err := ingressGet(hc, fmt.Sprintf("http://%s%s/%d", ing.LB, k8s.PathWeb, i))
			if err != nil {
				t.Fatal(err)
			}
			answered[pod]++
			time.Sleep(20 * time.Millisecond)
		}
	}
	// First spread (no affinity yet), so every web pod has connections in
	// the imbalance window and the hot one stands out against the others;
	// then ClientIP affinity, and the proxy's one address sticks to a pod.
	traffic(20)
	if _, err := c.Client.CoreV1().Services(k8s.Namespace).Patch(ctx, k8s.WebDeployment, types.StrategicMergePatchType,
		[]byte(`{"spec":{"sessionAffinity":"ClientIP"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // kube-proxy resyncs after the Service change
	spread := answered
	answered = map[string]int{}
	traffic(60)
	t.Logf("before affinity the proxy's requests spread %v", spread)
	if len(answered) != 1 {
		t.Fatalf("with ClientIP affinity the proxy's requests reached %v, want one pod", answered)
	}
	var hot string
	for p := range answered {
		hot = p
	}
	hotN := answered[hot]
	wait := func(what string, ok func([]otlpsink.Point) bool) {
		t.Helper()
		if !waitFor(t, 40*time.Second, func() bool { return ok(sink.Points()) }) {
			t.Fatalf("%s: not seen within 40s\ncollector log:\n%s", what, col.Log())
		}
	}
	wait("hot backend pod "+hot, func(p []otlpsink.Point) bool {
		v, ok := lastPoint(p, "lbpath.lb.hot", map[string]string{"k8s.service.name": "web", "k8s.pod.name": hot})
		return ok && v == 1
	})
	before := podRS(t, c)
	for pod := range before {
		if pod == hot || !strings.HasPrefix(pod, k8s.WebDeployment+"-") {
			continue
		}
		if v, ok := lastPoint(sink.Points(), "lbpath.lb.hot", map[string]string{"k8s.service.name": "web", "k8s.pod.name": pod}); ok && v != 0 {
			t.Errorf("pod %s flagged hot too; only %s answered the proxy", pod, hot)
		}
	}

	// The baseline for longer than the processor's first resolution, then
	// a version 30 ms slower; all of it through the Ingress.
	traffic(80)
	time.Sleep(3 * time.Second)
	traffic(20)
	if err := c.SetWebDelay(ctx, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitWebReady(ctx); err != nil {
		t.Fatal(err)
	}
	traffic(80)
	verdict := map[string]string{"k8s.deployment.name": "web"}
	wait("regression verdict behind the Ingress", func(p []otlpsink.Point) bool {
		v, ok := lastPoint(p, "lbpath.deploy.regression", verdict)
		return ok && v == 1
	})
	after := podRS(t, c)
	mean := ingressMeanByPod(sink.Points(), k8s.Namespace+"/"+k8s.IngressName)
	t.Logf("hot backend %s (%d of 60 requests after affinity); mean latency behind the proxy per pod %v", hot, hotN, mean)
	for pod, m := range mean {
		_, isOld := before[pod]
		_, isNew := after[pod]
		switch {
		case isNew && !isOld && m < 0.030:
			t.Errorf("new pod %s: %.1f ms behind the proxy, want ≥ 30 ms", pod, m*1e3)
		case isOld && !isNew && m >= 0.030:
			t.Errorf("old pod %s: %.1f ms behind the proxy, want < 30 ms", pod, m*1e3)
		}
	}
}

// ingressMeanByPod is the mean of lbpath.ingress.request.duration per
// backend pod of Ingress name, from each series' newest cumulative point.
func ingressMeanByPod(points []otlpsink.Point, name string) map[string]float64 {
	last := map[string]otlpsink.Point{}
	for _, p := range points {
		if p.Metric == exporter.MetricIngressDuration && p.Attrs["lbpath.ingress.name"] == name {
			last[fmt.Sprint(p.Resource, p.Attrs)] = p
		}
	}
	sum, n := map[string]float64{}, map[string]uint64{}
	for _, p := range last {
		pod := fmt.Sprint(p.Attrs["k8s.pod.name"])
		sum[pod] += p.Sum
		n[pod] += p.Count
	}
	out := map[string]float64{}
	for pod, s := range sum {
		if n[pod] > 0 {
			out[pod] = s / float64(n[pod])
		}
	}
	return out
}
