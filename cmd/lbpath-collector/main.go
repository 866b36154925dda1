// Command lbpath-collector is an OpenTelemetry Collector distribution with
// lbpath's processors (lbimbalance, deployregression) and the receivers,
// processors and exporters a cluster needs around them: OTLP in; batch and
// memory_limiter; OTLP, debug, Prometheus scrape and Prometheus remote-write
// out. It is a plain main rather than builder output so that it builds
// inside the lbpath module with the versions pinned there.
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
			Command:     "lbpath-collector",
			Description: "OpenTelemetry Collector with lbpath's load-balancing and rollout processors",
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
