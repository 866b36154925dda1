// Package prometheus builds and runs a real Prometheus server (the version
// lbpath's go.mod pins) for end-to-end tests and the demo: metrics go in
// over Prometheus' native OTLP receiver, exactly as a cluster that points
// the lbpath-collector's otlphttp exporter at Prometheus would, and come
// back out through PromQL. What this proves that the query checks in
// dashboards/querycheck cannot is the real ingestion path: OTLP name and
// label translation, resource-attribute promotion, rule evaluation.
//
// Resource attributes: the default promotion list is k8s.cluster.name and
// service.name, NOT k8s.node.name. lbpath's agents put the reporting node
// in the resource's k8s.node.name while their data points carry the pod's
// node under the same key; promoting the resource attribute would make both
// the label k8s_node_name and silently mix up "which agent reported it" with
// "where the pod runs". Pass Options.PromoteResourceAttributes to change it.
package prometheus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/lbpath/lbpath/internal/toolcache"
	"github.com/lbpath/lbpath/testbed"
)

// Version is the Prometheus release built; it must match the
// github.com/prometheus/prometheus requirement in go.mod (a test checks).
const Version = "v0.316.0"

// OTLPMetricsPath is where Prometheus' OTLP receiver accepts metrics.
const OTLPMetricsPath = "/api/v1/otlp/v1/metrics"

// DefaultPromoteResourceAttributes are the resource attributes turned into
// labels unless Options say otherwise (see the package doc for why
// k8s.node.name is not one of them).
var DefaultPromoteResourceAttributes = []string{"k8s.cluster.name", "service.name"}

// BinaryPath is where EnsureBinary caches the server.
func BinaryPath() string {
	return filepath.Join(toolcache.Dir(), "prometheus-"+Version, "prometheus")
}

// moduleRoot is the lbpath repository: the server is built inside the main
// module so that its version is go.mod's (tools.go keeps it pinned there).
func moduleRoot() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "..", "..")
}

// EnsureBinary returns the cached server binary, building it first if it is
// missing. Builds are serialized by a lock file, so parallel test binaries
// (go test ./... runs packages concurrently) build it once.
func EnsureBinary(ctx context.Context, log *slog.Logger) (string, error) {
	bin := BinaryPath()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	dir := filepath.Dir(bin)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create prometheus cache dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", fmt.Errorf("open prometheus build lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock prometheus build: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // another process built it while we waited
	}
	if log != nil {
		log.Info("building Prometheus server " + Version + " (cold: ~10 min on 2 cores; cached in " + dir + ")")
	}
	start := time.Now()
	tmp := bin + ".tmp"
	// No -trimpath: built in the main module, it then shares the build cache
	// of the Prometheus packages the tests compile anyway (a cold CI run
	// compiles them once, not twice).
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, "github.com/prometheus/prometheus/cmd/prometheus")
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("build prometheus %s: %w\n%s", Version, err, out)
	}
	// Rename last: a killed build must not leave a binary that looks cached.
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("install prometheus binary: %w", err)
	}
	if log != nil {
		log.Info("built Prometheus server", "took", time.Since(start).Round(time.Second).String(), "path", bin)
	}
	return bin, nil
}

// Options configure a server. The zero value is a server for short tests.
type Options struct {
	// PromoteResourceAttributes are the OTLP resource attributes turned
	// into labels; nil means DefaultPromoteResourceAttributes, an empty
	// non-nil slice promotes none.
	PromoteResourceAttributes []string
	// RuleFiles are loaded as rule_files (e.g. deploy/rules/lbpath-rules.yaml).
	RuleFiles []string
	// EvaluationInterval for rules; default 1s so that tests see recording
	// rules and alerts move without waiting a minute.
	EvaluationInterval time.Duration
	// ScrapeTargets (host:port) are scraped every ScrapeInterval (default
	// 2s) under job "scrape", e.g. a collector's Prometheus exporter.
	ScrapeTargets  []string
	ScrapeInterval time.Duration
	// ScrapeNativeHistograms sets scrape_native_histograms on that job:
	// Prometheus then negotiates the protobuf format and stores a
	// collector's exponential histograms as native histograms. Without it
	// (Prometheus' default) the text format carries an exponential
	// histogram as a classic one with only the +Inf bucket.
	ScrapeNativeHistograms bool
	// OutOfOrderTimeWindow lets pushes carry samples older than the newest
	// of their series (replays, backfills); 0 keeps Prometheus' default.
	OutOfOrderTimeWindow time.Duration
	// ExtraFlags are appended to the command line.
	ExtraFlags []string
	// Log receives the start-up line; nil is quiet.
	Log *slog.Logger
}

// Server is a running Prometheus bound to 127.0.0.1.
type Server struct {
	addr string
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	api  promv1.API
}

func durationOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// yamlList renders strings as a YAML flow list, quoted: attribute names and
// paths need no escaping beyond that.
func yamlList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func (o Options) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "global:\n  scrape_interval: %s\n  evaluation_interval: %s\n",
		model.Duration(durationOr(o.ScrapeInterval, 2*time.Second)), model.Duration(durationOr(o.EvaluationInterval, time.Second)))
	promote := o.PromoteResourceAttributes
	if promote == nil {
		promote = DefaultPromoteResourceAttributes
	}
	if len(promote) > 0 {
		fmt.Fprintf(&b, "otlp:\n  promote_resource_attributes: %s\n", yamlList(promote))
	}
	if o.OutOfOrderTimeWindow > 0 {
		fmt.Fprintf(&b, "storage:\n  tsdb:\n    out_of_order_time_window: %s\n", model.Duration(o.OutOfOrderTimeWindow))
	}
	if len(o.RuleFiles) > 0 {
		fmt.Fprintf(&b, "rule_files: %s\n", yamlList(o.RuleFiles))
	}
	if len(o.ScrapeTargets) > 0 {
		fmt.Fprintf(&b, "scrape_configs:\n  - job_name: scrape\n    static_configs:\n      - targets: %s\n", yamlList(o.ScrapeTargets))
		if o.ScrapeNativeHistograms {
			b.WriteString("    scrape_native_histograms: true\n")
		}
	}
	return b.String()
}

// Start runs bin on a free loopback port with a fresh TSDB in a temporary
// directory, the OTLP receiver (with delta-to-cumulative conversion, without
// which delta pushes are rejected whole) and the remote-write receiver, and
// waits until it is ready. The process dies with the caller (Pdeathsig), so
// a test killed by its timeout leaves no server behind; Stop removes the TSDB.
func Start(ctx context.Context, bin string, opts Options) (*Server, error) {
	rules := make([]string, len(opts.RuleFiles))
	for i, f := range opts.RuleFiles {
		abs, err := filepath.Abs(f)
		if err != nil {
			return nil, fmt.Errorf("rule file %s: %w", f, err)
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("rule file: %w", err)
		}
		rules[i] = abs
	}
	opts.RuleFiles = rules
	port, err := testbed.FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "lbpath-prometheus-")
	if err != nil {
		return nil, fmt.Errorf("create prometheus dir: %w", err)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(opts.config()), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("write prometheus config: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("create prometheus log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	s := &Server{addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, done: make(chan struct{})}
	args := []string{
		"--config.file=" + cfg,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + s.addr,
		"--web.enable-otlp-receiver",
		"--web.enable-remote-write-receiver",
		"--enable-feature=otlp-deltatocumulative",
		"--log.level=warn",
	}
	args = append(args, opts.ExtraFlags...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	go func() {
		s.cmd.Wait()
		close(s.done)
	}()
	client, err := api.NewClient(api.Config{Address: s.URL()})
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("prometheus API client: %w", err)
	}
	s.api = promv1.NewAPI(client)
	if err := s.waitReady(ctx, 60*time.Second); err != nil {
		logText := s.Log()
		s.Stop()
		return nil, fmt.Errorf("%w\n%s", err, logText)
	}
	if opts.Log != nil {
		opts.Log.Info("Prometheus ready", "url", s.URL(), "otlp", s.OTLPMetricsURL())
	}
	return s, nil
}

func (s *Server) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		select {
		case <-s.done:
			return fmt.Errorf("prometheus exited during start-up (%v)", s.cmd.ProcessState)
		default:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/-/ready", nil)
		if err != nil {
			return fmt.Errorf("prometheus readiness request: %w", err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		last = err
		if ctx.Err() != nil {
			return fmt.Errorf("wait for prometheus: %w", ctx.Err())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("prometheus not ready after %s: %w", timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// URL is the server's base URL, e.g. http://127.0.0.1:41234.
func (s *Server) URL() string { return "http://" + s.addr }

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// OTLPMetricsURL is the full URL of the OTLP/HTTP metrics receiver, for
// otlpmetrichttp.WithEndpointURL or a collector's otlphttp exporter
// (metrics_endpoint).
func (s *Server) OTLPMetricsURL() string { return s.URL() + OTLPMetricsPath }

// API is the Prometheus HTTP API client, for queries Query does not cover
// (ranges, rules, alerts, series).
func (s *Server) API() promv1.API { return s.api }

// Log is what the server wrote to stdout/stderr so far (warnings and
// errors: it runs at --log.level=warn), for test failure messages.
func (s *Server) Log() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "prometheus.log"))
	if err != nil {
		return fmt.Sprintf("(prometheus log unreadable: %v)", err)
	}
	return string(b)
}

// Stop kills the server and removes its TSDB. It is safe to call twice.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		select {
		case <-s.done:
		default:
			s.cmd.Process.Kill()
			<-s.done
		}
	}
	os.RemoveAll(s.dir)
}

// ErrNotVector is returned by Query for range (matrix) results.
var ErrNotVector = errors.New("query result is not an instant vector or scalar")

// Query evaluates expr as an instant query at t and returns its samples; a
// scalar result comes back as one sample with no labels. Warnings from the
// server are returned as an error only when there are no samples, since
// they then usually explain the emptiness.
func (s *Server) Query(ctx context.Context, expr string, t time.Time) (model.Vector, error) {
	v, warnings, _, err := s.api.Query(ctx, expr, t)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", expr, err)
	}
	switch r := v.(type) {
	case model.Vector:
		if len(r) == 0 && len(warnings) > 0 {
			return nil, fmt.Errorf("query %q: empty, with warnings: %s", expr, strings.Join(warnings, "; "))
		}
		return r, nil
	case *model.Scalar:
		return model.Vector{{Metric: model.Metric{}, Value: r.Value, Timestamp: r.Timestamp}}, nil
	default:
		return nil, fmt.Errorf("query %q returned %s: %w", expr, v.Type(), ErrNotVector)
	}
}
