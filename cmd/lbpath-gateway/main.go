// Command lbpath-gateway is the stateless first tier of lbpath's scale-out
// collectors: a small OpenTelemetry Collector distribution that receives the
// agents' OTLP and forwards it, with the contrib loadbalancing exporter, to
// the aggregation tier (lbpath-collector replicas behind a headless
// Service), so that every data point of one Kubernetes Service reaches the
// same aggregator and both halves of a connection's trace reach the same
// one.
//
// It is its own Go module because the module proxy serves the contrib
// loadbalancing exporter only at v0.160.0/v0.161.0, not at the collector
// release the lbpath module pins; the tiers speak OTLP to each other, so
// they need not share a collector version. v0.160.0 is used: v0.161.0
// needs an AWS SDK module version the proxy does not serve.
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/otelcol"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	set := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "lbpath-gateway",
			Description: "lbpath gateway: routes agents' OTLP to lbpath-collector replicas by Kubernetes Service and trace ID",
			Version:     version,
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					fileprovider.NewFactory(),
					envprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
				DefaultScheme: "env",
			},
		},
	}
	if err := otelcol.NewCommand(set).Execute(); err != nil {
		log.Fatal(err)
	}
}
