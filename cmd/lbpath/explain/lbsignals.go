package explain

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"sort"
	"time"
)

// Series of the collector's lbsignals receiver (receiver/lbsignals):
// Kubernetes' and kube-proxy's view of the Service, from one
// leader-elected collector. Aggregated with max by node, because after a
// failover the old leader's exporter serves its last values for a while.
const (
	mLBPendingAge  = "lbpath_loadbalancer_pending_age_seconds"
	mEndpointReady = "lbpath_service_endpoint_ready"
	mHCStatus      = "lbpath_service_health_check_status"
	mHCLocal       = "lbpath_service_health_check_local_endpoints"
	mHCErrors      = "lbpath_service_health_check_errors_total"
	lErrorType     = "error_type"
)

// Finding kinds from the LB signals (ordered in kindOrder).
const (
	KindLBPending        Kind = "loadbalancer_pending"
	KindNoHealthyNode    Kind = "no_healthy_node"
	KindHealthCheckFails Kind = "health_check_fails"
)

// NodeHealthCheck is one node's answer on the Service's healthCheckNodePort
// (externalTrafficPolicy Local), as the load balancer's probes get it.
type NodeHealthCheck struct {
	Node string
	// Status is the HTTP status kube-proxy answered (200: the node has
	// local endpoints; 503: none, the load balancer skips it); 0 when the
	// probe got no usable answer in the window (Error says why).
	Status int
	// LocalEndpoints is kube-proxy's count; NaN without an answer.
	LocalEndpoints float64
	// Error is the error.type of failed probes in the window ("" if none).
	Error string
	// ReadyPods is the Service's ready endpoints on the node from the
	// EndpointSlices; NaN when the receiver reported none for the Service.
	ReadyPods float64
}

// LBSignals is what the lbsignals receiver reports about the Service.
type LBSignals struct {
	// PendingFor is how long the LoadBalancer has waited for an address;
	// 0 when it is not pending (or not a LoadBalancer).
	PendingFor time.Duration
	// ReadyPods is the Service's ready endpoints (pods); NaN when unknown.
	ReadyPods float64
	// HealthChecks is one row per probed node (Local policy only).
	HealthChecks []NodeHealthCheck
}

// lbSignals reads the receiver's series; r.Signals stays nil when there
// are none (no receiver, or nothing to say about this Service).
func (r *Report) lbSignals(ctx context.Context, q *querier, sel, w string) error {
	s := &LBSignals{ReadyPods: math.NaN()}
	seen := false
	age, err := q.scalar(ctx, fmt.Sprintf(`max(%s{%s})`, mLBPendingAge, sel))
	if err != nil {
		return err
	}
	if age > 0 {
		s.PendingFor, seen = time.Duration(age*float64(time.Second)), true
	}
	ready, err := q.vector(ctx, fmt.Sprintf(`count by (%[1]s) (max by (%[1]s, %[2]s) (%[3]s{%[4]s}))`, lNode, lPod, mEndpointReady, sel))
	if err != nil {
		return err
	}
	readyOn := map[string]float64{}
	if len(ready) > 0 {
		s.ReadyPods, seen = 0, true
		for _, v := range ready {
			readyOn[label(v.Metric, lNode)] = float64(v.Value)
			s.ReadyPods += float64(v.Value)
		}
	}
	nodes := map[string]*NodeHealthCheck{}
	get := func(n string) *NodeHealthCheck {
		if nodes[n] == nil {
			rp := math.NaN()
			if len(ready) > 0 {
				rp = readyOn[n]
			}
			nodes[n] = &NodeHealthCheck{Node: n, LocalEndpoints: math.NaN(), ReadyPods: rp}
		}
		return nodes[n]
	}
	for _, rd := range []struct {
		expr  string
		apply func(h *NodeHealthCheck, v float64, errType string)
	}{
		{fmt.Sprintf(`max by (%s) (%s{%s})`, lNode, mHCStatus, sel), func(h *NodeHealthCheck, v float64, _ string) { h.Status = int(v) }},
		{fmt.Sprintf(`max by (%s) (%s{%s})`, lNode, mHCLocal, sel), func(h *NodeHealthCheck, v float64, _ string) { h.LocalEndpoints = v }},
		{fmt.Sprintf(`sum by (%s, %s) (increase(%s{%s}[%s])) > 0`, lNode, lErrorType, mHCErrors, sel, w), func(h *NodeHealthCheck, _ float64, e string) {
			if h.Error == "" || e < h.Error {
				h.Error = e
			}
		}},
	} {
		v, err := q.vector(ctx, rd.expr)
		if err != nil {
			return err
		}
		for _, x := range v {
			rd.apply(get(label(x.Metric, lNode)), float64(x.Value), label(x.Metric, lErrorType))
		}
	}
	for _, h := range nodes {
		s.HealthChecks = append(s.HealthChecks, *h)
	}
	sort.Slice(s.HealthChecks, func(i, j int) bool { return s.HealthChecks[i].Node < s.HealthChecks[j].Node })
	if seen || len(nodes) > 0 {
		r.Signals = s
	}
	return nil
}

