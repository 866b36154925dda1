package explain

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Series of the collector's lbsignals receiver (receiver/lbsignals):
// Kubernetes' and kube-proxy's view of the Service, from one
// leader-elected collector. Aggregated with max by node, because after a
// failover the old leader's exporter serves its last values for a while.
const (
	mLBPendingAge  = "lbpath_loadbalancer_pending_age_seconds"
	mLBAddress     = "lbpath_loadbalancer_address"
	lLBAddress     = "lbpath_loadbalancer_address"
	lLBAddressType = "lbpath_loadbalancer_address_type"
	mEndpointReady = "lbpath_service_endpoint_ready"
	mHCStatus      = "lbpath_service_health_check_status"
	mHCLocal       = "lbpath_service_health_check_local_endpoints"
	mHCErrors      = "lbpath_service_health_check_errors_total"
	lErrorType     = "error_type"
	// The agents' count of load-balancer probes that reached their node
	// (exporter/lbprobes.go): the other side of the health check.
	mLBProbes = "lbpath_loadbalancer_health_probes_total"
)

// Finding kinds from the LB signals (ordered in kindOrder).
const (
	KindLBPending        Kind = "loadbalancer_pending"
	KindNoHealthyNode    Kind = "no_healthy_node"
	KindHealthCheckFails Kind = "health_check_fails"
	// KindLBProbesStopped: the load balancer's probes reached nodes
	// before, and none in the window.
	KindLBProbesStopped Kind = "lb_probes_stopped"
	// KindLBProbesOnlyFailing: probes arrive, but only at nodes failing
	// the health check, while a node passes it unprobed.
	KindLBProbesOnlyFailing Kind = "lb_probes_only_failing"
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
	// Probes is how many load-balancer health probes reached the node in
	// the window, ProbesRefused how many of them found nothing listening,
	// ProbesEver how many since the node's agent started counting; NaN
	// when no agent reported the Service on the node.
	Probes, ProbesRefused, ProbesEver float64
	// Unchecked: the receiver said nothing about the node (the row is the
	// agent's probe count alone); not used for the health-check findings.
	Unchecked bool
}

