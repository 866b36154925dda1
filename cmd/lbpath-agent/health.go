package main

import (
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/lbpath/lbpath/agent"
	"github.com/lbpath/lbpath/agent/health"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
)

// stallAfter is how long the main loop (a 100 ms ticker) may go without
// running before /healthz fails: generous, so a busy node's scheduling
// hiccup does not get the agent restarted, short enough that a stuck one
// does within a probe period or two.
const stallAfter = 10 * time.Second

// agentHealth answers the health endpoint from the running agent. The
// server starts before the agent exists (so a bad port fails fast and the
// probes answer during the eBPF load); until then cur is nil.
type agentHealth struct {
	cur      atomic.Pointer[agent.Agent]
	stopping atomic.Bool
	now      func() time.Time
}

func newAgentHealth() *agentHealth { return &agentHealth{now: time.Now} }

// live fails only when the main loop stopped running: a liveness failure
// restarts the agent, which helps only a stuck process.
func (h *agentHealth) live() error {
	a := h.cur.Load()
	if a == nil {
		return nil // starting: loading eBPF programs is not being stuck
	}
	last := a.LastTick()
	if last.IsZero() {
		return nil
	}
	if age := h.now().Sub(last); age > stallAfter {
		return fmt.Errorf("main loop stalled: last ran %v ago", age.Round(time.Millisecond))
	}
	return nil
}

// ready holds once the programs are attached, the main loop runs and,
// with Kubernetes naming, the informers have synced: before that, records
// would go out unnamed.
func (h *agentHealth) ready() error {
	if h.stopping.Load() {
		return errors.New("stopping")
	}
	a := h.cur.Load()
	if a == nil {
		return errors.New("starting: eBPF programs not attached yet")
	}
	if a.LastTick().IsZero() {
		return errors.New("starting: main loop not running yet")
	}
	if w := a.Watcher(); w != nil && !w.Synced() {
		return errors.New("kubernetes informers not synced yet")
	}
	return nil
}

// metrics is the agent's self-counters under the names the OTLP
// self-metrics get in Prometheus (lbpath.agent.dropped →
// lbpath_agent_dropped_total), so a dashboard reads either source alike.
func (h *agentHealth) metrics() []health.Family {
	ready := 0.0
	if h.ready() == nil {
		ready = 1
	}
	fams := []health.Family{{Name: "lbpath_agent_ready", Type: "gauge",
		Help:    "1 when /readyz answers 200: programs attached, main loop running, informers synced",
		Samples: []health.Sample{{Value: ready}}}}
	a := h.cur.Load()
	if a == nil {
		return fams
	}
	drops := a.Drops()
	if exp := a.Exporter(); exp != nil {
		drops = append(exp.Drops(), drops...)
		fams = append(fams, seriesFamilies(exp)...)
	}
	fams = append(fams, dropFamily(drops))
	st := a.Stats()
	fams = append(fams, nodeConnectionsFamily(st.NodeConnections))
	fams = append(fams, health.Family{Name: "lbpath_agent_connections_total", Type: "counter",
		Help:    "Connection records the agent produced (every role), before naming and export",
		Samples: []health.Sample{{Value: float64(st.Flow.Emitted.Load())}}})
	if st.Export != nil {
		fams = append(fams, exportFamilies(st.Export)...)
	}
	progs := a.Programs()
	samples := make([]health.Sample, 0, len(progs))
	for _, p := range progs {
		samples = append(samples, health.Sample{Labels: []health.Label{{Name: "program", Value: p}}, Value: 1})
	}
	fams = append(fams, health.Family{Name: "lbpath_agent_program_attached", Type: "gauge",
		Help: "1 for each eBPF program attached (optional ones that failed to load are absent)", Samples: samples})
	return fams
}

// exportFamilies renders the exporter's own counters that are not losses
// (those are in lbpath_agent_dropped_total).
func exportFamilies(st *exporter.Stats) []health.Family {
	return []health.Family{
		{Name: "lbpath_agent_exported_total", Type: "counter",
			Help:    "Connections handed to the OTLP pipelines",
			Samples: []health.Sample{{Value: float64(st.Connections.Load())}}},
		{Name: "lbpath_agent_spans_sampled_out_total", Type: "counter",
			Help:    "Connections whose spans the sampler left out (their metrics are recorded)",
			Samples: []health.Sample{{Value: float64(st.SampledOut.Load())}}},
	}
}

// nodeConnectionsFamily renders lbpath.agent.node_connections: the node's
// own connections by class, every class always present.
func nodeConnectionsFamily(counts []path.ClassCount) health.Family {
	f := health.Family{Name: "lbpath_agent_node_connections_total", Type: "counter",
		Help: "The node's own connections, which involve no pod and no Service, by class"}
	for _, c := range counts {
		f.Samples = append(f.Samples, health.Sample{Value: float64(c.Count),
			Labels: []health.Label{{Name: "lbpath_connection_class", Value: string(c.Class)}}})
	}
	return f
}

// dropFamily renders the loss counters as lbpath_agent_dropped_total with
// the OTLP attribute names translated (lbpath.stage → lbpath_stage), in a
// stable order: map iteration would reorder the ring buffer's programs on
// every scrape.
func dropFamily(drops []exporter.Drop) health.Family {
	sort.SliceStable(drops, func(i, j int) bool {
		if drops[i].Stage != drops[j].Stage {
			return drops[i].Stage < drops[j].Stage
		}
		return drops[i].Reason < drops[j].Reason
	})
	f := health.Family{Name: "lbpath_agent_dropped_total", Type: "counter",
		Help: "Everything the agent lost, by stage and reason"}
	for _, d := range drops {
		f.Samples = append(f.Samples, health.Sample{Value: float64(d.Count),
			Labels: []health.Label{{Name: "lbpath_stage", Value: d.Stage}, {Name: "lbpath_reason", Value: d.Reason}}})
	}
	return f
}
