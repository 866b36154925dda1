package exporter

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
)

// initIngress creates the instruments of the aggregate ingress edge: proxy
// pod → backend Service → backend pod. Requests and their latency come from
// the backend pod's node (its accepting socket's request turns, the client
// being a proxy pod); connections from the proxy pod's node (its outbound
// client sockets). Their attributes are Kubernetes names only: Ingress,
// route, proxy pod, backend Service and pod. They are not admitted through
// --max-series-per-metric (known gap: bounded by the Ingress routes times
// proxy and backend pods, not by a limit).
func (g *generation) initIngress(m metric.Meter) error {
	var err, e2 error
	g.ingressRequests, err = m.Int64Counter(MetricIngressRequests, metric.WithUnit("{request}"),
		metric.WithDescription("Requests an ingress proxy pod sent to a backend pod, counted at the backend pod"))
	g.ingressDuration, e2 = m.Float64Histogram(MetricIngressDuration, metric.WithUnit("s"),
		metric.WithDescription("Latency behind the ingress proxy: at the backend pod, first request byte read to first response byte written"),
		metric.WithExplicitBucketBoundaries(requestBuckets...))
	if err == nil {
		err = e2
	}
	g.ingressConnections, e2 = m.Int64Counter(MetricIngressConns, metric.WithUnit("{connection}"),
		metric.WithDescription("Connections an ingress proxy pod opened to a backend Service, counted at the proxy's node, by backend pod and outcome"))
	if err == nil {
		err = e2
	}
	g.ingressLinks, e2 = m.Int64Counter(MetricIngressLinks, metric.WithUnit("{link}"),
		metric.WithDescription("How an ingress proxy's outbound connections are joined to the inbound side: per_request (an exact span link to the client→proxy connection; none are made) or aggregate (the proxy pod → backend Service → backend pod edge only)"))
	if err == nil {
		err = e2
	}
	if err == nil {
		// Stated, not omitted: a reader of the metric sees that lbpath
		// made no per-request link, rather than guessing from an absence.
		g.ingressLinks.Add(context.Background(), 0, metric.WithAttributeSet(linkPerRequest))
	}
	return err
}

// Link precision of the ingress hop. No inbound→outbound link is exact for
// a proxy that interleaves requests in one worker (nginx) or hands writes
// to other goroutines (Go proxies), so every outbound connection is joined
// to the aggregate edge only and no span link is made
// (docs/ARCHITECTURE.md "Ingress proxies").
var (
	linkPerRequest = attribute.NewSet(attribute.String("lbpath.link", "per_request"))
	linkAggregate  = attribute.NewSet(attribute.String("lbpath.link", "aggregate"))
)

func ingressAttrs(h *kube.IngressHop, pod *kube.Pod, svc *kube.Service) []attribute.KeyValue {
	a := []attribute.KeyValue{
		attribute.String("lbpath.ingress.name", h.Ingress),
		attribute.String("lbpath.ingress.class", h.Class),
		attribute.String("lbpath.ingress.route", h.Route),
		attribute.String("lbpath.ingress.proxy_pod", h.ProxyPod),
	}
	if svc != nil {
		a = append(a, attribute.String("k8s.namespace.name", svc.Namespace), attribute.String("k8s.service.name", svc.Name))
	}
	if pod != nil {
		a = append(a, attribute.String("k8s.pod.name", pod.Name))
	}
	return a
}

func (g *generation) recordIngressRequest(ctx context.Context, r *path.Request) {
	set := metric.WithAttributeSet(attribute.NewSet(ingressAttrs(r.Ingress, r.Pod, r.Service)...))
	g.ingressRequests.Add(ctx, 1, set)
	g.ingressDuration.Record(ctx, r.Req.Latency.Seconds(), set)
}

func (g *generation) recordIngressConnection(ctx context.Context, p *path.Path) {
	a := append(ingressAttrs(p.Ingress, p.Pod, p.Service), attribute.String("lbpath.outcome", string(p.Conn.Outcome)))
	g.ingressConnections.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(a...)))
	g.ingressLinks.Add(ctx, 1, metric.WithAttributeSet(linkAggregate))
}
