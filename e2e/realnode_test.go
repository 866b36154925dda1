package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpath/lbpath/agent/bpf"
	"github.com/lbpath/lbpath/deploy/images"
	"github.com/lbpath/lbpath/deploy/manifests"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/prometheus"
)

// Names the chart gives release "lbpath" (deploy/helm/lbpath/_helpers.tpl).
const (
	rnNamespace = "lbpath"
	rnRelease   = "lbpath"
	rnAgentDS   = "lbpath-agent"
	rnCollector = "lbpath-collector"
)

// realNode is what TestRealNode's steps share.
type realNode struct {
	t    *testing.T
	c    *k8s.Cluster
	helm string
	sink *otlpsink.Sink
	prom *prometheus.Server
}

// TestRealNode installs lbpath the way a user does — `helm install` of the
// chart as shipped, images built by `make images`' code — onto real kubelet
// + containerd nodes with a real CNI, cluster DNS and kube-proxy, and checks
// what the user would: the agents and the collector become Ready through
// their own probes; an idle node raises no alert; traffic from an external
// client through the LoadBalancer is named right under both
// externalTrafficPolicy values in spans and metrics that travel through the
// chart's collector; DNS queries over UDP from pods to kube-dns's ClusterIP
// are named with the CoreDNS pod that answered each; a deleted agent flushes the connections that closed
// just before and exits inside its grace period; `helm upgrade` rolls the
// agents without leaving BPF programs behind; `helm uninstall` leaves no
// BPF program, no process and no rule.
func TestRealNode(t *testing.T) {
	ctx := context.Background()
	r := &realNode{t: t}
	// Two CoreDNS pods (one per node): ClusterDNSOverUDP needs queries
	// answered on and off the client's node.
	r.c = upK8s(t, "lbrn", k8s.Options{RealNodes: true, Images: images.Product, DNSReplicas: 2})
	var err error
	if r.helm, err = manifests.Helm(ctx); err != nil {
		t.Fatal(err)
	}
	if n := lbpathPrograms(t); n != 0 {
		t.Fatalf("%d lbpath BPF programs loaded before the install (another agent is running?)", n)
	}
	rulesBefore := r.nodeRules()
	// The chart's collector sends spans to this sink: the test's trace
	// backend, on the host address the pods can reach.
	if r.sink, err = otlpsink.StartOn(testbed.HostIP.String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.sink.Stop)

	took := r.install()
	t.Logf("helm install → agents and collector Ready: %v", took.Round(100*time.Millisecond))
	r.startPrometheus()
	if n := lbpathPrograms(t); n != len(r.c.TB.Nodes)*agentProgramsEach(t) {
		t.Errorf("%d lbpath BPF programs with %d agents, want %d", n, len(r.c.TB.Nodes), len(r.c.TB.Nodes)*agentProgramsEach(t))
	}
	t.Run("IdleNodeRaisesNoAlert", r.idleNoAlert)
	t.Run("LoadBalancerCluster", func(t *testing.T) { r.lbTraffic(t, testbed.PolicyCluster) })
	t.Run("LoadBalancerLocal", func(t *testing.T) { r.lbTraffic(t, testbed.PolicyLocal) })
	t.Run("ClusterDNSOverUDP", r.clusterDNS)
	t.Run("AgentCostUnderLoad", r.costUnderLoad)
	t.Run("DeletedAgentFlushes", r.deletedAgentFlushes)
	t.Run("UpgradeRollsAgents", r.upgrade)
	t.Run("UninstallLeavesNothing", func(t *testing.T) { r.uninstall(t, rulesBefore) })
}

