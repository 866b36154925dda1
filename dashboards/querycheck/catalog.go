// Package querycheck proves lbpath's dashboard and alert queries against
// lbpath's declared telemetry: it parses every PromQL expression, checks
// each metric and label name against a catalog derived by parsing lbpath's
// own sources (exporter/instruments.go, processor/*, docs/TELEMETRY.md)
// through Prometheus' OTLP name translation, and runs the queries either on
// the PromQL engine as a library or against any Prometheus HTTP API.
package querycheck

import (
	"bufio"
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/otlptranslator"
)

// Metric is one Prometheus series name lbpath produces.
type Metric struct {
	Name     string          // Prometheus name, e.g. lbpath_request_duration_seconds_bucket
	OTLPName string          // e.g. lbpath.request.duration
	Unit     string          // OTLP unit
	Kind     string          // counter, gauge, histogram
	Source   string          // file the name was read from
	Labels   map[string]bool // Prometheus label names the series may carry
}

// Catalog is the set of series names and labels lbpath declares, as they
// appear in Prometheus.
type Catalog struct {
	Metrics map[string]*Metric
	// Global labels can be on any series: promoted resource attributes
	// (job from service.name, k8s_node_name, k8s_cluster_name) and those the
	// collector's Prometheus exporter adds (instance, otel_scope_*).
	Global map[string]bool
	// Problems are disagreements between the sources (a metric in code but
	// not in docs/TELEMETRY.md or the reverse); a test requires none.
	Problems []string
}

var (
	metricNamer = otlptranslator.MetricNamer{WithMetricSuffixes: true}
	labelNamer  = otlptranslator.LabelNamer{}
	backticked  = regexp.MustCompile("`([^`]+)`")
	asRow       = regexp.MustCompile(`(?:^|\s)as ([a-z_.]+)`)
)

// promLabel translates an OTLP attribute name to its Prometheus label name.
func promLabel(attr string) string {
	l, err := labelNamer.Build(attr)
	if err != nil {
		return attr
	}
	return l
}

// otlpMetric is a metric as declared in Go source.
type otlpMetric struct {
	name, unit, kind, source string
	labels                   []string // OTLP attribute names
}

// LoadCatalog derives the catalog from the sources under root (the
// repository root): nothing here is a hand-kept list of names.
func LoadCatalog(root string) (*Catalog, error) {
	docs, err := parseDocs(filepath.Join(root, "docs", "TELEMETRY.md"))
	if err != nil {
		return nil, err
	}
	agent, err := parseAgent(filepath.Join(root, "exporter", "instruments.go"), docs)
	if err != nil {
		return nil, err
	}
	procDirs, err := filepath.Glob(filepath.Join(root, "processor", "*", "processor.go"))
	if err != nil {
		return nil, fmt.Errorf("list processors: %w", err)
	}
	if len(procDirs) == 0 {
		return nil, fmt.Errorf("no processor/*/processor.go under %s", root)
	}
	// Collector receivers that emit lbpath metrics declare them the same
	// way, in metrics.go (receiver/lbsignals).
	recvFiles, err := filepath.Glob(filepath.Join(root, "receiver", "*", "metrics.go"))
	if err != nil {
		return nil, fmt.Errorf("list receivers: %w", err)
	}
	procDirs = append(procDirs, recvFiles...)
	var all []otlpMetric
	all = append(all, agent...)
	for _, f := range procDirs {
		ms, err := parseProcessor(f, docs)
		if err != nil {
			return nil, err
		}
		all = append(all, ms...)
	}

	c := &Catalog{Metrics: map[string]*Metric{}, Global: map[string]bool{}}
	for _, a := range docs.resource {
		if a == "service.name" {
			c.Global["job"] = true // the exporter and Prometheus' OTLP receiver map service.name to job
			continue
		}
		c.Global[promLabel(a)] = true
	}
	for _, l := range []string{"instance", "otel_scope_name", "otel_scope_version", "otel_scope_schema_url"} {
		c.Global[l] = true
	}
	seen := map[string]bool{}
	for _, m := range all {
		seen[m.name] = true
		if !docs.names[m.name] {
			c.Problems = append(c.Problems, fmt.Sprintf("%s (%s) is not in docs/TELEMETRY.md", m.name, m.source))
		}
		if err := c.add(m); err != nil {
			return nil, err
		}
	}
	for n := range docs.names {
		if !seen[n] {
			c.Problems = append(c.Problems, fmt.Sprintf("docs/TELEMETRY.md lists %s, which no source declares", n))
		}
	}
	sort.Strings(c.Problems)
	return c, nil
}

