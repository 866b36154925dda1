// Package explain is the SRE's terminal view of lbpath: it reads the
// Prometheus server lbpath's metrics land in and prints, for one Service,
// how its connections travel (entries, entry nodes, SNAT, cross-node hops),
// how they spread over its pods and nodes, how its last rollout changed
// latency, what fails — and one line per finding saying what to do.
// Top ranks all Services on one screen.
//
// It needs only the Prometheus HTTP API. The per-pod shares, hot pods and
// deploy verdicts come from the lbpath-collector's processors; without them
// the shares are computed from the agents' counters and the deploy section
// is left out.
package explain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// DefaultWindow is the rate window: long enough to smooth a scrape or push
// interval of 10–60 s, short enough to show an incident that started
// minutes ago.
const DefaultWindow = 5 * time.Minute

// Fallback thresholds when the lbimbalance processor's verdict is absent:
// its defaults (processor/lbimbalance/config.go), so that both agree.
const (
	fallbackHotFactor      = 1.5
	fallbackMinConnections = 20
)

// Options tune Inspect and TopRows; the zero value (or nil) uses defaults.
type Options struct {
	// Window for rate() and increase(); DefaultWindow when zero.
	Window time.Duration
	// Cluster restricts every query to k8s_cluster_name (when one
	// Prometheus holds several clusters).
	Cluster string
	// Client is the HTTP client (auth, TLS, timeouts); nil uses a client
	// with a 30 s timeout.
	Client *http.Client
	// BarWidth is the width of the share bars in cells; default 30.
	BarWidth int
	// Limit caps Top's rows; default 20, negative for all.
	Limit int
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.Window <= 0 {
		r.Window = DefaultWindow
	}
	if r.Client == nil {
		r.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if r.BarWidth <= 0 {
		r.BarWidth = 30
	}
	if r.Limit == 0 {
		r.Limit = 20
	}
	return r
}

// ErrNoData is returned (wrapped) when Prometheus has no lbpath series for
// the Service in the window: a wrong name, or agents not exporting.
var ErrNoData = errors.New("no lbpath data for the service")

// Kind classifies a finding.
type Kind string

// Finding kinds, in the order Render lists them (most actionable first).
const (
	KindDeployRegression Kind = "deploy_regression"
	KindHotPod           Kind = "hot_pod"
	KindFailures         Kind = "failures"
	KindClientIPLost     Kind = "client_ip_lost"
	KindNodeSkew         Kind = "node_skew"
	KindNoData           Kind = "no_data"
)

var kindOrder = map[Kind]int{KindNoHealthyNode: 0, KindLBProbesStopped: 0, KindLBProbesOnlyFailing: 0, KindLBPending: 1, KindDeployRegression: 2, KindHotPod: 3, KindHealthCheckFails: 4,
	KindFailures: 5, KindClientIPLost: 6, KindNodeSkew: 7, KindNoData: 8}

// Finding is one diagnosis with the line an SRE reads.
type Finding struct {
	Kind    Kind
	Subject string // the pod, deployment or node concerned ("" for the Service)
	Message string
}

// EntryCount is the connections that entered the Service one way.
type EntryCount struct {
	Entry string  // clusterip, nodeport, loadbalancer, externalip
	Conns float64 // in the window
}

// NodeCount is the connections a node translated (entry node).
type NodeCount struct {
	Node  string
	Conns float64
}

// PodShare is one pod's part of the Service's traffic; shares are
// fractions in [0, 1], NaN when that signal is absent (no HTTP: no
// requests).
type PodShare struct {
	Pod, Node                    string
	Connections, Requests, Bytes float64
	Hot                          bool
}

// NodeShare is the part of the Service's connections served on a node.
type NodeShare struct {
	Node  string
	Share float64
	Pods  int // pods of the Service on that node (from the pod shares)
}

// Revision is one side of a rollout comparison; latencies in seconds,
// NaN when the processor reported none.
type Revision struct {
	Hash          string
	P50, P90, P99 float64
	Samples       float64
}

// Deploy is the latest rollout of a Deployment behind the Service, as the
// deployregression processor judged it.
type Deploy struct {
	Deployment    string
	Before, After Revision
	Since         time.Duration // since the rollout began; 0 when unknown
	Tested        bool          // the processor ran its test (enough samples)
	Regression    bool
	PValue        float64
}

// P90Ratio is after/before p90, NaN when either side is missing.
func (d Deploy) P90Ratio() float64 {
	if !(d.Before.P90 > 0) || math.IsNaN(d.After.P90) {
		return math.NaN()
	}
	return d.After.P90 / d.Before.P90
}

// Failure counts connections of one role that ended with one outcome.
type Failure struct {
	Role, Outcome string
	Conns         float64
}

// Report is everything Inspect found about one Service.
type Report struct {
	Namespace, Name string
	At              time.Time
	Window          time.Duration

	// Served is the connections the pods accepted in the window; ConnRate
	// and ReqRate are per second. Latencies are request latencies at the
	// pods (seconds, NaN without HTTP).
	Served, ConnRate, ReqRate float64
	P50, P90, P99             float64

	Entries    []EntryCount // largest first
	EntryNodes []NodeCount  // largest first
	EntryConns float64      // connections with a known entry
	CrossNode  float64      // share of those that took an extra node hop (NaN: none)
	External   float64      // connections via LoadBalancer or NodePort
	SNAT       float64      // share of External (or of Served) whose client IP was lost

	Pods        []PodShare // largest connection share first
	ShareSource string     // "lbimbalance" or "agent counters"
	FairShare   float64
	Nodes       []NodeShare

	Deploys []Deploy

	Failures    []Failure // largest first
	FailureRate float64   // share of attempts that failed (NaN: none)

	Findings []Finding

	// Signals is the collector's lbsignals receiver's view (lbsignals.go);
	// nil without it.
	Signals *LBSignals

	// Ingress is the chain through ingress proxy pods to this Service's
	// pods (ingress.go); nil when no proxy routed to it.
	Ingress *Ingress

	barWidth int
}

// Service is "namespace/name".
func (r *Report) Service() string { return r.Namespace + "/" + r.Name }

// Has reports whether a finding of kind k (about subject, if not empty) was made.
func (r *Report) Has(k Kind, subject string) bool {
	for _, f := range r.Findings {
		if f.Kind == k && (subject == "" || f.Subject == subject) {
			return true
		}
	}
	return false
}

// ParseService accepts the forms an SRE types: "NS/NAME",
// "service/NS/NAME", "svc/NS/NAME" and "services/NS/NAME".
func ParseService(arg string) (namespace, name string, err error) {
	s := arg
	for _, p := range []string{"service/", "services/", "svc/"} {
		if strings.HasPrefix(s, p) && strings.Count(s, "/") == 2 {
			s = strings.TrimPrefix(s, p)
			break
		}
	}
	ns, n, ok := strings.Cut(s, "/")
	if !ok || ns == "" || n == "" || strings.Contains(n, "/") {
		return "", "", fmt.Errorf("service %q: want NAMESPACE/NAME or service/NAMESPACE/NAME", arg)
	}
	return ns, n, nil
}

// Explain prints the report for service ("NS/NAME", or "service/NS/NAME")
// as of now from the Prometheus server at promURL, with default options.
// When Prometheus has no data for the Service it still prints why and
// returns an error wrapping ErrNoData.
func Explain(ctx context.Context, promURL, service string, now time.Time, out io.Writer) error {
	r, err := Inspect(ctx, promURL, service, now, nil)
	if r != nil {
		if werr := r.Render(out); werr != nil {
			return werr
		}
	}
	return err
}

// Inspect queries Prometheus and builds the report without printing it.
// With no data it returns the report (holding a no_data finding) and an
// error wrapping ErrNoData.
func Inspect(ctx context.Context, promURL, service string, now time.Time, opts *Options) (*Report, error) {
	o := opts.withDefaults()
	ns, name, err := ParseService(service)
	if err != nil {
		return nil, err
	}
	q, err := newQuerier(promURL, o.Client, now)
	if err != nil {
		return nil, err
	}
	r := &Report{Namespace: ns, Name: name, At: now, Window: o.Window, barWidth: o.BarWidth,
		P50: math.NaN(), P90: math.NaN(), P99: math.NaN(), CrossNode: math.NaN(), SNAT: math.NaN(),
		FailureRate: math.NaN(), ReqRate: math.NaN()}
	sel := matchers(lNamespace, ns, lService, name)
	if o.Cluster != "" {
		sel += ", " + matchers(lCluster, o.Cluster)
	}
	w := promDuration(o.Window)

	if err := r.path(ctx, q, sel, w); err != nil {
		return nil, err
	}
	if err := r.latency(ctx, q, sel, w); err != nil {
		return nil, err
	}
	if err := r.shares(ctx, q, sel, w); err != nil {
		return nil, err
	}
	if err := r.deploys(ctx, q, sel, w, o.Cluster); err != nil {
		return nil, err
	}
	if err := r.lbSignals(ctx, q, sel, w); err != nil {
		return nil, err
	}
	if err := r.ingress(ctx, q, sel, w); err != nil {
		return nil, err
	}
	if r.Served == 0 && r.EntryConns == 0 && len(r.Pods) == 0 && len(r.Failures) == 0 && len(r.Deploys) == 0 && r.Signals == nil && r.Ingress == nil {
		r.Findings = []Finding{{Kind: KindNoData, Message: fmt.Sprintf(
			"NO DATA: Prometheus has no lbpath series for %s in the last %s: check the name, the agents' OTLP export and the collector pipeline",
			r.Service(), w)}}
		return r, fmt.Errorf("%s at %s: %w", r.Service(), promURL, ErrNoData)
	}
	r.diagnose()
	r.signalFindings()
	return r, nil
}

func (r *Report) path(ctx context.Context, q *querier, sel, w string) error {
	v, err := q.vector(ctx, fmt.Sprintf(`sum by (%s, %s, %s, %s, %s, %s) (increase(%s{%s}[%s]))`,
		lRole, lEntry, lEntryNode, lSNAT, lCross, lOutcome, mConnections, sel, w))
	if err != nil {
		return err
	}
	b := newBreakdown()
	for _, s := range v {
		b.add(s.Metric, float64(s.Value))
	}
	r.Served = b.served
	r.ConnRate = b.served / r.Window.Seconds()
	for e, c := range b.entries {
		r.Entries = append(r.Entries, EntryCount{e, c})
	}
	sort.Slice(r.Entries, func(i, j int) bool {
		return r.Entries[i].Conns > r.Entries[j].Conns || (r.Entries[i].Conns == r.Entries[j].Conns && r.Entries[i].Entry < r.Entries[j].Entry)
	})
	for n, c := range b.entryNodes {
		r.EntryNodes = append(r.EntryNodes, NodeCount{n, c})
	}
	sort.Slice(r.EntryNodes, func(i, j int) bool {
		return r.EntryNodes[i].Conns > r.EntryNodes[j].Conns || (r.EntryNodes[i].Conns == r.EntryNodes[j].Conns && r.EntryNodes[i].Node < r.EntryNodes[j].Node)
	})
	r.EntryConns, r.CrossNode, r.External, r.SNAT = b.entryTotal, b.crossShare(), b.external, b.snatShare()
	for k, c := range b.failures {
		r.Failures = append(r.Failures, Failure{k.role, k.outcome, c})
	}
	sort.Slice(r.Failures, func(i, j int) bool {
		a, c := r.Failures[i], r.Failures[j]
		return a.Conns > c.Conns || (a.Conns == c.Conns && a.Role+a.Outcome < c.Role+c.Outcome)
	})
	r.FailureRate = b.failShare()
	return nil
}

func (r *Report) latency(ctx context.Context, q *querier, sel, w string) error {
	var err error
	if r.ReqRate, err = q.scalar(ctx, fmt.Sprintf(`sum(rate(%s{%s}[%s]))`, mRequests, sel, w)); err != nil {
		return err
	}
	for _, p := range []struct {
		q   string
		dst *float64
	}{{"0.5", &r.P50}, {"0.9", &r.P90}, {"0.99", &r.P99}} {
		if *p.dst, err = q.scalar(ctx, latencyQuantile(p.q, "", sel, w)); err != nil {
			return err
		}
	}
	return nil
}

// shares reads the lbimbalance processor's per-pod shares, hot flags and
// node shares, or computes shares from the agents' counters without it.
func (r *Report) shares(ctx context.Context, q *querier, sel, w string) error {
	pods := map[string]*PodShare{}
	get := func(pod, node string) *PodShare {
		p := pods[pod]
		if p == nil {
			p = &PodShare{Pod: pod, Node: node, Connections: math.NaN(), Requests: math.NaN(), Bytes: math.NaN()}
			pods[pod] = p
		}
		return p
	}
	v, err := q.vector(ctx, fmt.Sprintf(`%s{%s}`, mShare, sel))
	if err != nil {
		return err
	}
	if len(v) > 0 {
		r.ShareSource = "lbimbalance"
		for _, s := range v {
			p := get(label(s.Metric, lPod), label(s.Metric, lNode))
			switch label(s.Metric, lSignal) {
			case "connections":
				p.Connections = float64(s.Value)
			case "requests":
				p.Requests = float64(s.Value)
			case "bytes":
				p.Bytes = float64(s.Value)
			}
		}
		hot, err := q.vector(ctx, fmt.Sprintf(`%s{%s}`, mHot, sel))
		if err != nil {
			return err
		}
		for _, s := range hot {
			if s.Value == 1 {
				get(label(s.Metric, lPod), label(s.Metric, lNode)).Hot = true
			}
		}
		n, err := q.scalar(ctx, fmt.Sprintf(`max(%s{%s})`, mPods, sel))
		if err != nil {
			return err
		}
		if n > 0 {
			r.FairShare = 1 / n
		}
	} else {
		r.ShareSource = "agent counters"
		for _, sig := range []struct {
			expr string
			set  func(*PodShare, float64)
		}{
			{fmt.Sprintf(`%s{%s, %s}`, mConnections, sel, matchers(lRole, "server")), func(p *PodShare, f float64) { p.Connections = f }},
			{fmt.Sprintf(`%s{%s}`, mRequests, sel), func(p *PodShare, f float64) { p.Requests = f }},
			{fmt.Sprintf(`%s{%s, %s}`, mBytes, sel, matchers(lRole, "server")), func(p *PodShare, f float64) { p.Bytes = f }},
		} {
			v, err := q.vector(ctx, fmt.Sprintf(`sum by (%s, %s) (increase(%s[%s]))`, lPod, lNode, sig.expr, w))
			if err != nil {
				return err
			}
			var total float64
			for _, s := range v {
				total += float64(s.Value)
			}
			if total <= 0 {
				continue
			}
			for _, s := range v {
				if pod := label(s.Metric, lPod); pod != "" {
					sig.set(get(pod, label(s.Metric, lNode)), float64(s.Value)/total)
				}
			}
		}
		if len(pods) > 0 {
			r.FairShare = 1 / float64(len(pods))
		}
		// The processor's rule, so that both views agree on what is hot.
		if r.Served >= fallbackMinConnections {
			for _, p := range pods {
				p.Hot = p.Connections > fallbackHotFactor*r.FairShare
			}
		}
	}
	for _, p := range pods {
		r.Pods = append(r.Pods, *p)
	}
	sort.Slice(r.Pods, func(i, j int) bool {
		a, b := r.Pods[i], r.Pods[j]
		if nanLess(b.Connections, a.Connections) != nanLess(a.Connections, b.Connections) {
			return nanLess(b.Connections, a.Connections)
		}
		return a.Pod < b.Pod
	})

	podsOn := map[string]int{}
	for _, p := range r.Pods {
		podsOn[p.Node]++
	}
	nodes := map[string]float64{}
	if r.ShareSource == "lbimbalance" {
		v, err := q.vector(ctx, fmt.Sprintf(`%s{%s, %s}`, mNodeShare, sel, matchers(lSignal, "connections")))
		if err != nil {
			return err
		}
		for _, s := range v {
			nodes[label(s.Metric, lNode)] = float64(s.Value)
		}
	} else {
		for _, p := range r.Pods {
			if !math.IsNaN(p.Connections) {
				nodes[p.Node] += p.Connections
			}
		}
	}
	for n, s := range nodes {
		r.Nodes = append(r.Nodes, NodeShare{Node: n, Share: s, Pods: podsOn[n]})
	}
	sort.Slice(r.Nodes, func(i, j int) bool {
		return r.Nodes[i].Share > r.Nodes[j].Share || (r.Nodes[i].Share == r.Nodes[j].Share && r.Nodes[i].Node < r.Nodes[j].Node)
	})
	return nil
}

// nanLess orders NaN below every number.
func nanLess(a, b float64) bool {
	if math.IsNaN(a) {
		return !math.IsNaN(b)
	}
	return !math.IsNaN(b) && a < b
}

// deploys finds the Deployments behind the Service (from the agents'
// series, which carry both names) and reads the deployregression
// processor's view of each one's latest rollout.
func (r *Report) deploys(ctx context.Context, q *querier, sel, w, cluster string) error {
	expr := fmt.Sprintf(`group by (%[1]s) (last_over_time(%[2]s{%[3]s, %[1]s!=""}[%[4]s])) or group by (%[1]s) (last_over_time(%[5]s{%[3]s, %[1]s!=""}[%[4]s]))`,
		lDeployment, mConnections, sel, w, mRequests)
	v, err := q.vector(ctx, expr)
	if err != nil {
		return err
	}
	var names []string
	for _, s := range v {
		names = append(names, label(s.Metric, lDeployment))
	}
	if len(names) == 0 {
		return nil
	}
	dsel := matchers(lNamespace, r.Namespace, lDeployment+"~", regexAlt(names))
	if cluster != "" {
		dsel += ", " + matchers(lCluster, cluster)
	}
	deps := map[string]*Deploy{}
	get := func(m model.Metric) *Deploy {
		n := label(m, lDeployment)
		d := deps[n]
		if d == nil {
			nan := math.NaN()
			d = &Deploy{Deployment: n, PValue: nan,
				Before: Revision{P50: nan, P90: nan, P99: nan, Samples: nan},
				After:  Revision{P50: nan, P90: nan, P99: nan, Samples: nan}}
			deps[n] = d
		}
		return d
	}
	side := func(d *Deploy, m model.Metric) *Revision {
		switch label(m, lRevision) {
		case "before":
			return &d.Before
		case "after":
			return &d.After
		}
		return nil // "current": the trailing window, not part of the comparison
	}
	type read struct {
		metric string
		apply  func(d *Deploy, m model.Metric, v float64)
	}
	quant := func(f func(*Revision) *float64) func(*Deploy, model.Metric, float64) {
		return func(d *Deploy, m model.Metric, v float64) {
			if s := side(d, m); s != nil {
				*f(s) = v
				s.Hash = label(m, lHash)
			}
		}
	}
	for _, rd := range []read{
		{mTimeSince, func(d *Deploy, _ model.Metric, v float64) { d.Since = time.Duration(v * float64(time.Second)) }},
		{mDeployP50, quant(func(s *Revision) *float64 { return &s.P50 })},
		{mDeployP90, quant(func(s *Revision) *float64 { return &s.P90 })},
		{mDeployP99, quant(func(s *Revision) *float64 { return &s.P99 })},
		{mDeploySamples, func(d *Deploy, m model.Metric, v float64) {
			if s := side(d, m); s != nil {
				s.Samples = v
			}
		}},
		{mRegression, func(d *Deploy, _ model.Metric, v float64) { d.Tested, d.Regression = true, v == 1 }},
		{mPValue, func(d *Deploy, _ model.Metric, v float64) { d.PValue = v }},
	} {
		v, err := q.vector(ctx, fmt.Sprintf(`%s{%s}`, rd.metric, dsel))
		if err != nil {
			return err
		}
		for _, s := range v {
			rd.apply(get(s.Metric), s.Metric, float64(s.Value))
		}
	}
	for _, d := range deps {
		r.Deploys = append(r.Deploys, *d)
	}
	sort.Slice(r.Deploys, func(i, j int) bool { return r.Deploys[i].Deployment < r.Deploys[j].Deployment })
	return nil
}