// helmRun runs helm against the test cluster.
func (r *realNode) helmRun(args ...string) {
	r.t.Helper()
	args = append(args, "--kubeconfig", r.c.Kubeconfig())
	out, err := exec.Command(r.helm, args...).CombinedOutput()
	if err != nil {
		r.t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// chartArgs are the only values the test sets: image pull policy (the
// images were imported into containerd, there is no registry), the test's
// trace backend, the shared-kernel scope and span sampling off. The image names are the
// chart's defaults, which are what `make images` produces.
func (r *realNode) chartArgs() []string {
	return []string{
		"--set", "agent.image.pullPolicy=Never",
		"--set", "collector.image.pullPolicy=Never",
		"--set", "collector.tracesEndpoint=" + r.sink.GRPCAddr,
		// All testbed nodes share one kernel (the one part of a real
		// cluster this machine cannot give), so each agent's hooks see
		// the other node's sockets too; on kind/k3d clusters the same
		// holds and this value is the documented remedy.
		"--set", "agent.sharedKernel=true",
		// This machine's cgroups are hybrid: the v2 root is at
		// /sys/fs/cgroup/unified, not the chart's default /sys/fs/cgroup.
		"--set", "agent.cgroup2Root=/sys/fs/cgroup/unified",
		// The steps look for every connection's span: no span sampling
		// (the agent's default keeps 1/32 of healthy connections;
		// TestSpanSamplingAgreesAcrossNodes covers sampling).
		"--set", "agent.spanSampling=1",
	}
}

// install creates the namespace at the Pod Security level the chart
// documents, runs helm install and waits until the agents and the collector
// are Ready; it returns how long that took from the start of helm install.
func (r *realNode) install() time.Duration {
	t := r.t
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: rnNamespace, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "privileged",
	}}}
	if _, err := r.c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r.helmRun(append([]string{"install", rnRelease, manifests.ChartDir(), "--namespace", rnNamespace}, r.chartArgs()...)...)
	r.waitReady(ctx, 3*time.Minute)
	return time.Since(start)
}

// waitReady waits until the DaemonSet is rolled out on every node with
// Ready pods and the collector Deployment is available.
func (r *realNode) waitReady(ctx context.Context, timeout time.Duration) {
	r.t.Helper()
	err := poll(ctx, timeout, func() error {
		if err := agentsReady(ctx, r.c); err != nil {
			return err
		}
		return deploymentReady(ctx, r.c, rnCollector)
	})
	if err != nil {
		r.t.Fatalf("lbpath not ready: %v\n%s", err, r.podReport(ctx))
	}
}

