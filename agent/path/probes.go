package path

import (
	"sort"
	"sync"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// ProbeCount is how many load-balancer health probes (class
// lb_health_check) of one Service arrived at this node with one outcome.
type ProbeCount struct {
	Namespace, Service string
	Outcome            flow.Outcome
	Count              uint64
}

// alwaysReported are the outcomes reported from 0: the probe was
// answered, or nothing listened (kube-proxy down on the node).
var alwaysReported = [...]flow.Outcome{flow.OutcomeOK, flow.OutcomeRefused}

type probeKey struct {
	namespace, service string
	outcome            flow.Outcome
}

// ProbeCounts counts the load-balancer health probes that arrived at this
// node, per Service and outcome. Safe for concurrent use. Its size is
// bounded by the Services that have a healthCheckNodePort: Snapshot forgets
// the others.
type ProbeCounts struct {
	mu sync.Mutex
	n  map[probeKey]uint64
}

// Add counts p if it is a load-balancer health probe.
func (pc *ProbeCounts) Add(p *Path) {
	if p.Class != ClassLBHealthCheck || p.HealthCheck == nil {
		return
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.n == nil {
		pc.n = map[probeKey]uint64{}
	}
	pc.n[probeKey{p.HealthCheck.Namespace, p.HealthCheck.Name, p.Conn.Outcome}]++
}

// Snapshot returns the counts of the Services in current that have a
// healthCheckNodePort, sorted. Outcomes ok and refused are always there,
// from 0: "the agent saw the Service and no probe came" then differs from
// "no agent reported", and a first refused probe is a counter going from
// 0 to 1 (a series that appears at 1 has no increase in Prometheus);
// other outcomes once seen. Counts of Services
// no longer in current, or that lost their port, are forgotten: their
// series end (a Service recreated under the same name starts from 0, a
// counter reset).
func (pc *ProbeCounts) Snapshot(current []*kube.Service) []ProbeCount {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	keep := make(map[[2]string]bool, len(current))
	var out []ProbeCount
	for _, s := range current {
		if s.HealthCheckNodePort == 0 {
			continue
		}
		keep[[2]string{s.Namespace, s.Name}] = true
		for _, o := range alwaysReported {
			out = append(out, ProbeCount{Namespace: s.Namespace, Service: s.Name, Outcome: o, Count: pc.n[probeKey{s.Namespace, s.Name, o}]})
		}
	}
	for k, c := range pc.n {
		switch {
		case !keep[[2]string{k.namespace, k.service}]:
			delete(pc.n, k)
		case k.outcome != flow.OutcomeOK && k.outcome != flow.OutcomeRefused:
			out = append(out, ProbeCount{Namespace: k.namespace, Service: k.service, Outcome: k.outcome, Count: c})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Outcome < b.Outcome
	})
	return out
}
