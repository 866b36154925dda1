package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/cmd/lbpath/explain"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/prometheus"
)

// kubeReport is what the Kubernetes demo measured; tests assert on it.
type kubeReport struct {
	hotPod    string
	explained *explain.Report
	pods      map[string]*kubePodRow
	// ingress: requests each backend pod answered through the Ingress
	// (ground truth from the client).
	ingress map[string]int
}

type kubePodRow struct {
	pod, rs, node      string
	conns, snat, cross int
	entry              map[string]int
	requests           []time.Duration
	bytesIn, bytesOut  uint64
}

// collectorBinary finds lbpath-collector next to this executable or on
// PATH, and builds it otherwise.
func collectorBinary(ctx context.Context, out io.Writer) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "lbpath-collector")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("lbpath-collector"); err == nil {
		return p, nil
	}
	dir := filepath.Join(os.TempDir(), "lbpath-demo-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintln(out, "lbpath demo: building lbpath-collector")
	return collectorproc.Build(ctx, dir)
}

// kubeDemo runs the demo against the real control plane: Deployment web
// behind a LoadBalancer Service, the real kube-proxy, the agents naming
// every hop, the collector's processors and Prometheus, and ends with
// `lbpath explain` for the Service.
func kubeDemo(ctx context.Context, opt demoOptions, out, errOut io.Writer) (*kubeReport, error) {
	start := time.Now()
	log := slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	progress := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fmt.Fprintln(out, "lbpath demo: Kubernetes v1.37.2 control plane binaries (built from the Go module proxy on first use: ~5-10 min cold)")
	bins, err := k8s.EnsureBinaries(ctx, progress)
	if err != nil {
		return nil, err
	}
	promBin, err := prometheus.EnsureBinary(ctx, progress)
	if err != nil {
		return nil, err
	}
	colBin, err := collectorBinary(ctx, out)
	if err != nil {
		return nil, err
	}
	prom, err := prometheus.Start(ctx, promBin, prometheus.Options{Log: log})
	if err != nil {
		return nil, err
	}
	defer prom.Stop()
	col, err := collectorproc.Start(ctx, colBin, collectorproc.Options{
		PrometheusOTLP: prom.OTLPMetricsURL(),
		Imbalance:      "    window: 1m\n    bucket: 5s\n    min_connections: 20\n",
		Regression:     "    before: 1m\n    after: 1m\n    resolution: 2s\n    current_window: 20s\n    min_samples: 40\n    retention: 10m\n",
	})
	if err != nil {
		return nil, err
	}
	defer col.Stop()

	fmt.Fprintf(out, "lbpath demo: control plane + 2 node namespaces, real kube-proxy (%s mode), Deployment web (3 replicas), Service web type LoadBalancer\n", opt.Mode)
	c, err := k8s.Up(ctx, k8s.Options{Prefix: opt.Prefix, Mode: opt.Mode, Policy: opt.Policy, Binaries: bins, Logger: log})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := c.Down(); err != nil {
			fmt.Fprintf(errOut, "lbpath demo: teardown: %v\n", err)
		}
	}()
	if _, err := c.WaitWebReady(ctx); err != nil {
		return nil, err
	}
	// One busy client, session affinity: the classic "one pod takes it all".
	if _, err := c.Client.CoreV1().Services(k8s.Namespace).Patch(ctx, "web", types.StrategicMergePatchType,
		[]byte(`{"spec":{"sessionAffinity":"ClientIP"}}`), metav1.PatchOptions{}); err != nil {
		return nil, fmt.Errorf("set session affinity: %w", err)
	}
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.Kubeconfig(), "get", "deploy,rs,pods,svc", "-o", "wide")
		cmd.Stdout, cmd.Stderr = out, errOut
		fmt.Fprintf(out, "\n$ kubectl --kubeconfig %s get deploy,rs,pods,svc -o wide\n", c.Kubeconfig())
		_ = cmd.Run()
		fmt.Fprintln(out)
	} else {
		fmt.Fprintf(out, "lbpath demo: inspect it with: kubectl --kubeconfig %s get pods,svc -o wide\n", c.Kubeconfig())
	}

	var mu sync.Mutex
	var recs []path.Record
	var reqs []path.Request
	set, err := nodeagents.Start(c.TB, nodeagents.Options{
		Flow:       flow.Config{JoinWait: 300 * time.Millisecond},
		Kubeconfig: c.Kubeconfig(),
		Export:     &exporter.Config{Endpoint: col.OTLPGRPC, Insecure: true, MetricInterval: time.Second},
		Path:       func(p *path.Path) { mu.Lock(); recs = append(recs, p.Record()); mu.Unlock() },
		Request:    func(r *path.Request) { mu.Lock(); reqs = append(reqs, *r); mu.Unlock() },
	}, log)
	if err != nil {
		return nil, err
	}
	defer set.Stop()
	for _, a := range set.Agents {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		a.Watcher().WaitSynced(sctx)
		cancel()
	}
	fmt.Fprintf(out, "lbpath demo: agents on %d nodes → lbpath-collector (lbimbalance, deployregression) → Prometheus %s\n", len(set.Agents), prom.URL())

	tb := c.TB
	fmt.Fprintf(out, "lbpath demo: phase 1 — %d connections from one busy external client through the LB IP (the cloud LB sends it to node1;\n"+
		"             Service web has sessionAffinity: ClientIP) and a few from a client pod\n", opt.Connections)
	if err := tb.RouteLB(1); err != nil {
		return nil, err
	}
	for i := range opt.Connections {
		tb.Request(ctx, tb.Client.Netns, tb.Web().LoadBalancerAddr(), 64, 512)
		if i%5 == 0 {
			tb.Request(ctx, tb.ClientPod.Netns, tb.Web().ClusterAddr(), 64, 512)
		}
		time.Sleep(30 * time.Millisecond)
	}
	fmt.Fprintln(out, "lbpath demo: phase 2 — rolling Deployment web out to a version that answers 25 ms slower; a keep-alive client keeps calling it")
	if err := c.SetWebDelay(ctx, 25*time.Millisecond); err != nil {
		return nil, err
	}
	if _, err := c.WaitWebReady(ctx); err != nil {
		return nil, err
	}
	ka := tb.HTTPClient(tb.ClientPod.Netns, true)
	for range opt.Connections {
		resp, err := ka.Get("http://" + tb.Web().ClusterAddr().String() + "/")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	ka.CloseIdleConnections()
	dir, err := os.MkdirTemp("", "lbpath-demo-ingress-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // after Down (deferred earlier) stops nginx
	ingTruth, err := ingressPhase(ctx, c, set, dir, out, opt.Connections/2)
	if err != nil {
		return nil, err
	}

	// Give the pipeline time to decide (agents export every second, the
	// processors need min_samples on both sides of the rollout).
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		v, err := prom.Query(ctx, `max(lbpath_deploy_regression{k8s_deployment_name="web"})`, time.Now())
		if err == nil && len(v) > 0 && v[0].Value == 1 {
			break
		}
		time.Sleep(time.Second)
	}
	waitIngressSeries(ctx, prom, ingTruth)
	rep := &kubeReport{pods: map[string]*kubePodRow{}, ingress: ingTruth}
	mu.Lock()
	rep.table(recs, reqs)
	mu.Unlock()
	rep.print(out)
	fmt.Fprintf(out, "\n$ lbpath explain service/default/web --prometheus %s\n\n", prom.URL())
	r, err := explain.Inspect(ctx, prom.URL(), "default/web", time.Now(), nil)
	if err != nil {
		return rep, fmt.Errorf("explain: %w", err)
	}
	rep.explained = r
	if err := r.Render(out); err != nil {
		return rep, err
	}
	fmt.Fprintf(out, "\nlbpath demo: finished in %.0fs; tearing down\n", time.Since(start).Seconds())
	return rep, nil
}

