package explain

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Thresholds below which a figure is context, not a finding: an incident
// view that flags 0.2% failures or one SNATed health check trains people to
// ignore it.
const (
	minFailureRate = 0.01
	minSNATShare   = 0.01
	// A node is skewed when it serves over skewFactor times its share of
	// the pods, and at least skewMargin more than that share.
	skewFactor = 1.5
	skewMargin = 0.15
)

var failureHints = map[string]string{
	"refused":     "no ready endpoint or nothing listening on the targetPort: check readiness and the Service's targetPort",
	"timeout":     "SYNs unanswered: NetworkPolicy, a firewall, or a pod whose accept backlog is full",
	"reset":       "connections reset after opening: app restarts, proxy idle timeouts or keep-alive races",
	"unreachable": "no route to the pod: check the CNI and node routes",
	"failed":      "handshakes failed: the spans' error.type names the socket error",
}

// diagnose turns the figures into findings, most actionable first.
func (r *Report) diagnose() {
	var fs []Finding
	for _, d := range r.Deploys {
		if !d.Regression {
			continue
		}
		fs = append(fs, Finding{Kind: KindDeployRegression, Subject: d.Deployment, Message: fmt.Sprintf(
			"DEPLOY REGRESSION %s %s: p90 %s → %s (%s, %s) %s after rollout",
			d.Deployment, orDash(d.After.Hash), seconds(d.Before.P90), seconds(d.After.P90), times(d.P90Ratio()), pvalue(d.PValue), ago(d.Since))})
	}
	for _, p := range r.Pods {
		if !p.Hot {
			continue
		}
		fs = append(fs, Finding{Kind: KindHotPod, Subject: p.Pod, Message: fmt.Sprintf(
			"HOT POD %s takes %s of connections (fair share %s): check keep-alive clients / session affinity",
			p.Pod, percent(p.Connections), percent(r.FairShare))})
	}
	if r.FailureRate >= minFailureRate && len(r.Failures) > 0 {
		byOutcome := map[string]float64{}
		for _, f := range r.Failures {
			byOutcome[f.Outcome] += f.Conns
		}
		outcomes := make([]string, 0, len(byOutcome))
		for o := range byOutcome {
			outcomes = append(outcomes, o)
		}
		sort.Slice(outcomes, func(i, j int) bool {
			return byOutcome[outcomes[i]] > byOutcome[outcomes[j]] || (byOutcome[outcomes[i]] == byOutcome[outcomes[j]] && outcomes[i] < outcomes[j])
		})
		parts := make([]string, len(outcomes))
		for i, o := range outcomes {
			parts[i] = o + " " + count(byOutcome[o])
		}
		hint := failureHints[outcomes[0]]
		if hint == "" {
			hint = "see the failing connections' spans"
		}
		fs = append(fs, Finding{Kind: KindFailures, Message: fmt.Sprintf("FAILURES %s of connections failed (%s): %s",
			percent(r.FailureRate), strings.Join(parts, ", "), hint)})
	}
	if r.SNAT >= minSNATShare {
		var msg string
		switch {
		case r.External > 0 && r.SNAT >= 0.995:
			msg = fmt.Sprintf("CLIENT IP LOST: %s of %s connections SNATed (externalTrafficPolicy Cluster); set Local if the app needs the client IP",
				percent(r.SNAT), r.externalName())
		case r.External > 0:
			msg = fmt.Sprintf("CLIENT IP LOST: %s of %s connections SNATed (Cluster policy, or nodes without a local endpoint); set Local and keep endpoints on every node the LB targets if the app needs the client IP",
				percent(r.SNAT), r.externalName())
		default:
			msg = fmt.Sprintf("CLIENT IP LOST: %s of connections reached the pods from another node's address (SNAT); set externalTrafficPolicy Local if the app needs the client IP",
				percent(r.SNAT))
		}
		fs = append(fs, Finding{Kind: KindClientIPLost, Message: msg})
	}
	// Node skew matters under Local policy, where the LB spreads per node
	// and each node only over its own pods; under Cluster policy a skewed
	// node is just the sum of its pods' shares, already covered above.
	if r.External > 0 && !(r.SNAT >= 0.5) && len(r.Nodes) >= 2 && len(r.Pods) > 0 {
		for _, n := range r.Nodes {
			podFrac := float64(n.Pods) / float64(len(r.Pods))
			if n.Share > skewFactor*podFrac && n.Share-podFrac >= skewMargin {
				fs = append(fs, Finding{Kind: KindNodeSkew, Subject: n.Node, Message: fmt.Sprintf(
					"NODE SKEW %s serves %s of connections with %d of %d pods (externalTrafficPolicy Local splits per node, not per pod): spread pods evenly across nodes (topologySpreadConstraints)",
					n.Node, percent(n.Share), n.Pods, len(r.Pods))})
			}
		}
	}
	sort.SliceStable(fs, func(i, j int) bool { return kindOrder[fs[i].Kind] < kindOrder[fs[j].Kind] })
	r.Findings = fs
}

// externalName is "LB", "NodePort" or "LB/NodePort", by the entries seen.
func (r *Report) externalName() string {
	var lb, np bool
	for _, e := range r.Entries {
		lb = lb || e.Entry == "loadbalancer"
		np = np || e.Entry == "nodeport"
	}
	switch {
	case lb && np:
		return "LB/NodePort"
	case np:
		return "NodePort"
	}
	return "LB"
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// times renders a ratio as "×2.1".
func times(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "×?"
	}
	if r >= 10 {
		return fmt.Sprintf("×%.0f", r)
	}
	return fmt.Sprintf("×%.1f", r)
}

// pvalue renders p compactly: "p=1e-12", "p=0.003", "p=0.43".
func pvalue(p float64) string {
	switch {
	case math.IsNaN(p):
		return "p=?"
	case p == 0:
		return "p<1e-300"
	case p < 0.001:
		return "p=" + fmt.Sprintf("%.0e", p)
	case p < 0.01:
		return fmt.Sprintf("p=%.3f", p)
	}
	return fmt.Sprintf("p=%.2f", p)
}
