package exporter

import (
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
)

// TestTransportOnMetrics: a UDP flow and a TCP connection of the same pod
// are separate series labelled network.transport=udp and tcp; the UDP one
// records no retransmits.
func TestTransportOnMetrics(t *testing.T) {
	sink := startSink(t)
	e := seriesExporter(t, sink, nil)
	pod := podN(1)
	tcp := serverPath(pod, time.Second)
	udp := serverPath(pod, time.Second)
	udp.Conn.Transport = flow.TransportUDP
	udp.Conn.SRTTMicros, udp.Conn.Retransmits = 0, 0
	udp.Conn.BytesToServer, udp.Conn.BytesToClient = 40, 120
	e.Path(tcp)
	e.Path(udp)
	e.Path(udp)
	pts := collect(t, e, sink)
	got := map[string]float64{}
	for _, p := range byMetric(pts, MetricConnections) {
		got[p.Attrs["network.transport"].(string)] += p.Value
	}
	if got["tcp"] != 1 || got["udp"] != 2 || len(got) != 2 {
		t.Errorf("lbpath.connections by transport %v, want tcp 1, udp 2", got)
	}
	bytes := 0.0
	for _, p := range byMetric(pts, MetricBytes) {
		if p.Attrs["network.transport"] == "udp" {
			bytes += p.Value
		}
	}
	if bytes != 2*160 {
		t.Errorf("UDP bytes %v, want 320", bytes)
	}
	for _, p := range byMetric(pts, MetricRetransmits) {
		if p.Attrs["network.transport"] != "tcp" {
			t.Errorf("retransmits recorded for %v", p.Attrs)
		}
	}
}
