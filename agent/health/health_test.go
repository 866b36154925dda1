package health

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// switchable is a probe a test flips between healthy and a reason.
type switchable struct{ reason atomic.Pointer[string] }

func (s *switchable) set(reason string) { s.reason.Store(&reason) }
func (s *switchable) probe() error {
	if r := s.reason.Load(); r != nil && *r != "" {
		return errors.New(*r)
	}
	return nil
}

func get(t *testing.T, h http.Handler, path string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String(), rec.Header()
}

// parse reads text with Prometheus's own strict parser.
func parse(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Prometheus parser rejects the output: %v\n%s", err, text)
	}
	return fams
}

// TestProbesFollowTheirCondition: /readyz answers 503 with the reason
// until the condition holds, then 200, and back to 503 when it stops
// holding; /healthz is independent of readiness.
func TestProbesFollowTheirCondition(t *testing.T) {
	var live, ready switchable
	ready.set("starting: eBPF programs not attached yet")
	h := Handler(live.probe, ready.probe, func() []Family { return nil })

	code, body, hdr := get(t, h, "/readyz")
	if code != http.StatusServiceUnavailable || strings.TrimSpace(body) != "starting: eBPF programs not attached yet" {
		t.Errorf("readyz before ready: %d %q", code, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("readyz content type %q", ct)
	}
	if code, body, _ := get(t, h, "/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("healthz while starting: %d %q", code, body)
	}
	ready.set("kubernetes informers not synced yet")
	if code, body, _ := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "informers") {
		t.Errorf("readyz while syncing: %d %q", code, body)
	}
	ready.set("")
	if code, body, _ := get(t, h, "/readyz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("readyz once ready: %d %q", code, body)
	}
	ready.set("stopping")
	if code, _, _ := get(t, h, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz while stopping: %d", code)
	}
	live.set("main loop stalled: last ran 12s ago")
	if code, body, _ := get(t, h, "/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "stalled") {
		t.Errorf("healthz when stalled: %d %q", code, body)
	}
	if code, _, _ := get(t, h, "/nothing"); code != http.StatusNotFound {
		t.Errorf("unknown path: %d", code)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/readyz", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz: %d", rec.Code)
	}
}

// TestMetricsTextParses: /metrics is accepted by Prometheus's parser and
// carries exactly the values given, label values with quotes, backslashes
// and newlines included; each scrape reads the counters afresh.
func TestMetricsTextParses(t *testing.T) {
	var n atomic.Uint64
	n.Store(1_000_000)
	fams := func() []Family {
		return []Family{
			{Name: "lbpath_agent_dropped_total", Help: "Everything the agent lost\nby stage", Type: "counter", Samples: []Sample{
				{Labels: []Label{{"lbpath_stage", "ringbuf"}, {"lbpath_reason", "on_state"}}, Value: float64(n.Load())},
				{Labels: []Label{{"lbpath_stage", "odd"}, {"lbpath_reason", "a \"quoted\" \\ back\nslash"}}, Value: 2},
			}},
			{Name: "lbpath_agent_ready", Help: "ready", Type: "gauge", Samples: []Sample{{Value: 1}}},
			{Name: "lbpath_agent_program_attached", Help: "none attached", Type: "gauge"},
		}
	}
	h := Handler(func() error { return nil }, func() error { return nil }, fams)
	code, body, hdr := get(t, h, "/metrics")
	if code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("metrics: %d %q", code, hdr.Get("Content-Type"))
	}
	if !strings.Contains(body, `lbpath_stage="ringbuf",lbpath_reason="on_state"} 1000000`+"\n") {
		t.Errorf("counter not written as an exact integer:\n%s", body)
	}
	got := parse(t, body)
	d := got["lbpath_agent_dropped_total"]
	if d == nil || d.GetType() != dto.MetricType_COUNTER || len(d.Metric) != 2 {
		t.Fatalf("dropped family: %v", d)
	}
	if v := d.Metric[0].GetCounter().GetValue(); v != 1e6 {
		t.Errorf("ringbuf drops = %v, want 1000000", v)
	}
	if l := d.Metric[1].Label; len(l) != 2 || l[1].GetValue() != "a \"quoted\" \\ back\nslash" {
		t.Errorf("escaped label did not survive: %v", l)
	}
	if g := got["lbpath_agent_ready"]; g == nil || g.GetType() != dto.MetricType_GAUGE || g.Metric[0].GetGauge().GetValue() != 1 {
		t.Errorf("ready gauge: %v", g)
	}
	n.Add(5)
	_, body, _ = get(t, h, "/metrics")
	if v := parse(t, body)["lbpath_agent_dropped_total"].Metric[0].GetCounter().GetValue(); v != 1_000_005 {
		t.Errorf("second scrape = %v, want 1000005 (counters read at scrape time)", v)
	}
}

// TestWriteTextRefusesWhatAScraperWouldReject: invalid names, types and
// duplicates are errors (and /metrics a 500), never malformed text.
func TestWriteTextRefusesWhatAScraperWouldReject(t *testing.T) {
	for _, tc := range []struct {
		name string
		fams []Family
	}{
		{"metric name with a dot", []Family{{Name: "lbpath.agent.dropped", Type: "counter"}}},
		{"metric name starting with a digit", []Family{{Name: "1lbpath", Type: "counter"}}},
		{"label name with a colon", []Family{{Name: "x", Type: "gauge", Samples: []Sample{{Labels: []Label{{"a:b", "v"}}}}}}},
		{"reserved label name", []Family{{Name: "x", Type: "gauge", Samples: []Sample{{Labels: []Label{{"__name__", "v"}}}}}}},
		{"histogram type", []Family{{Name: "x", Type: "histogram"}}},
		{"family twice", []Family{{Name: "x", Type: "gauge"}, {Name: "x", Type: "gauge"}}},
	} {
		if err := WriteText(io.Discard, tc.fams); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
		h := Handler(func() error { return nil }, func() error { return nil }, func() []Family { return tc.fams })
		if code, _, _ := get(t, h, "/metrics"); code != http.StatusInternalServerError {
			t.Errorf("%s: /metrics answered %d, want 500", tc.name, code)
		}
	}
}

func TestCheckAddr(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		loopback bool
		ok       bool
	}{
		{"127.0.0.1:9465", true, true},
		{"[::1]:9465", true, true},
		{"localhost:9465", true, true},
		{"0.0.0.0:9465", false, true},
		{":9465", false, true},
		{"10.1.2.3:9465", false, true},
		{"127.0.0.1", false, false},
		{"127.0.0.1:0", false, false},
		{"127.0.0.1:65536", false, false},
		{"127.0.0.1:http", false, false},
		{"node1.example:9465", false, false},
		{"[::1:9465", false, false},
	} {
		lo, err := CheckAddr(tc.addr)
		if (err == nil) != tc.ok || (tc.ok && lo != tc.loopback) {
			t.Errorf("%q: loopback %v err %v; want loopback %v ok %v", tc.addr, lo, err, tc.loopback, tc.ok)
		}
	}
}

// TestListenServesOverTCP: the endpoint answers over a real socket and
// stops answering after Shutdown.
func TestListenServesOverTCP(t *testing.T) {
	s, err := Listen("127.0.0.1:0", Handler(func() error { return nil }, func() error { return errors.New("not yet") },
		func() []Family { return nil }), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || strings.TrimSpace(string(body)) != "not yet" {
		t.Errorf("readyz over TCP: %d %q", resp.StatusCode, body)
	}
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + s.Addr() + "/healthz"); err == nil {
		t.Error("endpoint still answers after Shutdown")
	}
}
