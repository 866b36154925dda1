package lbsignals

import (
	"context"
	"fmt"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"
)

// Type is the receiver's configuration type, "lbsignals".
var Type = component.MustNewType("lbsignals")

// NewFactory returns the factory for the lbsignals receiver.
func NewFactory() receiver.Factory {
	return receiver.NewFactory(
		Type,
		func() component.Config { return createDefaultConfig() },
		receiver.WithMetrics(createMetrics, component.StabilityLevelDevelopment),
	)
}

func createMetrics(_ context.Context, set receiver.Settings, cfg component.Config, next consumer.Metrics) (receiver.Metrics, error) {
	c, ok := cfg.(*Config)
	if !ok {
		return nil, fmt.Errorf("lbsignals: unexpected config type %T", cfg)
	}
	return newReceiver(c, next, set.Logger), nil
}
