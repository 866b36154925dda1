package exporter

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lbpath/lbpath/agent/path"
)

// Pod naming self-metrics (docs/TELEMETRY.md, "How pods are named").
const (
	MetricPodNaming         = "lbpath.agent.pod_naming"
	MetricPodNamingDisagree = "lbpath.agent.pod_naming.disagreements"
	MetricPodNetnsAvailable = "lbpath.agent.pod_netns.available"
	attrPodSource           = "lbpath.pod_source"
)

// PodNaming is what the agent reports about how it named server pods.
type PodNaming struct {
	BySource  []path.NamingCount
	Disagree  uint64
	Available bool // the namespace resolver runs (false: IP index only)
}

type podNamingFunc = func() PodNaming

// SetPodNaming gives the exporter the reader of the agent's pod naming
// counts. Until it is called those metrics are not reported.
func (e *Exporter) SetPodNaming(read func() PodNaming) {
	e.podNaming.Store(&read)
}

// initPodNaming registers lbpath.agent.pod_naming (server records by how
// their pod was named), its disagreements and whether the namespace
// resolver is available.
func initPodNaming(m metric.Meter, e *Exporter) error {
	named, err := m.Int64ObservableCounter(MetricPodNaming, metric.WithUnit("{connection}"),
		metric.WithDescription("The cluster's server connections by how their pod was named: netns (exact), ip_index (fallback), unnamed"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricPodNaming, err)
	}
	disagree, err := m.Int64ObservableCounter(MetricPodNamingDisagree, metric.WithUnit("{connection}"),
		metric.WithDescription("Server connections whose network namespace named another pod than the IP index (the namespace is trusted)"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricPodNamingDisagree, err)
	}
	avail, err := m.Int64ObservableGauge(MetricPodNetnsAvailable, metric.WithUnit("1"),
		metric.WithDescription("1 when pods are named from sockets' network namespaces, 0 when the agent cannot read them (IP index only)"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricPodNetnsAvailable, err)
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		fn := e.podNaming.Load()
		if fn == nil {
			return nil
		}
		pn := (*fn)()
		for _, c := range pn.BySource {
			o.ObserveInt64(named, int64(c.Count), metric.WithAttributes(attribute.String(attrPodSource, string(c.Source))))
		}
		o.ObserveInt64(disagree, int64(pn.Disagree))
		a := int64(0)
		if pn.Available {
			a = 1
		}
		o.ObserveInt64(avail, a)
		return nil
	}, named, disagree, avail)
	if err != nil {
		return fmt.Errorf("register %s: %w", MetricPodNaming, err)
	}
	return nil
}
