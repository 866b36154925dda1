package lbsignals

import (
	"context"
	"fmt"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/receiverhelper"
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
	// The collector's own receiver telemetry (accepted/refused points)
	// counts what the pipeline refused, e.g. under memory_limiter.
	obs, err := receiverhelper.NewObsReport(receiverhelper.ObsReportSettings{ReceiverID: set.ID, Transport: "k8sapi", ReceiverCreateSettings: set})
	if err != nil {
		return nil, fmt.Errorf("lbsignals: %w", err)
	}
	r := newReceiver(c, next, set.Logger)
	r.obs = obs
	return r, nil
}
