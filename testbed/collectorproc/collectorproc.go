// Package collectorproc builds and runs the real lbpath-collector binary as
// a separate process for end-to-end tests and the demo: agents export to it
// over OTLP, and it forwards what its processors produced to receivers the
// caller reads (an OTLP sink, Jaeger, a Prometheus scrape endpoint).
package collectorproc

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/testbed"
)

// Build compiles cmd/lbpath-collector into dir and returns the binary path.
func Build(ctx context.Context, dir string) (string, error) {
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	bin := filepath.Join(dir, "lbpath-collector")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/lbpath-collector")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build lbpath-collector: %w\n%s", err, out)
	}
	return bin, nil
}

// Options shape the pipeline.
type Options struct {
	// SinkHTTP receives traces and metrics over OTLP/HTTP (host:port), if set.
	SinkHTTP string
	// JaegerGRPC receives traces over OTLP/gRPC (host:port), if set.
	JaegerGRPC string
	// PrometheusOTLP receives metrics over OTLP/HTTP at this full URL (a
	// Prometheus server's /api/v1/otlp/v1/metrics), if set.
	PrometheusOTLP string
	// Imbalance and Regression are the processors' YAML bodies (indented by
	// four spaces); defaults suit short tests.
	Imbalance, Regression string
	// TLS, when set, makes both OTLP receivers (gRPC and HTTP) serve TLS.
	TLS *TLS
	// LBSignals, when set, is the lbsignals receiver's YAML body (indented
	// by four spaces, e.g. its kubeconfig); the receiver then feeds the
	// metrics pipeline next to OTLP.
	LBSignals string
}

// TLS is the OTLP receivers' server side of TLS, as file paths the
// collector reads at startup.
type TLS struct {
	// CertFile and KeyFile are the server's certificate chain and key.
	CertFile, KeyFile string
	// ClientCAFile, when set, makes the receivers require a client
	// certificate signed by this CA (mTLS).
	ClientCAFile string
}

// receiverTLS renders the tls: block of one OTLP receiver protocol
// (indented for the protocols' children), or "" for plaintext.
func (t *TLS) receiverTLS() string {
	if t == nil {
		return ""
	}
	s := fmt.Sprintf("        tls:\n          cert_file: %q\n          key_file: %q\n", t.CertFile, t.KeyFile)
	if t.ClientCAFile != "" {
		s += fmt.Sprintf("          client_ca_file: %q\n", t.ClientCAFile)
	}
	return s
}

// Collector is a running lbpath-collector.
type Collector struct {
	OTLPGRPC, OTLPHTTP, Prometheus string
	cmd                            *exec.Cmd
	dir                            string
}

// Start writes a configuration and runs bin with it, waiting until its OTLP
// port accepts connections.
func Start(ctx context.Context, bin string, opt Options) (*Collector, error) {
	var p [3]int
	for i := range p {
		port, err := testbed.FreePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		p[i] = port
	}
	if opt.Imbalance == "" {
		opt.Imbalance = "    window: 30s\n    bucket: 5s\n    min_connections: 10\n"
	}
	if opt.Regression == "" {
		opt.Regression = "    before: 2m\n    after: 1m\n    resolution: 5s\n    current_window: 30s\n    min_samples: 50\n    retention: 10m\n"
	}
	var exporters, traceExp, metricExp []string
	exporters = append(exporters, fmt.Sprintf("  prometheus:\n    endpoint: 127.0.0.1:%d\n", p[2]))
	metricExp = append(metricExp, "prometheus")
	if opt.SinkHTTP != "" {
		exporters = append(exporters, fmt.Sprintf("  otlp_http/sink:\n    endpoint: http://%s\n    compression: none\n", opt.SinkHTTP))
		traceExp = append(traceExp, "otlp_http/sink")
		metricExp = append(metricExp, "otlp_http/sink")
	}
	if opt.PrometheusOTLP != "" {
		exporters = append(exporters, fmt.Sprintf("  otlp_http/prometheus:\n    metrics_endpoint: %s\n    compression: none\n", opt.PrometheusOTLP))
		metricExp = append(metricExp, "otlp_http/prometheus")
	}
	if opt.JaegerGRPC != "" {
		exporters = append(exporters, fmt.Sprintf("  otlp_grpc/jaeger:\n    endpoint: %s\n    tls:\n      insecure: true\n", opt.JaegerGRPC))
		traceExp = append(traceExp, "otlp_grpc/jaeger")
	}
	if len(traceExp) == 0 {
		exporters = append(exporters, "  debug:\n    verbosity: basic\n")
		traceExp = append(traceExp, "debug")
	}
	lbsignals, metricRecv := "", "otlp"
	if opt.LBSignals != "" {
		lbsignals, metricRecv = "  lbsignals:\n"+opt.LBSignals, "otlp, lbsignals"
	}
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:%d
%s      http:
        endpoint: 127.0.0.1:%d
%s%sprocessors:
  lbimbalance:
%s  deployregression:
%s  batch:
    timeout: 200ms
exporters:
%sservice:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [%s]
    metrics:
      receivers: [%s]
      processors: [lbimbalance, deployregression, batch]
      exporters: [%s]
`, p[0], opt.TLS.receiverTLS(), p[1], opt.TLS.receiverTLS(), lbsignals, opt.Imbalance, opt.Regression, strings.Join(exporters, ""), strings.Join(traceExp, ", "), metricRecv, strings.Join(metricExp, ", "))
	dir, err := os.MkdirTemp("", "lbpath-collector-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	c := &Collector{OTLPGRPC: fmt.Sprintf("127.0.0.1:%d", p[0]), OTLPHTTP: fmt.Sprintf("127.0.0.1:%d", p[1]),
		Prometheus: fmt.Sprintf("127.0.0.1:%d", p[2]), dir: dir}
	logf, err := os.Create(filepath.Join(dir, "collector.log"))
	if err != nil {
		return nil, err
	}
	c.cmd = exec.Command(bin, "--config", path)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start lbpath-collector: %w", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", c.OTLPGRPC, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "collector.log"))
			c.Stop()
			return nil, fmt.Errorf("lbpath-collector not listening after 20s: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log returns what the collector printed.
func (c *Collector) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "collector.log"))
	return string(b)
}

// Stop ends the collector (SIGTERM, then SIGKILL) and removes its files.
func (c *Collector) Stop() {
	if c.cmd != nil && c.cmd.Process != nil {
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
	}
	os.RemoveAll(c.dir)
}
