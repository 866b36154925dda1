package exporter

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lbpath/lbpath/agent/path"
)

// countNATNotVisible counts a connection lbpath proved translated without
// seeing the translation (diagnosis nat_not_visible), by reason.
func (e *Exporter) countNATNotVisible(p *path.Path) {
	if p.NATNotVisible == "" {
		return
	}
	for i, r := range path.NATNotVisibleReasons {
		if r == p.NATNotVisible {
			e.natHidden[i].Add(1)
		}
	}
}

// NATNotVisible returns the nat_not_visible counts by reason.
func (e *Exporter) NATNotVisible() map[string]uint64 {
	out := map[string]uint64{}
	for i, r := range path.NATNotVisibleReasons {
		out[r] = e.natHidden[i].Load()
	}
	return out
}

// initNATNotVisible registers lbpath.agent.nat_not_visible, every reason
// from 0: "none" must read 0, not absent.
func initNATNotVisible(m metric.Meter, e *Exporter) error {
	c, err := m.Int64ObservableCounter(MetricNATNotVisible, metric.WithUnit("{connection}"),
		metric.WithDescription("Connections whose Service translation lbpath proved but could not see (no conntrack entry, no connect() rewrite), by reason"))
	if err != nil {
		return fmt.Errorf("create %s: %w", MetricNATNotVisible, err)
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for i, r := range path.NATNotVisibleReasons {
			o.ObserveInt64(c, int64(e.natHidden[i].Load()), metric.WithAttributes(attribute.String("lbpath.nat_not_visible.reason", r)))
		}
		return nil
	}, c)
	if err != nil {
		return fmt.Errorf("register %s: %w", MetricNATNotVisible, err)
	}
	return nil
}
