// Package rules holds lbpath's Prometheus alerting and recording rules
// (lbpath-rules.yaml, embedded so that tools and tests read exactly the
// committed file) and exposes their expressions for checking.
package rules

import (
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// File is the rules file's name in this directory.
const File = "lbpath-rules.yaml"

// YAML is the committed rules file.
//
//go:embed lbpath-rules.yaml
var YAML []byte

// Rule is one alerting or recording rule.
type Rule struct {
	Group  string
	Alert  string // set for alerting rules
	Record string // set for recording rules
	Expr   string
	For    time.Duration
	Labels map[string]string // labels the rule adds (severity)
}

// Name is the alert's or the recorded series' name.
func (r Rule) Name() string {
	if r.Alert != "" {
		return r.Alert
	}
	return r.Record
}

// Parse validates content as a Prometheus rules file (strictly: unknown
// fields are errors, as in promtool check rules) and returns its rules.
func Parse(content []byte) ([]Rule, error) {
	rgs, errs := rulefmt.Parse(content, false, model.LegacyValidation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return nil, fmt.Errorf("parse rules: %w", errors.Join(errs...))
	}
	var out []Rule
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			out = append(out, Rule{Group: g.Name, Alert: r.Alert, Record: r.Record, Expr: r.Expr, For: time.Duration(r.For), Labels: r.Labels})
		}
	}
	return out, nil
}

// All returns the rules of the committed file.
func All() ([]Rule, error) {
	return Parse(YAML)
}
