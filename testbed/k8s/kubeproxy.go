package k8s

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbpath/lbpath/testbed"
)

// Ports of every kube-proxy, the upstream defaults. Each instance lives in
// its own node namespace, so they never collide.
const (
	kubeProxyHealthzPort = 10256
	kubeProxyMetricsPort = 10249
)

// configSeq numbers kube-proxy config files.
var configSeq atomic.Int64

// KubeProxyWriter is a testbed.NATWriter that runs the real kube-proxy in
// each node namespace instead of rendering rules itself. The rules then
// follow the API objects (Services, EndpointSlices, Nodes), not the state
// passed to Sync: Sync only makes sure the node's kube-proxy runs and has
// synced once.
type KubeProxyWriter struct {
	// Mode is iptables or nftables.
	Mode testbed.ProxyMode

	// ClusterCIDRs are kube-proxy's clusterCIDR, one per family; default
	// testbed.ClusterCIDR.
	ClusterCIDRs []netip.Prefix

	cp *ControlPlane

	mu    sync.Mutex
	procs map[string]*process // by node name
}

var _ testbed.NATWriter = (*KubeProxyWriter)(nil)

// NewKubeProxyWriter returns a writer whose kube-proxies talk to cp.
func NewKubeProxyWriter(cp *ControlPlane, mode testbed.ProxyMode) *KubeProxyWriter {
	return &KubeProxyWriter{Mode: mode, cp: cp, procs: map[string]*process{}}
}

// Name differs from the built-in writers' names so that Cluster.SetWriter
// flushes their rules before kube-proxy takes over.
func (w *KubeProxyWriter) Name() string { return "kube-proxy/" + string(w.Mode) }

// Sync starts the node's kube-proxy unless it runs, and waits until its
// metrics report a completed rule sync. A kube-proxy that died is an error, not
// silently restarted, so tests notice.
func (w *KubeProxyWriter) Sync(ctx context.Context, node *testbed.Node, _ testbed.ServiceState) error {
	w.mu.Lock()
	p := w.procs[node.Name]
	w.mu.Unlock()
	if p != nil {
		if p.exited() {
			return fmt.Errorf("kube-proxy on %s: %w", node.Name, p.failure())
		}
		return nil
	}
	if w.Mode != testbed.ModeIPTables && w.Mode != testbed.ModeNFTables {
		return fmt.Errorf("kube-proxy on %s: unsupported mode %q", node.Name, w.Mode)
	}
	cfgPath, err := w.writeConfig(node)
	if err != nil {
		return err
	}
	p, err = w.cp.startProcess("kube-proxy-"+node.Name, "ip", "netns", "exec", filepath.Base(node.Netns),
		w.cp.Binaries.KubeProxy, "--config="+cfgPath, "--hostname-override="+node.Name)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.procs[node.Name] = p
	w.mu.Unlock()

	start := time.Now()
	if err := w.waitSynced(ctx, node, p); err != nil {
		return err
	}
	w.cp.log.Debug("kube-proxy synced", "node", node.Name, "mode", w.Mode, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// writeConfig writes the node's KubeProxyConfiguration. Everything goes into
// the file because kube-proxy ignores most flags once --config is given.
func (w *KubeProxyWriter) writeConfig(node *testbed.Node) (string, error) {
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: %s
clusterCIDR: %q
healthzBindAddress: %q
metricsBindAddress: %q
conntrack:
  # nf_conntrack_max is read-only outside the initial namespace; 0 leaves
  # it alone instead of failing.
  maxPerCore: 0
# Endpoint changes reach the rules in ~0.2 s instead of ~1 s.
iptables:
  minSyncPeriod: 0s
nftables:
  minSyncPeriod: 0s
`, w.cp.KubeProxyKubeconfig, node.Name, w.Mode, w.clusterCIDR(),
		netip.AddrPortFrom(node.IP, kubeProxyHealthzPort).String(),
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), kubeProxyMetricsPort).String())
	// kube-proxy exits when its config file changes, so every start gets
	// a new file and none is rewritten while in use.
	path := filepath.Join(w.cp.Dir, fmt.Sprintf("kube-proxy-%s-%s-%d.yaml", node.Name, w.Mode, configSeq.Add(1)))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", fmt.Errorf("write kube-proxy config for %s: %w", node.Name, err)
	}
	return path, nil
}

// waitSynced polls kube-proxy's metrics from inside the node namespace
// until the timestamp of the last completed rule sync is set. healthz is no
// use here: it reports healthy before the first sync.
func (w *KubeProxyWriter) waitSynced(ctx context.Context, node *testbed.Node, p *process) error {
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), kubeProxyMetricsPort)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		if synced(ctx, node.Netns, target) {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("kube-proxy on %s: %w", node.Name, p.failure())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for kube-proxy on %s to sync: %w (log: %s)", node.Name, ctx.Err(), p.logPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

const syncMetric = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"

// synced fetches /metrics over a connection made inside the namespace at
// nsPath and reports whether syncMetric is positive.
func synced(ctx context.Context, nsPath string, target netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := testbed.DialFrom(ctx, nsPath, target)
	if err != nil {
		return false
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target.String()+"/metrics", nil)
	if err != nil {
		return false
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, syncMetric) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && v > 0 {
			return true
		}
	}
	return false
}

// Flush stops the node's kube-proxy and removes its rules with
// `kube-proxy --cleanup`; a stopped kube-proxy would otherwise leave them
// in place, as upstream does.
func (w *KubeProxyWriter) Flush(ctx context.Context, node *testbed.Node) error {
	w.mu.Lock()
	p := w.procs[node.Name]
	delete(w.procs, node.Name)
	w.mu.Unlock()
	if p != nil {
		w.cp.stopProcess(p, 3*time.Second)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", filepath.Base(node.Netns), w.cp.Binaries.KubeProxy, "--cleanup")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kube-proxy --cleanup on %s: %w: %s", node.Name, err, lastLines(string(out), 10))
	}
	return nil
}

// Stop stops every kube-proxy of this writer and leaves their rules, like
// stopping the DaemonSet does; the namespaces' deletion removes them.
func (w *KubeProxyWriter) Stop() {
	w.mu.Lock()
	procs := w.procs
	w.procs = map[string]*process{}
	w.mu.Unlock()
	for _, p := range procs {
		w.cp.stopProcess(p, 3*time.Second)
	}
}

// clusterCIDR is the comma-separated clusterCIDR of every family.
func (w *KubeProxyWriter) clusterCIDR() string {
	if len(w.ClusterCIDRs) == 0 {
		return testbed.ClusterCIDR.String()
	}
	return joinPrefixes(w.ClusterCIDRs)
}
