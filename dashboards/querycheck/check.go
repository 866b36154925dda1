package querycheck

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/lbpath/lbpath/dashboards"
	"github.com/lbpath/lbpath/deploy/rules"
)

// Query is one PromQL expression lbpath ships, from a dashboard or a rule.
type Query struct {
	Source string // "dashboard" or "rule"
	Group  string // dashboard title or rule group
	Name   string // panel title / variable / annotation, or alert / record name
	RefID  string
	Expr   string // as shipped: Grafana variables unexpanded
	// Instant is true for instant queries (tables, stats, variables, rules).
	Instant bool
}

// String names the query for reports.
func (q Query) String() string {
	s := q.Source + " " + q.Group + " / " + q.Name
	if q.RefID != "" {
		s += " [" + q.RefID + "]"
	}
	return s
}

// All returns every query of the generated dashboards and of
// deploy/rules/lbpath-rules.yaml.
func All() ([]Query, error) {
	dq, err := dashboards.Queries()
	if err != nil {
		return nil, fmt.Errorf("dashboard queries: %w", err)
	}
	var out []Query
	for _, q := range dq {
		out = append(out, Query{Source: "dashboard", Group: q.Dashboard, Name: q.Panel, RefID: q.RefID, Expr: q.Expr, Instant: q.Instant})
	}
	rs, err := rules.All()
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		out = append(out, Query{Source: "rule", Group: r.Group, Name: r.Name(), Expr: r.Expr, Instant: true})
	}
	return out, nil
}

// DefaultVars are the values Expand gives Grafana's variables: every filter
// variable at "All" (its allValue, .*), the lbimbalance signal at its
// default, and intervals a 15 s scrape supports.
var DefaultVars = map[string]string{
	"cluster":         ".*",
	"namespace":       ".*",
	"service":         ".*",
	"deployment":      ".*",
	"signal":          "connections",
	"__rate_interval": "5m",
	"__interval":      "1m",
	"__range":         "1h",
}

var grafanaVar = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|\$([A-Za-z0-9_]+)`)

// labelValuesCall is Grafana's label_values(<selector>, <label>) variable
// query, which Grafana answers from the series API.
var labelValuesCall = regexp.MustCompile(`^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$`)

// Expand turns a shipped expression into plain PromQL: Grafana variables
// get vars' values (DefaultVars for those missing), and a label_values
// variable query becomes the equivalent `group by (label) (selector)`, so
// that it can be parsed and evaluated like any other query.
func Expand(expr string, vars map[string]string) (string, error) {
	var missing []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[2]
		if v, ok := vars[name]; ok {
			return v
		}
		if v, ok := DefaultVars[name]; ok {
			return v
		}
		missing = append(missing, name)
		return m
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("no value for Grafana variables %v", missing)
	}
	if m := labelValuesCall.FindStringSubmatch(out); m != nil {
		out = fmt.Sprintf("group by (%s) (%s)", m[2], m[1])
	}
	return out, nil
}

// newParser is the PromQL parser the check and the evaluation share: the
// default (no experimental functions), as a stock Prometheus server runs.
func newParser() parser.Parser { return parser.NewParser(parser.Options{}) }

// CheckNames parses expr (already expanded) and checks that every metric it
// selects is in the catalog (or is recorded by one of recorded, the rules'
// own recording rules) and that every label it matches, groups or joins on
// exists on the metrics it uses. It returns all problems found.
func (c *Catalog) CheckNames(expr string, recorded map[string]map[string]bool) error {
	e, err := newParser().ParseExpr(expr)
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	var errs []error
	used := map[string]bool{} // labels of all metrics the expression reads, plus globals
	for l := range c.Global {
		used[l] = true
	}
	var groupings [][]string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			labels, err := c.selectorLabels(n, recorded)
			if err != nil {
				errs = append(errs, err)
				return nil
			}
			for l := range labels {
				used[l] = true
			}
			for _, m := range n.LabelMatchers {
				if m.Name == "__name__" {
					continue
				}
				if !labels[m.Name] && !c.Global[m.Name] {
					errs = append(errs, fmt.Errorf("%s has no label %q", n.Name, m.Name))
				}
			}
		case *parser.AggregateExpr:
			groupings = append(groupings, n.Grouping)
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				groupings = append(groupings, n.VectorMatching.MatchingLabels, n.VectorMatching.Include)
			}
		case *parser.Call:
			// label_replace / label_join create their destination label.
			if (n.Func.Name == "label_replace" || n.Func.Name == "label_join") && len(n.Args) > 1 {
				if s, ok := n.Args[1].(*parser.StringLiteral); ok {
					used[s.Val] = true
				}
			}
		}
		return nil
	})
	for _, g := range groupings {
		for _, l := range g {
			if !used[l] {
				errs = append(errs, fmt.Errorf("label %q is on none of the metrics the expression reads", l))
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Catalog) selectorLabels(vs *parser.VectorSelector, recorded map[string]map[string]bool) (map[string]bool, error) {
	if vs.Name == "" {
		return nil, fmt.Errorf("selector %s has no metric name", vs.String())
	}
	if m, ok := c.Metrics[vs.Name]; ok {
		return m.Labels, nil
	}
	if ls, ok := recorded[vs.Name]; ok {
		return ls, nil
	}
	return nil, fmt.Errorf("metric %s is not declared by lbpath (known: %s)", vs.Name, c.near(vs.Name))
}

// near lists declared names sharing the first three tokens, to make a typo
// or a missing unit suffix obvious in the error.
func (c *Catalog) near(name string) string {
	toks := strings.SplitN(name, "_", 4)
	prefix := strings.Join(toks[:min(3, len(toks))], "_")
	var out []string
	for n := range c.Metrics {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		return "none with prefix " + prefix
	}
	return strings.Join(out, ", ")
}

// Recorded returns the series the rules' recording rules create, with the
// labels each can carry (those of the metrics its expression reads): rule
// expressions may use them like declared metrics.
func (c *Catalog) Recorded(rs []rules.Rule) (map[string]map[string]bool, error) {
	out := map[string]map[string]bool{}
	for _, r := range rs {
		if r.Record == "" {
			continue
		}
		e, err := newParser().ParseExpr(r.Expr)
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", r.Record, err)
		}
		ls := map[string]bool{}
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				if m, ok := c.Metrics[vs.Name]; ok {
					for l := range m.Labels {
						ls[l] = true
					}
				}
			}
			return nil
		})
		out[r.Record] = ls
	}
	return out, nil
}