func (c *Catalog) add(m otlpMetric) error {
	var typ otlptranslator.MetricType
	switch m.kind {
	case "counter":
		typ = otlptranslator.MetricTypeMonotonicCounter
	case "updowncounter":
		typ = otlptranslator.MetricTypeNonMonotonicCounter
	case "gauge":
		typ = otlptranslator.MetricTypeGauge
	case "histogram":
		typ = otlptranslator.MetricTypeHistogram
	default:
		return fmt.Errorf("%s: unknown instrument kind %q", m.name, m.kind)
	}
	base, err := metricNamer.Build(otlptranslator.Metric{Name: m.name, Unit: m.unit, Type: typ})
	if err != nil {
		return fmt.Errorf("translate %s: %w", m.name, err)
	}
	labels := map[string]bool{}
	for _, a := range m.labels {
		labels[promLabel(a)] = true
	}
	mk := func(name string, extra ...string) {
		ls := make(map[string]bool, len(labels)+len(extra))
		for l := range labels {
			ls[l] = true
		}
		for _, l := range extra {
			ls[l] = true
		}
		c.Metrics[name] = &Metric{Name: name, OTLPName: m.name, Unit: m.unit, Kind: m.kind, Source: m.source, Labels: ls}
	}
	if m.kind == "histogram" {
		// Classic form (explicit buckets): _bucket/_sum/_count. Native form
		// (an exponential histogram through Prometheus' OTLP receiver): one
		// series under the base name. Which one exists depends on the
		// agent's --latency-histogram, so both are declared.
		mk(base+"_bucket", "le")
		mk(base + "_sum")
		mk(base + "_count")
		mk(base)
		return nil
	}
	mk(base)
	return nil
}

// docsTelemetry is what docs/TELEMETRY.md declares.
type docsTelemetry struct {
	names    map[string]bool
	attrs    map[string][]string // agent metric → OTLP attributes (from its table row)
	resource []string            // resource attributes of the agent
}

// parseDocs reads the metric tables of docs/TELEMETRY.md. Agent rows give
// each metric's attributes ("pod set¹" is expanded from its footnote, "as
// connections" from that row); processor rows give names, including the
// shorthand `lbpath.deploy.latency.p50`, `.p90`.
func parseDocs(path string) (*docsTelemetry, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read telemetry docs: %w", err)
	}
	d := &docsTelemetry{names: map[string]bool{}, attrs: map[string][]string{}}
	var section string
	var podSet []string
	type row struct{ names, attrCell string }
	var agentRows []row
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section = strings.TrimPrefix(line, "## ")
			continue
		case strings.HasPrefix(line, "Resource:") && strings.HasPrefix(section, "Spans"):
			for _, m := range backticked.FindAllStringSubmatch(line, -1) {
				d.resource = append(d.resource, strings.SplitN(m[1], "=", 2)[0])
			}
			continue
		case strings.HasPrefix(line, "¹ pod set:"):
			// The footnote may wrap; read until a blank line.
			text := line
			for sc.Scan() && strings.TrimSpace(sc.Text()) != "" {
				text += " " + sc.Text()
			}
			for _, m := range backticked.FindAllStringSubmatch(text, -1) {
				podSet = append(podSet, m[1])
			}
			continue
		}
		if !strings.HasPrefix(line, "| `lbpath.") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) < 2 {
			continue
		}
		var names []string
		prev := ""
		for _, m := range backticked.FindAllStringSubmatch(cells[0], -1) {
			n := m[1]
			if strings.HasPrefix(n, ".") && prev != "" {
				n = prev[:strings.LastIndex(prev, ".")] + n
			}
			if !strings.HasPrefix(n, "lbpath.") {
				continue
			}
			// Metric names in the first column, not attributes in parentheses
			// such as (`lbpath.reason`).
			if strings.Contains(cells[0], "(`"+m[1]+"`)") {
				continue
			}
			names = append(names, n)
			prev = n
		}
		switch {
		case strings.HasPrefix(section, "Metrics (agent"):
			for _, n := range names {
				d.names[n] = true
				agentRows = append(agentRows, row{n, cells[len(cells)-1]})
			}
		case strings.HasPrefix(section, "Metrics computed by the collector"):
			for _, n := range names {
				d.names[n] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scan telemetry docs: %w", err)
	}
	if len(podSet) == 0 || len(d.resource) == 0 || len(agentRows) == 0 {
		return nil, fmt.Errorf("%s: metric tables, pod-set footnote or resource line not found", path)
	}
	for _, r := range agentRows { // rows refer to earlier rows ("as connections")
		var attrs []string
		if strings.Contains(r.attrCell, "pod set") {
			attrs = append(attrs, podSet...)
		}
		if m := asRow.FindStringSubmatch(r.attrCell); m != nil {
			ref, ok := d.attrs["lbpath."+m[1]]
			if !ok {
				return nil, fmt.Errorf("%s: %s: attributes %q refer to an unknown or later row", path, r.names, m[0])
			}
			attrs = append(attrs, ref...)
		}
		for _, m := range backticked.FindAllStringSubmatch(r.attrCell, -1) {
			attrs = append(attrs, m[1])
		}
		d.attrs[r.names] = attrs
	}
	return d, nil
}