// LBSignals is what the lbsignals receiver reports about the Service.
type LBSignals struct {
	// PendingFor is how long the LoadBalancer has waited for an address;
	// 0 when it is not pending (or not a LoadBalancer).
	PendingFor time.Duration
	// Addresses are the load balancer's published addresses, an IP or a
	// hostname each (AWS ELB/NLB publish only a hostname), as
	// "<address> (<ip|hostname>)".
	Addresses []string
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
	addrs, err := q.vector(ctx, fmt.Sprintf(`max by (%s, %s) (%s{%s})`, lLBAddress, lLBAddressType, mLBAddress, sel))
	if err != nil {
		return err
	}
	for _, a := range addrs {
		s.Addresses, seen = append(s.Addresses, fmt.Sprintf("%s (%s)", label(a.Metric, lLBAddress), label(a.Metric, lLBAddressType))), true
	}
	sort.Strings(s.Addresses)
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
	if err := readProbes(ctx, q, sel, w, nodes, get); err != nil {
		return err
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
	var checked, answered, healthy int
	for _, h := range s.HealthChecks {
		if h.Unchecked {
			continue
		}
		checked++
		if h.Status != 0 {
			answered++
		}
		if h.Status == 200 {
			healthy++
		}
	}
	switch {
	case checked > 0 && healthy == 0:
		why := "every node answers 503: kube-proxy sees no ready local endpoint anywhere"
		if answered < checked {
			why = fmt.Sprintf("%d of %d nodes answer nothing usable, the rest 503", checked-answered, checked)
		}
		r.Findings = append(r.Findings, Finding{Kind: KindNoHealthyNode, Message: fmt.Sprintf(
			"NO NODE PASSES THE LB HEALTH CHECK (externalTrafficPolicy Local): %s, so the load balancer has no backend", why)})
	default:
		r.probeFindings()
		for _, h := range s.HealthChecks {
			if !h.Unchecked && h.Status != 200 && h.ReadyPods > 0 {
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
	case h.Unchecked:
		return "–"
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
	if len(s.Addresses) > 0 {
		fmt.Fprintf(b, "  address     %s\n", strings.Join(s.Addresses, ", "))
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
	probes := false
	for _, h := range s.HealthChecks {
		probes = probes || !math.IsNaN(h.Probes)
	}
	if !probes {
		fmt.Fprintf(b, "  %-*s  %-*s  %15s  %10s\n", nw, "node", aw, "answer", "local endpoints", "ready pods")
		for _, h := range s.HealthChecks {
			fmt.Fprintf(b, "  %-*s  %-*s  %15s  %10s\n", nw, h.Node, aw, h.answer(), count(h.LocalEndpoints), count(h.ReadyPods))
		}
		return
	}
	// The agents' side: the load balancer's probes that reached each node.
	fmt.Fprintf(b, "  %-*s  %-*s  %15s  %10s  %s\n", nw, "node", aw, "answer", "local endpoints", "ready pods", "LB probes arriving")
	for _, h := range s.HealthChecks {
		fmt.Fprintf(b, "  %-*s  %-*s  %15s  %10s  %s\n", nw, h.Node, aw, h.answer(), count(h.LocalEndpoints), count(h.ReadyPods), h.probes(r.Window))
	}
	if s.noProbesEver() {
		fmt.Fprintln(b, "  no load-balancer probe has reached any node since the agents started: this load balancer does not probe the healthCheckNodePort (MetalLB, kube-vip) or its probes are dropped before the nodes (a cloud load balancer then marks every node down)")
	}
}

// signalNames are the series read here, with their labels (for the
// catalog test).
var signalNames = map[string][]string{
	mLBPendingAge:  {lNamespace, lService},
	mLBAddress:     {lNamespace, lService, lLBAddress, lLBAddressType},
	mEndpointReady: {lNamespace, lService, lPod, lNode},
	mHCStatus:      {lNamespace, lService, lNode},
	mHCLocal:       {lNamespace, lService, lNode},
	mHCErrors:      {lNamespace, lService, lNode, lErrorType},
	mLBProbes:      {lNamespace, lService, lNode, lOutcome},
}

// readProbes adds the agents' probe counts to the nodes' rows; a node
// only the agents know gets a row marked Unchecked.
func readProbes(ctx context.Context, q *querier, sel, w string, nodes map[string]*NodeHealthCheck, get func(string) *NodeHealthCheck) error {
	for _, h := range nodes {
		h.Probes, h.ProbesRefused, h.ProbesEver = math.NaN(), math.NaN(), math.NaN()
	}
	row := func(n string) *NodeHealthCheck {
		_, known := nodes[n]
		h := get(n)
		if !known {
			h.Unchecked = true
		} else if !math.IsNaN(h.Probes) {
			return h
		}
		h.Probes, h.ProbesRefused, h.ProbesEver = 0, 0, 0
		return h
	}
	inWindow, err := q.vector(ctx, fmt.Sprintf(`sum by (%s, %s) (increase(%s{%s}[%s]))`, lNode, lOutcome, mLBProbes, sel, w))
	if err != nil {
		return err
	}
	ever, err := q.vector(ctx, fmt.Sprintf(`sum by (%s) (%s{%s})`, lNode, mLBProbes, sel))
	if err != nil {
		return err
	}
	for _, x := range inWindow {
		h := row(label(x.Metric, lNode))
		h.Probes += float64(x.Value)
		if label(x.Metric, lOutcome) == "refused" {
			h.ProbesRefused += float64(x.Value)
		}
	}
	for _, x := range ever {
		row(label(x.Metric, lNode)).ProbesEver = float64(x.Value)
	}
	return nil
}

// probeFindings: whether the load balancer's probes arrive, from the
// agents' counts, when some node passes the check. Two incidents: probes
// reached nodes before and none in the window (the load balancer, or a
// firewall before the nodes, stopped them: a cloud load balancer then
// marks every node down); probes arrive only at nodes failing the check
// while a passing node gets none (its backend pool lacks the nodes with
// local endpoints). Probes that never arrived are no finding: load
// balancers such as MetalLB do not probe the port at all (renderSignals
// says so). Nodes whose agent did not report are no evidence.
func (r *Report) probeFindings() {
	s := r.Signals
	var reported, probed, ever int
	var inWindow float64
	var failingProbed, passingUnprobed []string
	for _, h := range s.HealthChecks {
		if math.IsNaN(h.Probes) {
			continue
		}
		reported++
		inWindow += h.Probes
		if h.ProbesEver > 0 {
			ever++
		}
		switch {
		case h.Probes > 0:
			probed++
			if !h.Unchecked && h.Status != 200 {
				failingProbed = append(failingProbed, h.Node)
			}
		case !h.Unchecked && h.Status == 200:
			passingUnprobed = append(passingUnprobed, h.Node)
		}
	}
	switch {
	case reported == 0 || s.PendingFor > 0:
	case inWindow == 0 && ever > 0:
		r.Findings = append(r.Findings, Finding{Kind: KindLBProbesStopped, Message: fmt.Sprintf(
			"LB PROBES STOPPED: no load-balancer health probe reached any of %d node%s in the last %s, though %d node%s got probes before: the load balancer no longer probes the healthCheckNodePort (deleted or changed out of band) or a firewall before the nodes drops the probes; a cloud load balancer then marks every node down",
			reported, plural(reported), promDuration(r.Window), ever, plural(ever))})
	case probed > 0 && len(failingProbed) == probed && len(passingUnprobed) > 0:
		r.Findings = append(r.Findings, Finding{Kind: KindLBProbesOnlyFailing, Message: fmt.Sprintf(
			"LB PROBES ONLY REACH NODES FAILING THE HEALTH CHECK: probed %s; passing %s got none: the load balancer's backend pool lacks the nodes with local endpoints (node added after the load balancer, excluded by label, stale pool), so external traffic has no healthy backend",
			strings.Join(failingProbed, ", "), strings.Join(passingUnprobed, ", "))})
	}
}

// noProbesEver reports whether agents reported the Service and no probe
// ever reached a node.
func (s *LBSignals) noProbesEver() bool {
	reported := false
	for _, h := range s.HealthChecks {
		if math.IsNaN(h.Probes) {
			continue
		}
		reported = true
		if h.ProbesEver > 0 {
			return false
		}
	}
	return reported
}

// probes is the node's probe rate in the window as a cell.
func (h NodeHealthCheck) probes(window time.Duration) string {
	if math.IsNaN(h.Probes) {
		return "–"
	}
	if window <= 0 {
		window = DefaultWindow
	}
	c := fmt.Sprintf("%.1f/min", h.Probes/window.Minutes())
	if h.ProbesRefused > 0 {
		c += fmt.Sprintf(" (%s refused)", count(h.ProbesRefused))
	}
	return c
}
