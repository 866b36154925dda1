package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbpath/lbpath/agent/health"
	"github.com/lbpath/lbpath/exporter"
)

// TestConfigErrorsExit2NamingTheFlag: TLS and health-endpoint mistakes
// stop the agent at startup with status 2 and the flag's name, before it
// loads anything or binds a port.
func TestConfigErrorsExit2NamingTheFlag(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--health-addr", "9465"}, "health-addr"},
		{[]string{"--health-addr", "127.0.0.1:99999"}, "health-addr"},
		{[]string{"--health-addr", "node1.example:9465"}, "health-addr"},
		{[]string{"--health-addr", "127.0.0.1:0"}, "health-addr"},
		{[]string{"--otlp-endpoint", "127.0.0.1:4317", "--otlp-cert", ca}, "otlp-cert"},
		{[]string{"--otlp-endpoint", "127.0.0.1:4317", "--otlp-key", ca}, "otlp-key"},
		{[]string{"--otlp-endpoint", "127.0.0.1:4317", "--otlp-ca", filepath.Join(dir, "absent.pem")}, "otlp-ca"},
		{[]string{"--otlp-endpoint", "127.0.0.1:4317", "--otlp-ca", dir}, "otlp-ca"}, // a directory cannot be read
		{[]string{"--otlp-endpoint", "127.0.0.1:4317", "--otlp-ca", ca}, "otlp-ca"},  // not PEM
		{[]string{"--otlp-endpoint", "127.0.0.1:4317", "--otlp-insecure", "--otlp-ca", ca}, "otlp-insecure"},
		{[]string{"--otlp-insecure", "--otlp-ca", ca}, "otlp-insecure"}, // checked even without an endpoint
	} {
		var out, errb bytes.Buffer
		code := run(append(tc.args, "--node", "n1"), &out, &errb)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", tc.args, code, errb.String())
			continue
		}
		if !strings.Contains(errb.String(), tc.flag+":") {
			t.Errorf("%v: message does not name %s: %q", tc.args, tc.flag, errb.String())
		}
	}
}

// TestHealthAddrDefaultsToLoopback: the default binds loopback only, so
// the counters are not on the node's network unless someone chooses so.
func TestHealthAddrDefaultsToLoopback(t *testing.T) {
	// run prints its flags' defaults on -h: read the default from there
	// rather than restating it here.
	var errb bytes.Buffer
	if code := run([]string{"-h"}, io.Discard, &errb); code != 0 {
		t.Fatalf("-h exit %d", code)
	}
	usage := errb.String()
	i := strings.Index(usage, "-health-addr")
	if i < 0 {
		t.Fatalf("no --health-addr flag in usage:\n%s", usage)
	}
	const want = `(default "127.0.0.1:9465")`
	entry := usage[i:]
	if j := strings.Index(entry[1:], "\n  -"); j >= 0 {
		entry = entry[:j+1]
	}
	if !strings.Contains(entry, want) {
		t.Fatalf("--health-addr usage %q lacks %s", entry, want)
	}
	lo, err := health.CheckAddr("127.0.0.1:9465")
	if err != nil || !lo {
		t.Errorf("default address: loopback %v err %v", lo, err)
	}
}

// TestProbesBeforeTheAgentExists: while the eBPF programs load, the agent
// is alive but not ready; once stopping, it is not ready either.
func TestProbesBeforeTheAgentExists(t *testing.T) {
	h := newAgentHealth()
	if err := h.live(); err != nil {
		t.Errorf("live while starting: %v", err)
	}
	if err := h.ready(); err == nil || !strings.Contains(err.Error(), "not attached") {
		t.Errorf("ready while starting: %v", err)
	}
	fams := h.metrics()
	if len(fams) != 1 || fams[0].Name != "lbpath_agent_ready" || fams[0].Samples[0].Value != 0 {
		t.Errorf("metrics while starting: %+v", fams)
	}
	h.stopping.Store(true)
	if err := h.ready(); err == nil || err.Error() != "stopping" {
		t.Errorf("ready while stopping: %v", err)
	}
}

// TestDropFamilyMatchesOTLPNames: the loss counters keep the OTLP
// attribute values, under their Prometheus-translated names, in a stable
// order.
func TestDropFamilyMatchesOTLPNames(t *testing.T) {
	f := dropFamily([]exporter.Drop{
		{Stage: "ringbuf", Reason: "on_state", Count: 3},
		{Stage: "export", Reason: "queue_full", Count: 7},
		{Stage: "ringbuf", Reason: "on_error", Count: 1},
	})
	var b bytes.Buffer
	if err := health.WriteText(&b, []health.Family{f}); err != nil {
		t.Fatal(err)
	}
	want := `# HELP lbpath_agent_dropped_total Everything the agent lost, by stage and reason
# TYPE lbpath_agent_dropped_total counter
lbpath_agent_dropped_total{lbpath_stage="export",lbpath_reason="queue_full"} 7
lbpath_agent_dropped_total{lbpath_stage="ringbuf",lbpath_reason="on_error"} 1
lbpath_agent_dropped_total{lbpath_stage="ringbuf",lbpath_reason="on_state"} 3
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// TestExportFamilies: the exporter's counters appear under the Prometheus
// names of their OTLP self-metrics (lbpath.agent.exported,
// lbpath.agent.spans_sampled_out) with the exporter's values.
func TestExportFamilies(t *testing.T) {
	var st exporter.Stats
	st.Connections.Add(40)
	st.SampledOut.Add(37)
	var b bytes.Buffer
	if err := health.WriteText(&b, exportFamilies(&st)); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"lbpath_agent_exported_total 40\n", "lbpath_agent_spans_sampled_out_total 37\n",
		"# TYPE lbpath_agent_spans_sampled_out_total counter\n"} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("no %q in\n%s", line, b.String())
		}
	}
}