// ingressPhase puts a real nginx Ingress in front of web (and a second
// backend, api) behind its own LoadBalancer Service and sends n requests
// through its LB IP, alternating /web and /api. It returns the requests
// each backend pod answered (the pod's X-Pod header), the ground truth the
// INGRESS section of `lbpath explain` is read against. Web keeps its
// ClientIP affinity: every request the proxy forwards comes from the proxy
// pod's one address, so they all land on one web pod — a hot backend pod
// the edge shows and the LB never sees.
func ingressPhase(ctx context.Context, c *k8s.Cluster, set *nodeagents.Set, dir string, out io.Writer, n int) (map[string]int, error) {
	fmt.Fprintf(out, "lbpath demo: phase 3 — an Ingress (a real nginx pod behind its own LoadBalancer %v) routes /web → web and /api → api; %d requests through it\n",
		k8s.IngressLBIP, n)
	ing, err := c.UpIngress(ctx, k8s.IngressOptions{Dir: dir})
	if err != nil {
		return nil, err
	}
	for i, a := range set.Agents {
		for deadline := time.Now().Add(30 * time.Second); a.Watcher().Ingress.Len() == 0; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("agent %d never learnt the Ingress", i+1)
			}
		}
	}
	hc := c.TB.HTTPClient(c.TB.Client.Netns, true)
	truth := map[string]int{}
	for i := range n {
		p := k8s.PathWeb
		if i%2 == 1 {
			p = k8s.PathAPI
		}
		resp, err := hc.Get(fmt.Sprintf("http://%s%s/%d", ing.LB, p, i))
		if err != nil {
			return nil, fmt.Errorf("request through the Ingress: %w", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		truth[resp.Header.Get(testbed.HeaderPod)]++
		// Spread over several export intervals: Prometheus's increase()
		// reads a counter from its second sample on.
		time.Sleep(60 * time.Millisecond)
	}
	hc.CloseIdleConnections()
	return truth, nil
}

// waitIngressSeries waits (at most 30 s) until Prometheus holds every web
// request the Ingress forwarded, so explain's INGRESS section is complete.
func waitIngressSeries(ctx context.Context, prom *prometheus.Server, truth map[string]int) {
	want := 0
	for pod, n := range truth {
		if strings.HasPrefix(pod, testbed.ServiceWeb+"-") {
			want += n
		}
	}
	q := `sum(lbpath_ingress_requests_total{k8s_service_name="web"})`
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if v, err := prom.Query(ctx, q, time.Now()); err == nil && len(v) > 0 && int(v[0].Value) >= want {
			return
		}
	}
}