// parseAgent reads the exported Metric* name constants of path's package
// and the instrument each is created with (kind from the constructor, unit from
// WithUnit) anywhere in the package's non-test files: self-metrics may be
// created next to the state they observe (exporter/series.go).
func parseAgent(path string, docs *docsTelemetry) ([]otlpMetric, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	files, names := []*ast.File{f}, []string{path}
	others, err := filepath.Glob(filepath.Join(filepath.Dir(path), "*.go"))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", filepath.Dir(path), err)
	}
	for _, o := range others {
		if o == path || strings.HasSuffix(o, "_test.go") {
			continue
		}
		of, err := parser.ParseFile(token.NewFileSet(), o, nil, 0)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", o, err)
		}
		files, names = append(files, of), append(names, o)
	}
	// The names may be declared next to their instrument too
	// (exporter/sampling.go, lbprobes.go), so every file's constants count.
	consts := map[string]string{}
	for _, f := range files {
		for _, decl := range f.Decls {
			g, ok := decl.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if !strings.HasPrefix(id.Name, "Metric") || !id.IsExported() || i >= len(vs.Values) {
						continue
					}
					if v, ok := stringLit(vs.Values[i]); ok {
						consts[id.Name] = v
					}
				}
			}
		}
	}
	if len(consts) == 0 {
		return nil, fmt.Errorf("%s: no exported Metric* constants", path)
	}
	var out []otlpMetric
	found := map[string]bool{}
	source := path
	inspect := func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		id, ok := call.Args[0].(*ast.Ident)
		if !ok {
			return true
		}
		name, ok := consts[id.Name]
		if !ok {
			return true
		}
		kind := instrumentKind(sel.Sel.Name)
		if kind == "" {
			return true
		}
		m := otlpMetric{name: name, kind: kind, source: source, labels: docs.attrs[name]}
		for _, a := range call.Args[1:] {
			if c, ok := a.(*ast.CallExpr); ok {
				if s, ok := c.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "WithUnit" && len(c.Args) == 1 {
					m.unit, _ = stringLit(c.Args[0])
				}
			}
		}
		if !found[id.Name] { // one constructor call per name suffices
			out = append(out, m)
		}
		found[id.Name] = true
		return true
	}
	for i, f := range files {
		source = names[i]
		ast.Inspect(f, inspect)
	}
	for c := range consts {
		if !found[c] {
			return nil, fmt.Errorf("%s: constant %s is not passed to any instrument constructor", path, c)
		}
	}
	return out, nil
}

// instrumentKind maps an OTel Meter constructor to a metric kind.
func instrumentKind(ctor string) string {
	switch {
	case strings.HasSuffix(ctor, "UpDownCounter"):
		return "updowncounter"
	case strings.HasSuffix(ctor, "Counter"):
		return "counter"
	case strings.HasSuffix(ctor, "Histogram"):
		return "histogram"
	case strings.HasSuffix(ctor, "Gauge"):
		return "gauge"
	}
	return ""
}

// parseProcessor reads a collector processor's output metrics: the calls
// newGauge/newCounter(ms, name, unit, desc) and newMetric(ms, name, unit,
// desc, counter), and its attr* attribute-name constants. A name built as
// "prefix."+x is expanded with the names docs/TELEMETRY.md lists under that
// prefix (the processor builds lbpath.deploy.latency.p50/p90/p99 that way).
func parseProcessor(path string, docs *docsTelemetry) ([]otlpMetric, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	var attrs []string
	for _, decl := range f.Decls {
		g, ok := decl.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, id := range vs.Names {
				if strings.HasPrefix(id.Name, "attr") && i < len(vs.Values) {
					if v, ok := stringLit(vs.Values[i]); ok {
						attrs = append(attrs, v)
					}
				}
			}
		}
	}
	var out []otlpMetric
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) < 3 {
			return true
		}
		fn, ok := call.Fun.(*ast.Ident)
		if !ok {
			return true
		}
		var kind string
		switch fn.Name {
		case "newGauge":
			kind = "gauge"
		case "newCounter":
			kind = "counter"
		case "newMetric":
			kind = "gauge"
			if len(call.Args) >= 5 {
				if b, ok := call.Args[4].(*ast.Ident); ok && b.Name == "true" {
					kind = "counter"
				}
			}
		default:
			return true
		}
		unit, _ := stringLit(call.Args[2])
		var names []string
		if s, ok := stringLit(call.Args[1]); ok {
			names = []string{s}
		} else if b, ok := call.Args[1].(*ast.BinaryExpr); ok && b.Op == token.ADD {
			if prefix, ok := stringLit(b.X); ok {
				for n := range docs.names {
					if strings.HasPrefix(n, prefix) && !strings.Contains(n[len(prefix):], ".") && isQuantileName(n[len(prefix):]) {
						names = append(names, n)
					}
				}
				sort.Strings(names)
			}
		}
		for _, n := range names {
			out = append(out, otlpMetric{name: n, unit: unit, kind: kind, source: path, labels: attrs})
		}
		return true
	})
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no output metrics found", path)
	}
	return out, nil
}

// isQuantileName is true for p50, p90, p99, …: the only computed suffix a
// processor appends to a name prefix.
func isQuantileName(s string) bool {
	if len(s) < 2 || s[0] != 'p' {
		return false
	}
	_, err := strconv.Atoi(s[1:])
	return err == nil
}

func stringLit(e ast.Expr) (string, bool) {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(bl.Value)
	return s, err == nil
}