// signalFindings adds the LB signals' findings to those of diagnose.
func (r *Report) signalFindings() {
	s := r.Signals
	if s == nil {
		return
	}
	if s.PendingFor > 0 {
		r.Findings = append(r.Findings, Finding{Kind: KindLBPending, Message: fmt.Sprintf(
			"LOADBALANCER PENDING for %s: no external IP or hostname yet; `kubectl describe service` shows the cloud controller's events (quota, permissions, loadBalancerClass)",
			ago(s.PendingFor))})
	}
	var answered, healthy int
	for _, h := range s.HealthChecks {
		if h.Status != 0 {
			answered++
		}
		if h.Status == 200 {
			healthy++
		}
	}
	switch {
	case len(s.HealthChecks) > 0 && healthy == 0:
		why := "every node answers 503: kube-proxy sees no ready local endpoint anywhere"
		if answered < len(s.HealthChecks) {
			why = fmt.Sprintf("%d of %d nodes answer nothing usable, the rest 503", len(s.HealthChecks)-answered, len(s.HealthChecks))
		}
		r.Findings = append(r.Findings, Finding{Kind: KindNoHealthyNode, Message: fmt.Sprintf(
			"NO NODE PASSES THE LB HEALTH CHECK (externalTrafficPolicy Local): %s, so the load balancer has no backend", why)})
	default:
		for _, h := range s.HealthChecks {
			if h.Status != 200 && h.ReadyPods > 0 {
				r.Findings = append(r.Findings, Finding{Kind: KindHealthCheckFails, Subject: h.Node, Message: fmt.Sprintf(
					"HEALTH CHECK FAILS ON %s (%s) with %s ready pod%s on the node: the load balancer skips it and those pods get no external traffic; check kube-proxy there",
					h.Node, h.answer(), count(h.ReadyPods), plural(int(h.ReadyPods)))})
			}
		}
	}
	sort.SliceStable(r.Findings, func(i, j int) bool { return kindOrder[r.Findings[i].Kind] < kindOrder[r.Findings[j].Kind] })
}

// answer is the node's health-check answer as a cell.
func (h NodeHealthCheck) answer() string {
	switch {
	case h.Status != 0:
		return fmt.Sprint(h.Status)
	case h.Error != "":
		return "no answer: " + h.Error
	}
	return "no answer"
}

// renderSignals writes the LB signals section.
func (r *Report) renderSignals(b *bytes.Buffer) {
	s := r.Signals
	if s == nil {
		return
	}
	fmt.Fprintln(b, "\nLOAD BALANCER  (Kubernetes and kube-proxy, from the collector's lbsignals receiver)")
	if s.PendingFor > 0 {
		fmt.Fprintf(b, "  pending for %s (no ingress IP or hostname)\n", ago(s.PendingFor))
	}
	if !math.IsNaN(s.ReadyPods) {
		fmt.Fprintf(b, "  ready pods  %s\n", count(s.ReadyPods))
	}
	if len(s.HealthChecks) == 0 {
		return
	}
	fmt.Fprintln(b, "  health check per node (externalTrafficPolicy Local: the load balancer sends only to nodes answering 200)")
	nw, aw := len("node"), len("answer")
	for _, h := range s.HealthChecks {
		nw, aw = width(nw, h.Node), width(aw, h.answer())
	}
	fmt.Fprintf(b, "  %-*s  %-*s  %15s  %10s\n", nw, "node", aw, "answer", "local endpoints", "ready pods")
	for _, h := range s.HealthChecks {
		fmt.Fprintf(b, "  %-*s  %-*s  %15s  %10s\n", nw, h.Node, aw, h.answer(), count(h.LocalEndpoints), count(h.ReadyPods))
	}
}

// signalNames are the series read here, with their labels (for the
// catalog test).
var signalNames = map[string][]string{
	mLBPendingAge:  {lNamespace, lService},
	mEndpointReady: {lNamespace, lService, lPod, lNode},
	mHCStatus:      {lNamespace, lService, lNode},
	mHCLocal:       {lNamespace, lService, lNode},
	mHCErrors:      {lNamespace, lService, lNode, lErrorType},
}
