package explain

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
)

// Series of the aggregate ingress edge (exporter/ingress.go,
// docs/TELEMETRY.md "Ingress proxy hop").
const (
	mIngressRequests = "lbpath_ingress_requests_total"
	mIngressDuration = "lbpath_ingress_request_duration_seconds"
	lIngressName     = "lbpath_ingress_name"
	lIngressRoute    = "lbpath_ingress_route"
	lIngressProxy    = "lbpath_ingress_proxy_pod"
)

// IngressBackend is one route → backend pod edge behind an ingress proxy
// pod: requests the backend pod counted from that proxy pod, and their
// latency at the backend pod (behind the proxy).
type IngressBackend struct {
	Ingress, Route, ProxyPod, Pod string
	Requests                      float64
	Share                         float64 // of this Service's requests through the proxies
	BehindP50, BehindP90          float64
}

// IngressProxy is the front half of the chain for one proxy pod: how its
// connections entered (LB, entry node), the mean request latency at the
// proxy pod (the proxy plus everything behind it) and the mean latency
// behind it over all its routes. Means, not quantiles, because only means
// subtract: Before = AtProxy − Behind is the proxy's own time and its hop
// to the backend Service, for the same requests.
type IngressProxy struct {
	Pod             string // namespace/name
	Entries         []EntryCount
	EntryNodes      []NodeCount
	AtProxy, Behind float64 // mean seconds; NaN: not measured
}

// Before is the mean latency spent in front of the backends, in the
// proxy; NaN when either side is missing.
func (p IngressProxy) Before() float64 { return p.AtProxy - p.Behind }

// Ingress is the "through an ingress" view of a backend Service; nil when
// no proxy sent it requests in the window.
type Ingress struct {
	Backends []IngressBackend // largest first
	Proxies  []IngressProxy
}

// meanLatency is the mean of histogram m over sel and w, from the native
// form or the classic _sum/_count series, whichever exists.
func meanLatency(m, sel, w string) string {
	native := fmt.Sprintf(`histogram_sum(sum(rate(%s{%s}[%s]))) / histogram_count(sum(rate(%s{%s}[%s])))`, m, sel, w, m, sel, w)
	classic := fmt.Sprintf(`sum(rate(%s_sum{%s}[%s])) / sum(rate(%s_count{%s}[%s]))`, m, sel, w, m, sel, w)
	return native + " or " + classic
}

// ingress reads the ingress edge for the Service (as a backend) and, per
// proxy pod that routed to it, the front half of the chain.
func (r *Report) ingress(ctx context.Context, q *querier, sel, w string) error {
	by := strings.Join([]string{lIngressName, lIngressRoute, lIngressProxy, lPod}, ", ")
	v, err := q.vector(ctx, fmt.Sprintf(`sum by (%s) (increase(%s{%s}[%s]))`, by, mIngressRequests, sel, w))
	if err != nil || len(v) == 0 {
		return err
	}
	in := &Ingress{}
	var total float64
	proxies := map[string]bool{}
	for _, s := range v {
		b := IngressBackend{Ingress: label(s.Metric, lIngressName), Route: label(s.Metric, lIngressRoute),
			ProxyPod: label(s.Metric, lIngressProxy), Pod: label(s.Metric, lPod), Requests: float64(s.Value)}
		if b.Requests <= 0 {
			continue
		}
		if err := r.behind(ctx, q, &b, sel, w); err != nil {
			return err
		}
		total += b.Requests
		proxies[b.ProxyPod] = true
		in.Backends = append(in.Backends, b)
	}
	for i := range in.Backends {
		in.Backends[i].Share = in.Backends[i].Requests / total
	}
	sort.Slice(in.Backends, func(i, j int) bool {
		a, c := in.Backends[i], in.Backends[j]
		return a.Requests > c.Requests || (a.Requests == c.Requests && a.Route+a.Pod < c.Route+c.Pod)
	})
	for p := range proxies {
		px, err := proxyFront(ctx, q, p, w)
		if err != nil {
			return err
		}
		in.Proxies = append(in.Proxies, px)
	}
	sort.Slice(in.Proxies, func(i, j int) bool { return in.Proxies[i].Pod < in.Proxies[j].Pod })
	if len(in.Backends) > 0 {
		r.Ingress = in
	}
	return nil
}

