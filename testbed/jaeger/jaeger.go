// Package jaeger builds and runs a real Jaeger (v1.76, in-memory storage)
// for the trace e2e test: traces go in over OTLP and are read back from
// Jaeger's query API, so "spans from two nodes meet in one trace" is checked
// in the trace backend SREs actually use.
package jaeger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/internal/toolcache"
	"github.com/lbpath/lbpath/testbed"
)

// Version is the Jaeger release the tools module pins.
const Version = "v1.76.0"

// BinaryPath is where the binary is cached ($LBPATH_CACHE or ~/.cache/lbpath).
func BinaryPath() string {
	return filepath.Join(toolcache.Dir(), "jaeger-"+Version, "jaeger")
}

// EnsureBinary builds Jaeger from the Go module proxy when the cached binary
// is missing (cold: about 4 minutes on 2 cores).
func EnsureBinary(ctx context.Context, log *slog.Logger) (string, error) {
	bin := BinaryPath()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	_, self, _, _ := runtime.Caller(0)
	module := filepath.Join(filepath.Dir(self), "..", "jaegerbin")
	if log != nil {
		log.Info("building Jaeger " + Version + " from the Go module proxy (cold: ~4 min)")
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/jaegertracing/jaeger/cmd/jaeger")
	cmd.Dir = module
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build jaeger: %w\n%s", err, out)
	}
	return bin, nil
}

// Jaeger is a running Jaeger.
type Jaeger struct {
	OTLPGRPC, OTLPHTTP, Query string // host:port each, on 127.0.0.1
	cmd                       *exec.Cmd
	dir                       string
}

const config = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:%d
    grpc:
      endpoint: 127.0.0.1:%d
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:%d
      http:
        endpoint: 127.0.0.1:%d
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

// Start runs bin with in-memory storage, everything bound to loopback.
func Start(ctx context.Context, bin string) (*Jaeger, error) {
	var ports [4]int
	for i := range ports {
		p, err := testbed.FreePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	dir, err := os.MkdirTemp("", "lbpath-jaeger-")
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, ports[0], ports[1], ports[2], ports[3]), 0o600); err != nil {
		return nil, err
	}
	j := &Jaeger{Query: fmt.Sprintf("127.0.0.1:%d", ports[0]), OTLPGRPC: fmt.Sprintf("127.0.0.1:%d", ports[2]),
		OTLPHTTP: fmt.Sprintf("127.0.0.1:%d", ports[3]), dir: dir}
	j.cmd = exec.Command(bin, "--config", cfg)
	j.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(dir, "jaeger.log"))
	if err != nil {
		return nil, err
	}
	j.cmd.Stdout, j.cmd.Stderr = logf, logf
	if err := j.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start jaeger: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + j.Query + "/api/services")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return j, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "jaeger.log"))
			j.Stop()
			return nil, fmt.Errorf("jaeger not ready after 30s: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop kills Jaeger and removes its files.
func (j *Jaeger) Stop() {
	if j.cmd != nil && j.cmd.Process != nil {
		j.cmd.Process.Kill()
		j.cmd.Wait()
	}
	os.RemoveAll(j.dir)
}

// Span is a span as Jaeger's query API returns it.
type Span struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	ProcessID     string `json:"processID"`
	References    []struct {
		RefType string `json:"refType"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
}

// Trace is one trace from the query API.
type Trace struct {
	TraceID   string `json:"traceID"`
	Spans     []Span `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
		Tags        []struct {
			Key   string `json:"key"`
			Value any    `json:"value"`
		} `json:"tags"`
	} `json:"processes"`
}

// Trace fetches one trace by ID; ErrNotFound when Jaeger does not have it.
func (j *Jaeger) Trace(id string) (*Trace, error) {
	resp, err := http.Get("http://" + j.Query + "/api/traces/" + id)
	if err != nil {
		return nil, fmt.Errorf("jaeger query: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return nil, ErrNotFound
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jaeger query %s: %s: %s", id, resp.Status, body)
	}
	var out struct {
		Data []Trace `json:"data"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("decode jaeger trace: %w", err)
	}
	if len(out.Data) == 0 {
		return nil, ErrNotFound
	}
	return &out.Data[0], nil
}

// ErrNotFound means Jaeger has no trace with that ID (yet).
var ErrNotFound = errors.New("trace not found")

// NodeOf returns the k8s.node.name of the process that emitted s.
func (t *Trace) NodeOf(s Span) string {
	for _, tag := range t.Processes[s.ProcessID].Tags {
		if tag.Key == "k8s.node.name" {
			if v, ok := tag.Value.(string); ok {
				return v
			}
		}
	}
	return ""
}
