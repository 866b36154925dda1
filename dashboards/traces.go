package dashboards

import (
	"bytes"
	"encoding/json"
	"net/url"
	"regexp"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/tempo"
)

// Why panels link to a trace *search* and not to one trace ID: lbpath's
// metrics carry no trace IDs. The agent records them outside any span context
// (so no exemplars), and the trace ID is derived per connection from the
// pod-side tuple and the SYN's 64-second epoch (exporter.TraceID), which is
// deliberately never a metric label (cardinality). What a metric series does
// carry is the pod, its node and the Service, and every connection span has
// the same names as attributes (k8s.pod.name, k8s.service.name, …). So the
// link searches the tracing backend for lbpath-agent spans of that pod over
// the panel's time range; each result is a trace whose ID both nodes derived
// independently, so opening it shows the whole LB → node → pod path. The
// "Connection traces" tables do the same search up front, and Grafana links
// their traceID column straight into the trace view.

// agentService is the service.name resource attribute of lbpath-agent spans.
const agentService = "lbpath-agent"

// placeholder matches Grafana's ${...} interpolations, which must stay
// literal in a link URL so Grafana can substitute them.
var placeholder = regexp.MustCompile(`%24%7B[^%]*(%3A[a-z]+)?%7D`)

// exploreURL is a Grafana Explore link with one query pane. Grafana fills in
// the ${...} placeholders per clicked series before following the link.
func exploreURL(dsUID string, query map[string]any) string {
	pane := map[string]any{
		"datasource": dsUID,
		"queries":    []any{query},
		"range":      map[string]string{"from": "${__from}", "to": "${__to}"},
	}
	var raw bytes.Buffer
	enc := json.NewEncoder(&raw)
	enc.SetEscapeHTML(false) // TraceQL's && must reach Grafana as &&, not \u0026
	if err := enc.Encode(map[string]any{"lbpath": pane}); err != nil {
		panic(err) // maps of strings and numbers always marshal
	}
	esc := url.QueryEscape(strings.TrimSpace(raw.String()))
	esc = placeholder.ReplaceAllStringFunc(esc, func(s string) string {
		u, err := url.QueryUnescape(s)
		if err != nil {
			return s
		}
		return u
	})
	return "/explore?schemaVersion=1&orgId=1&panes=" + esc
}

// traceLinks are the data links of a panel whose series carry the label
// podLabel: one Tempo and one Jaeger search for that pod's connection spans.
func traceLinks(podLabel string) []cog.Builder[dashboard.DashboardLink] {
	pod := "${__field.labels." + podLabel + "}"
	tq := exploreURL("${tempo}", map[string]any{
		"refId":      "A",
		"datasource": map[string]string{"type": "tempo", "uid": "${tempo}"},
		"queryType":  "traceql",
		"query":      `{resource.service.name="` + agentService + `" && span.k8s.pod.name="` + pod + `"}`,
		"limit":      20,
	})
	jq := exploreURL("${jaeger}", map[string]any{
		"refId":      "A",
		"datasource": map[string]string{"type": "jaeger", "uid": "${jaeger}"},
		"queryType":  "search",
		"service":    agentService,
		"tags":       "k8s.pod.name=" + pod,
		"limit":      20,
	})
	return []cog.Builder[dashboard.DashboardLink]{
		dashboard.NewDashboardLinkBuilder("Connection traces of ${__field.labels." + podLabel + "} (Tempo)").
			Type(dashboard.DashboardLinkTypeLink).Url(tq),
		dashboard.NewDashboardLinkBuilder("Connection traces of ${__field.labels." + podLabel + "} (Jaeger)").
			Type(dashboard.DashboardLinkTypeLink).Url(jq),
	}
}

// tracesTable lists recent lbpath connection traces matching a TraceQL
// filter; the traceID column opens the trace view.
func tracesTable(title, filter string) *table.PanelBuilder {
	q := `{resource.service.name="` + agentService + `" && span.k8s.namespace.name=~"${namespace:regex}" && span.k8s.service.name=~"${service:regex}"` + filter + `}`
	return table.NewPanelBuilder().
		Title(title).
		Description("lbpath connection spans from the Tempo datasource. Both nodes of a cross-node connection derive the same trace ID, so a trace shows the LB → node → pod hops together. Click a trace ID to open it.").
		Datasource(tempoDS).
		WithTarget(tempo.NewDataqueryBuilder().RefId("A").QueryType("traceql").Query(q).Limit(20).Datasource(tempoDS)).
		Height(8).Span(24)
}
