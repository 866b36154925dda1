package exporter

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lbpath/lbpath/agent/path"
)

// MetricHealthProbes counts the load balancers' health probes of
// externalTrafficPolicy Local Services that arrived at this node (class
// lb_health_check).
const MetricHealthProbes = "lbpath.loadbalancer.health_probes"

// healthProbesFunc reads the probes that arrived at the node, per Service
// and outcome.
type healthProbesFunc = func() []path.ProbeCount

// SetHealthProbes gives the exporter the reader of the agent's counts of
// load-balancer health probes for lbpath.loadbalancer.health_probes. Until
// it is called (an agent without the API server cannot tell a probe) that
// metric is not reported.
func (e *Exporter) SetHealthProbes(read func() []path.ProbeCount) {
	e.healthProbes.Store(&read)
}

// initHealthProbes registers lbpath.loadbalancer.health_probes. The node
// the probes arrived at is the reporting agent's: the resource's
// k8s.node.name, as on the other node-level metrics, and the data point's
// too. The point's is what makes the node a label where resource
// attributes are not promoted (Prometheus' OTLP receiver by default,
// testbed/prometheus); there is no clash, both are the same node (unlike
// the per-pod metrics, whose point carries the pod's node).
func initHealthProbes(m metric.Meter, e *Exporter) error {
	probes, err := m.Int64ObservableCounter(MetricHealthProbes, metric.WithUnit("{connection}"),
		metric.WithDescription("Load-balancer health probes (connections to the Service's healthCheckNodePort from outside the node, not from a pod) that arrived at this node, by Service and outcome"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricHealthProbes, err)
	}
	node := attribute.String("k8s.node.name", e.cfg.Node)
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		fn := e.healthProbes.Load()
		if fn == nil {
			return nil
		}
		for _, c := range (*fn)() {
			o.ObserveInt64(probes, int64(c.Count), metric.WithAttributes(
				attribute.String("k8s.namespace.name", c.Namespace), attribute.String("k8s.service.name", c.Service),
				node, attribute.String("lbpath.outcome", string(c.Outcome))))
		}
		return nil
	}, probes)
	if err != nil {
		return fmt.Errorf("register %s: %w", MetricHealthProbes, err)
	}
	return nil
}
