// Package dashboards builds lbpath's Grafana dashboards as code with the
// Grafana Foundation SDK. The generated JSON under json/ is committed (Grafana
// provisioning and Helm read files, not Go); a test fails when it drifts from
// this code. Queries lists every PromQL expression the dashboards run, so that
// a checker can parse, name-check and evaluate them (see querycheck).
package dashboards

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

//go:generate go run ./cmd/gen

// Board is one dashboard and the file stem it is written under in json/.
type Board struct {
	File    string // json/<File>.json
	Builder *dashboard.DashboardBuilder
}

// Boards returns every lbpath dashboard, in a stable order.
func Boards() []Board {
	return []Board{
		{"lbpath-overview", overview()},
		{"lbpath-service-balance", serviceBalance()},
		{"lbpath-pod-latency", podLatency()},
		{"lbpath-deploys", deploys()},
		{"lbpath-client-ip", clientIP()},
		{"lbpath-health", health()},
		{"lbpath-lb-signals", lbSignals()},
	}
}

// Render builds every dashboard and returns its JSON keyed by file name
// (e.g. "lbpath-overview.json"), formatted exactly as committed.
func Render() (map[string][]byte, error) {
	out := make(map[string][]byte)
	for _, b := range Boards() {
		d, err := b.Builder.Build()
		if err != nil {
			return nil, fmt.Errorf("build %s: %w", b.File, err)
		}
		numberPanels(&d)
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false) // keep PromQL's <, > and TraceQL's && readable in the JSON
		enc.SetIndent("", "  ")
		if err := enc.Encode(d); err != nil {
			return nil, fmt.Errorf("marshal %s: %w", b.File, err)
		}
		out[b.File+".json"] = buf.Bytes()
	}
	return out, nil
}

// numberPanels gives every panel and row a stable id (1, 2, …) in layout
// order: Grafana would otherwise number them on load, and panel links
// (viewPanel=N) would change whenever someone saved the dashboard.
func numberPanels(d *dashboard.Dashboard) {
	var n uint32
	for i := range d.Panels {
		n++
		switch p := &d.Panels[i]; {
		case p.Panel != nil:
			p.Panel.Id = cog.ToPtr(n)
		case p.RowPanel != nil:
			p.RowPanel.Id = n
			for j := range p.RowPanel.Panels {
				n++
				p.RowPanel.Panels[j].Id = cog.ToPtr(n)
			}
		}
	}
}

// Query is one PromQL expression a dashboard runs, as written in the JSON
// (Grafana variables such as $service and $__rate_interval unexpanded).
type Query struct {
	Dashboard string // dashboard title
	File      string // json file it is in
	Panel     string // panel title, "variable <name>" or "annotation <name>"
	RefID     string // target refId ("" for variables and annotations)
	Expr      string
	// Instant is true for targets Grafana runs as an instant query (tables,
	// stats); the others are range queries.
	Instant bool
}

// Queries renders the dashboards and extracts every PromQL expression from
// the JSON itself, so what is checked is exactly what Grafana would run:
// panel targets on the Prometheus datasource, query variables
// (label_values(<selector>, <label>) is returned as-is) and annotations.
func Queries() ([]Query, error) {
	files, err := Render()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	var qs []Query
	for _, f := range names {
		got, err := queriesFromJSON(f, files[f])
		if err != nil {
			return nil, err
		}
		qs = append(qs, got...)
	}
	return qs, nil
}

// jsonDashboard is the part of Grafana's dashboard JSON that holds queries.
type jsonDashboard struct {
	Title      string      `json:"title"`
	Panels     []jsonPanel `json:"panels"`
	Templating struct {
		List []struct {
			Type  string `json:"type"`
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name       string `json:"name"`
			Expr       string `json:"expr"`
			Datasource struct {
				Type string `json:"type"`
			} `json:"datasource"`
		} `json:"list"`
	} `json:"annotations"`
}

type jsonPanel struct {
	Title   string      `json:"title"`
	Panels  []jsonPanel `json:"panels"` // collapsed rows
	Targets []struct {
		RefID      string `json:"refId"`
		Expr       string `json:"expr"`
		Instant    bool   `json:"instant"`
		Datasource struct {
			Type string `json:"type"`
		} `json:"datasource"`
	} `json:"targets"`
}

func queriesFromJSON(file string, raw []byte) ([]Query, error) {
	var d jsonDashboard
	if err := json.NewDecoder(bytes.NewReader(raw)).Decode(&d); err != nil {
		return nil, fmt.Errorf("decode %s: %w", file, err)
	}
	var qs []Query
	var walk func(ps []jsonPanel)
	walk = func(ps []jsonPanel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				if t.Datasource.Type == "prometheus" && t.Expr != "" {
					qs = append(qs, Query{Dashboard: d.Title, File: file, Panel: p.Title, RefID: t.RefID, Expr: t.Expr, Instant: t.Instant})
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if s, ok := v.Query.(string); ok && v.Type == "query" {
			qs = append(qs, Query{Dashboard: d.Title, File: file, Panel: "variable " + v.Name, Expr: s, Instant: true})
		}
	}
	for _, a := range d.Annotations.List {
		if a.Datasource.Type == "prometheus" && a.Expr != "" {
			qs = append(qs, Query{Dashboard: d.Title, File: file, Panel: "annotation " + a.Name, Expr: a.Expr})
		}
	}
	return qs, nil
}

// Datasource variables: every query names its datasource through them so
// one JSON works in any Grafana whatever the datasources' UIDs are.
var (
	promDS  = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}
	tempoDS = common.DataSourceRef{Type: cog.ToPtr("tempo"), Uid: cog.ToPtr("${tracing}")}
)

// promQuery is a Prometheus target; every target gets an explicit RefId
// because the SDK sets none and Grafana needs them unique per panel.
func promQuery(refID, expr, legend string) *prometheus.DataqueryBuilder {
	q := prometheus.NewDataqueryBuilder().RefId(refID).Expr(expr).Datasource(promDS)
	if legend != "" {
		q = q.LegendFormat(legend)
	}
	return q
}

// instantQuery is a target for tables and stats that show one value per series.
func instantQuery(refID, expr, legend string) *prometheus.DataqueryBuilder {
	return promQuery(refID, expr, legend).Instant().Format(prometheus.PromQueryFormatTable)
}