// agentsReady: the agent DaemonSet is rolled out on every node, Ready.
func agentsReady(ctx context.Context, c *k8s.Cluster) error {
	ds, err := c.Client.AppsV1().DaemonSets(rnNamespace).Get(ctx, rnAgentDS, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if !daemonSetRolledOut(ds, len(c.TB.Nodes)) {
		return fmt.Errorf("agent DaemonSet status %+v", ds.Status)
	}
	return nil
}

// deploymentReady: every replica of Deployment name is updated and available.
func deploymentReady(ctx context.Context, c *k8s.Cluster, name string) error {
	d, err := c.Client.AppsV1().Deployments(rnNamespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if d.Status.ObservedGeneration < d.Generation || d.Status.AvailableReplicas != *d.Spec.Replicas ||
		d.Status.UpdatedReplicas != *d.Spec.Replicas || d.Status.Replicas != *d.Spec.Replicas {
		return fmt.Errorf("Deployment %s status %+v", name, d.Status)
	}
	return nil
}

func daemonSetRolledOut(ds *appsv1.DaemonSet, nodes int) bool {
	s := ds.Status
	return s.ObservedGeneration >= ds.Generation && int(s.DesiredNumberScheduled) == nodes &&
		s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberReady == s.DesiredNumberScheduled &&
		s.NumberAvailable == s.DesiredNumberScheduled
}

// podReport lists lbpath's pods with their state and the last log lines of
// each, for a failure message.
func (r *realNode) podReport(ctx context.Context) string {
	pods, err := r.c.Client.CoreV1().Pods(rnNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "pod %s on %s: phase %s\n", p.Name, p.Spec.NodeName, p.Status.Phase)
		for _, cs := range p.Status.ContainerStatuses {
			fmt.Fprintf(&b, "  %s ready=%v restarts=%d state=%+v last=%+v\n", cs.Name, cs.Ready, cs.RestartCount, cs.State, cs.LastTerminationState)
		}
		tail := int64(40)
		logs, err := r.c.Client.CoreV1().Pods(rnNamespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(ctx)
		fmt.Fprintf(&b, "  log (err %v):\n%s\n", err, logs)
	}
	return b.String()
}

// lbpathPrograms counts the BPF programs of lbpath's object loaded in the
// kernel, by name. A link holds its program, so no program also means no
// link.
func lbpathPrograms(t *testing.T) int {
	t.Helper()
	n := 0
	for _, name := range agentProgramNames(t) {
		n += countPrograms(t, name)
	}
	return n
}

func agentProgramsEach(t *testing.T) int { return len(agentProgramNames(t)) }

// agentProgramNames are the names the kernel reports for lbpath's programs
// (it keeps 15 characters).
func agentProgramNames(t *testing.T) []string {
	t.Helper()
	spec, err := bpf.LoadLbpath()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for name := range spec.Programs {
		if len(name) > 15 {
			name = name[:15]
		}
		out = append(out, name)
	}
	return out
}

// poll retries fn every 200 ms until it returns nil or timeout passes.
func poll(ctx context.Context, timeout time.Duration, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := fn()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// collectorAddr is the collector pod's Prometheus exporter, reachable from
// the host through the testbed's pod routes.
func (r *realNode) collectorAddr(ctx context.Context) string {
	r.t.Helper()
	pods, err := r.c.Client.CoreV1().Pods(rnNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=collector"})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Status.PodIP == "" {
		r.t.Fatalf("collector pod: %v %+v", err, pods)
	}
	return netip.AddrPortFrom(netip.MustParseAddr(pods.Items[0].Status.PodIP), 9464).String()
}

// startPrometheus runs the real Prometheus with lbpath's alert rules,
// scraping the chart's collector.
func (r *realNode) startPrometheus() {
	t := r.t
	ctx := context.Background()
	bin, err := prometheus.EnsureBinary(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.prom, err = prometheus.Start(ctx, bin, prometheus.Options{
		RuleFiles:     []string{filepath.Join("..", "deploy", "rules", "lbpath-rules.yaml")},
		ScrapeTargets: []string{r.collectorAddr(ctx)},
		// As the chart's ServiceMonitor does (protobuf first): the
		// agents' latency histograms are exponential by default.
		ScrapeNativeHistograms: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.prom.Stop)
}

// nodeRules is every node namespace's iptables and nftables rules without
// counters, to compare before the install and after the uninstall.
func (r *realNode) nodeRules() map[string]string {
	r.t.Helper()
	out := map[string]string{}
	for _, n := range r.c.TB.Nodes {
		b, err := exec.Command("nsenter", "--net="+n.Netns, "nft", "list", "ruleset").Output()
		if err != nil {
			r.t.Fatalf("rules of %s: %v", n.Name, err)
		}
		out[n.Name] = sortedLines(stripCounters(string(b)))
	}
	return out
}

// sortedLines sorts the lines: kube-proxy rewrites its chains after every
// Service change and may list the same rules in another order.
func sortedLines(s string) string {
	lines := strings.Split(s, "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// stripCounters removes packet/byte counters, which move with any traffic.
func stripCounters(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, "counter packets "); i >= 0 {
			f := strings.Fields(line[i:])
			if len(f) >= 5 {
				line = line[:i] + "counter " + strings.Join(f[5:], " ")
			}
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

// agentProcesses lists the PIDs of lbpath-agent and lbpath-collector
// processes on the machine (all testbed nodes share its process table).
func lbpathProcesses() map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil {
			continue
		}
		if c := strings.TrimSpace(string(comm)); c == "lbpath-agent" || c == "lbpath-collector" {
			out[pid] = c
		}
	}
	return out
}