func (r *kubeReport) table(recs []path.Record, reqs []path.Request) {
	row := func(pod, rs, node string) *kubePodRow {
		if r.pods[pod] == nil {
			r.pods[pod] = &kubePodRow{pod: pod, rs: rs, node: node, entry: map[string]int{}}
		}
		return r.pods[pod]
	}
	for _, rec := range recs {
		if rec.Role != flow.RoleServer || rec.Pod == "" || rec.Service != "default/web" {
			continue
		}
		p := row(rec.Pod, rec.ReplicaSet, rec.PodNode)
		p.conns++
		if rec.SNAT || rec.ClientLost {
			p.snat++
		}
		if rec.CrossNode {
			p.cross++
		}
		en := rec.EntryNode
		if en == "" {
			en = "pod-client"
		}
		p.entry[en]++
		p.bytesIn += rec.BytesToServer
		p.bytesOut += rec.BytesToClient
	}
	for _, q := range reqs {
		if q.Pod == nil {
			continue
		}
		p := row(q.Pod.Namespace+"/"+q.Pod.Name, q.Pod.ReplicaSet, q.Pod.Node)
		p.requests = append(p.requests, q.Req.Latency)
	}
	best := 0
	for name, p := range r.pods {
		if p.conns > best {
			best, r.hotPod = p.conns, name
		}
	}
}

func (r *kubeReport) print(out io.Writer) {
	var names []string
	total, totalReq := 0, 0
	for n, p := range r.pods {
		names = append(names, n)
		total += p.conns
		totalReq += len(p.requests)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := r.pods[names[i]], r.pods[names[j]]
		if a.rs != b.rs {
			return a.rs < b.rs
		}
		return a.pod < b.pod
	})
	fmt.Fprintf(out, "\nService default/web — Deployment web, what lbpath saw per pod (pod-side records, names from the API server)\n\n")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tREPLICASET\tNODE\tCONNS\tCONN%\tREQS\tREQ%\tENTRY NODES\tSNAT%\tCROSS-NODE%\tREQ P50\tREQ P99\t")
	for _, n := range names {
		p := r.pods[n]
		var entries []string
		for node, c := range p.entry {
			entries = append(entries, fmt.Sprintf("%s:%d", node, c))
		}
		sort.Strings(entries)
		mark := ""
		if n == r.hotPod {
			mark = " ◀ hot"
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%d\t%.0f%%\t%d\t%.0f%%\t%s\t%.0f%%\t%.0f%%\t%s\t%s\t\n",
			strings.TrimPrefix(n, "default/"), mark, p.rs, p.node, p.conns, pct(p.conns, total), len(p.requests), pct(len(p.requests), totalReq),
			strings.Join(entries, " "), pct(p.snat, p.conns), pct(p.cross, p.conns),
			quantile(p.requests, 0.5), quantile(p.requests, 0.99))
	}
	tw.Flush()
	var pods []string
	for p := range r.ingress {
		pods = append(pods, p)
	}
	sort.Strings(pods)
	fmt.Fprintf(out, "\nThrough the Ingress, as the client saw it (X-Pod of each answer):")
	for _, p := range pods {
		fmt.Fprintf(out, " %s:%d", p, r.ingress[p])
	}
	fmt.Fprintln(out)
}
