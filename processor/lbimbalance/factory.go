package lbimbalance

import (
	"context"
	"fmt"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processorhelper"
)

// Type is the processor's configuration type, "lbimbalance".
var Type = component.MustNewType("lbimbalance")

// scopeName names the instrumentation scope of the metrics this processor
// appends, so they can be told apart from the agents' own.
const scopeName = "github.com/lbpath/lbpath/processor/lbimbalance"

// NewFactory returns the factory for the lbimbalance processor.
func NewFactory() processor.Factory {
	return processor.NewFactory(
		Type,
		func() component.Config { return createDefaultConfig() },
		processor.WithMetrics(createMetrics, component.StabilityLevelDevelopment),
	)
}

func createMetrics(ctx context.Context, set processor.Settings, cfg component.Config, next consumer.Metrics) (processor.Metrics, error) {
	c, ok := cfg.(*Config)
	if !ok {
		return nil, fmt.Errorf("lbimbalance: unexpected config type %T", cfg)
	}
	p := newImbalance(c, set.Logger)
	// MutatesData: the computed ResourceMetrics is appended to the batch
	// it was computed from, so fan-out must hand us our own copy.
	return processorhelper.NewMetrics(ctx, set, cfg, next, p.processMetrics,
		processorhelper.WithCapabilities(consumer.Capabilities{MutatesData: true}))
}
