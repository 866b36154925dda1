package main

import (
	"fmt"

	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/prometheusexporter"
	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/prometheusremotewriteexporter"
	"github.com/open-telemetry/opentelemetry-collector-contrib/processor/deltatocumulativeprocessor"
	"go.opentelemetry.io/collector/connector"
	"go.opentelemetry.io/collector/connector/forwardconnector"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/debugexporter"
	"go.opentelemetry.io/collector/exporter/nopexporter"
	"go.opentelemetry.io/collector/exporter/otlpexporter"
	"go.opentelemetry.io/collector/exporter/otlphttpexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/batchprocessor"
	"go.opentelemetry.io/collector/processor/memorylimiterprocessor"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"

	"github.com/lbpath/lbpath/processor/deployregression"
	"github.com/lbpath/lbpath/processor/lbimbalance"
	"github.com/lbpath/lbpath/receiver/lbsignals"
)

// components lists the factories compiled into the distribution.
func components() (otelcol.Factories, error) {
	var err error
	f := otelcol.Factories{Telemetry: otelconftelemetry.NewFactory()}
	if f.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](
		otlpreceiver.NewFactory(),
		lbsignals.NewFactory(),
	); err != nil {
		return f, fmt.Errorf("receivers: %w", err)
	}
	if f.Processors, err = otelcol.MakeFactoryMap[processor.Factory](
		batchprocessor.NewFactory(),
		// deltatocumulative: the agents' delta points (scale-out mode) as
		// cumulative series for the Prometheus exporter, whose own
		// accumulator drops a delta whose start is not the previous end —
		// every series that skipped an interval.
		deltatocumulativeprocessor.NewFactory(),
		memorylimiterprocessor.NewFactory(),
		lbimbalance.NewFactory(),
		deployregression.NewFactory(),
	); err != nil {
		return f, fmt.Errorf("processors: %w", err)
	}
	if f.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](
		otlpexporter.NewFactory(),
		otlphttpexporter.NewFactory(),
		debugexporter.NewFactory(),
		// nop: the chart's traces pipeline when no trace backend is
		// configured, so agents' span exports succeed instead of failing
		// against a receiver with no trace service.
		nopexporter.NewFactory(),
		prometheusexporter.NewFactory(),
		prometheusremotewriteexporter.NewFactory(),
	); err != nil {
		return f, fmt.Errorf("exporters: %w", err)
	}
	// forward: the scale-out chart splits the metrics pipeline so that
	// only the Prometheus branch goes through deltatocumulative.
	if f.Connectors, err = otelcol.MakeFactoryMap[connector.Factory](
		forwardconnector.NewFactory(),
	); err != nil {
		return f, fmt.Errorf("connectors: %w", err)
	}
	return f, nil
}