// behind fills the backend pod's latency quantiles for its route.
func (r *Report) behind(ctx context.Context, q *querier, b *IngressBackend, sel, w string) error {
	s := sel + ", " + matchers(lIngressRoute, b.Route, lIngressProxy, b.ProxyPod, lPod, b.Pod)
	var err error
	for _, p := range []struct {
		q   string
		dst *float64
	}{{"0.5", &b.BehindP50}, {"0.9", &b.BehindP90}} {
		if *p.dst, err = q.scalar(ctx, quantileOf(mIngressDuration, p.q, "", s, w)); err != nil {
			return err
		}
	}
	return nil
}

// proxyFront reads how the proxy pod's connections entered and the mean
// request latency at it and behind it.
func proxyFront(ctx context.Context, q *querier, pod, w string) (IngressProxy, error) {
	px := IngressProxy{Pod: pod}
	ns, name, _ := strings.Cut(pod, "/")
	at := matchers(lNamespace, ns, lPod, name)
	v, err := q.vector(ctx, fmt.Sprintf(`sum by (%s, %s, %s, %s, %s, %s) (increase(%s{%s, %s}[%s]))`,
		lRole, lEntry, lEntryNode, lSNAT, lCross, lOutcome, mConnections, at, matchers(lRole, "server"), w))
	if err != nil {
		return px, err
	}
	b := newBreakdown()
	for _, s := range v {
		b.add(s.Metric, float64(s.Value))
	}
	for e, c := range b.entries {
		px.Entries = append(px.Entries, EntryCount{e, c})
	}
	for n, c := range b.entryNodes {
		px.EntryNodes = append(px.EntryNodes, NodeCount{n, c})
	}
	sort.Slice(px.Entries, func(i, j int) bool { return px.Entries[i].Conns > px.Entries[j].Conns })
	sort.Slice(px.EntryNodes, func(i, j int) bool { return px.EntryNodes[i].Conns > px.EntryNodes[j].Conns })
	if px.AtProxy, err = q.scalar(ctx, meanLatency(mReqDuration, at, w)); err != nil {
		return px, err
	}
	px.Behind, err = q.scalar(ctx, meanLatency(mIngressDuration, matchers(lIngressProxy, pod), w))
	return px, err
}

// renderIngress writes the chain client → LB → entry node → proxy pod →
// backend pod and the latency split; nothing without an ingress edge.
func (r *Report) renderIngress(b *bytes.Buffer) {
	in := r.Ingress
	if in == nil {
		return
	}
	fmt.Fprintln(b, "\nINGRESS  client → LB → entry node → proxy pod → backend pod  (requests through the proxies)")
	for _, p := range in.Proxies {
		fmt.Fprintf(b, "  proxy %s  entered via %s  on %s\n", p.Pod, entryList(p.Entries), nodeList(p.EntryNodes))
		fmt.Fprintf(b, "    latency (mean)  at proxy %s = before the backends %s + behind %s\n",
			seconds(p.AtProxy), seconds(p.Before()), seconds(p.Behind))
	}
	rw, pw, bw := len("route"), len("proxy pod"), len("backend pod")
	for _, e := range in.Backends {
		rw, pw, bw = width(rw, e.Ingress+" "+e.Route), width(pw, e.ProxyPod), width(bw, e.Pod)
	}
	fmt.Fprintf(b, "  %-*s  %-*s  %-*s  %9s  %6s  %12s  %12s\n", rw, "route", pw, "proxy pod", bw, "backend pod",
		"requests", "share", "behind p50", "behind p90")
	for _, e := range in.Backends {
		fmt.Fprintf(b, "  %-*s  %-*s  %-*s  %9s  %6s  %12s  %12s\n", rw, e.Ingress+" "+e.Route, pw, e.ProxyPod, bw, e.Pod,
			count(e.Requests), percent(e.Share), seconds(e.BehindP50), seconds(e.BehindP90))
	}
}

func entryList(es []EntryCount) string {
	if len(es) == 0 {
		return "–"
	}
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = fmt.Sprintf("%s %s", e.Entry, count(e.Conns))
	}
	return strings.Join(parts, " · ")
}

func nodeList(ns []NodeCount) string {
	if len(ns) == 0 {
		return "–"
	}
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = fmt.Sprintf("%s %s", n.Node, count(n.Conns))
	}
	return strings.Join(parts, " · ")
}
