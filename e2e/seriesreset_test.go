package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/testbed/prometheus"
)

// TestSeriesExpiryReadByPrometheus: the agent's exporter (cumulative,
// real OTLP/HTTP) pushes into the real Prometheus' OTLP receiver while 100
// pods serve once and are deleted and 5 keep serving. Once the deleted
// pods' series are stale past --series-expiry and outnumber the live ones,
// the per-pod series restart (a generation reset). In Prometheus: the live
// pods' samples show exactly the resets the exporter counted, and the
// total read across them (the last value before each drop plus the last
// value) is exactly the number of connections each pod made — nothing
// lost or counted twice at a reset; the deleted pods get no sample after
// the reset.
func TestSeriesExpiryReadByPrometheus(t *testing.T) {
	ctx := context.Background()
	bin, err := prometheus.EnsureBinary(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	prom, err := prometheus.Start(ctx, bin, prometheus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prom.Stop)
	base := strings.TrimSuffix(prom.OTLPMetricsURL(), "/v1/metrics")
	e, err := exporter.New(ctx, exporter.Config{Endpoint: base, Protocol: "http/protobuf", Insecure: true,
		Node: "node1", NoTraces: true, MetricInterval: 200 * time.Millisecond, SeriesExpiry: time.Second}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(ctx)
	svc := &kube.Service{Namespace: "default", Name: "web"}
	conn := func(name string) {
		e.Path(&path.Path{Conn: flow.Connection{Node: "node1", Role: flow.RoleServer, Outcome: flow.OutcomeOK,
			Start: time.Now(), End: time.Now(), SRTTMicros: 100},
			Service: svc, Pod: &kube.Pod{Namespace: "default", Name: name, Node: "node1"}, PodNode: "node1"})
	}
	for i := range 100 {
		conn(fmt.Sprintf("dead-%d", i))
	}
	made := map[string]float64{}
	var resetAt time.Time
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && (resetAt.IsZero() || time.Since(resetAt) < 1500*time.Millisecond) {
		for i := range 5 {
			name := fmt.Sprintf("live-%d", i)
			conn(name)
			made[name]++
		}
		if resetAt.IsZero() && e.SeriesResets() > 0 {
			resetAt = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	if resetAt.IsZero() {
		t.Fatal("no series reset within 20 s")
	}
	if err := e.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	resets := e.SeriesResets()
	if f := e.Stats.MetricsFailed.Load(); f != 0 {
		t.Fatalf("%d metric exports failed", f)
	}

	samples := func(pod string) []model.SamplePair {
		t.Helper()
		v, _, _, err := prom.API().Query(ctx, fmt.Sprintf(`lbpath_connections_total{k8s_pod_name=%q}[5m]`, pod), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		m, ok := v.(model.Matrix)
		if !ok || len(m) != 1 {
			t.Fatalf("%s: want one series, got %v", pod, v)
		}
		return m[0].Values
	}
	for name, want := range made {
		var total, prev float64
		var drops uint64
		for _, s := range samples(name) {
			if v := float64(s.Value); v < prev {
				total += prev
				drops++
			}
			prev = float64(s.Value)
		}
		total += prev
		if drops != resets || total != want {
			t.Errorf("%s in Prometheus: %d resets, total %v; exporter: %d resets, %v connections", name, drops, total, resets, want)
		}
	}
	for _, name := range []string{"dead-0", "dead-99"} {
		ss := samples(name)
		last := ss[len(ss)-1]
		if last.Timestamp.Time().After(resetAt) || last.Value != 1 {
			t.Errorf("%s: last sample %v at %v, want 1 before the reset at %v", name, last.Value, last.Timestamp.Time(), resetAt)
		}
	}
	t.Logf("%d resets; first seen %v; live pods made %v connections each", resets, resetAt.Format(time.StampMilli), made["live-0"])
}
