package rules

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	promrules "github.com/prometheus/prometheus/rules"
	"go.yaml.in/yaml/v3"
)

// unitTestFile is promtool's rule unit-test format (the subset used here),
// so `promtool test rules tests/*.yaml` runs the same files.
type unitTestFile struct {
	RuleFiles          []string       `yaml:"rule_files"`
	EvaluationInterval model.Duration `yaml:"evaluation_interval"`
	Tests              []struct {
		Name        string         `yaml:"name"`
		Interval    model.Duration `yaml:"interval"`
		InputSeries []struct {
			Series string `yaml:"series"`
			Values string `yaml:"values"`
		} `yaml:"input_series"`
		AlertRuleTest []struct {
			EvalTime  model.Duration `yaml:"eval_time"`
			Alertname string         `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func TestRulesFileIsValid(t *testing.T) {
	rs, err := All()
	if err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, r := range rs {
		if r.Alert != "" {
			alerts[r.Alert] = true
		}
	}
	for _, a := range []string{"LbpathHotPod", "LbpathServiceImbalanced", "LbpathDeployRegression", "LbpathClientIPLost", "LbpathAgentDropping", "LbpathAgentExportFailing", "LbpathAgentSilent", "LbpathConntrackDropping", "LbpathConntrackNearlyFull",
		"LbpathLoadBalancerPending", "LbpathManyLoadBalancers", "LbpathLocalServiceNoHealthyNode", "LbpathLocalReadyPodsNotInLoadBalancer"} {
		if !alerts[a] {
			t.Errorf("alert %s missing", a)
		}
	}
}

// TestAlertUnitTests evaluates the alerting rules of lbpath-rules.yaml step
// by step over each test's series, with `for` honoured, exactly as promtool
// does, and compares the firing alerts at each eval_time.
func TestAlertUnitTests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("tests", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no rule tests: %v", err)
	}
	tested := map[string]map[bool]bool{} // alert → fired/quiet cases seen
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var utf unitTestFile
		dec := yaml.NewDecoder(strings.NewReader(string(raw)))
		dec.KnownFields(true)
		if err := dec.Decode(&utf); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(utf.RuleFiles) != 1 || filepath.Base(utf.RuleFiles[0]) != File {
			t.Fatalf("%s: rule_files must be [../%s]", f, File)
		}
		for _, tc := range utf.Tests {
			t.Run(filepath.Base(f)+"/"+tc.Name, func(t *testing.T) {
				var load strings.Builder
				fmt.Fprintf(&load, "load %s\n", tc.Interval)
				for _, s := range tc.InputSeries {
					fmt.Fprintf(&load, "  %s %s\n", s.Series, s.Values)
				}
				st := promqltest.LoadedStorage(t, load.String())
				ng := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
				alerting := alertingRules(t)
				q := promrules.EngineQueryFunc(ng, st)

				var end time.Duration
				for _, a := range tc.AlertRuleTest {
					end = max(end, time.Duration(a.EvalTime))
				}
				interval := time.Duration(utf.EvaluationInterval)
				if interval == 0 {
					interval = time.Minute
				}
				firing := map[time.Duration]map[string][]labels.Labels{}
				for ts := time.Duration(0); ts <= end; ts += interval {
					firing[ts] = map[string][]labels.Labels{}
					for _, r := range alerting {
						if _, err := r.Eval(context.Background(), 0, time.Unix(0, 0).Add(ts), q, nil, 0); err != nil {
							t.Fatalf("%s at %s: %v", r.Name(), ts, err)
						}
						for _, a := range r.ActiveAlerts() {
							if a.State == promrules.StateFiring {
								firing[ts][r.Name()] = append(firing[ts][r.Name()], a.Labels)
							}
						}
					}
				}
				for _, at := range tc.AlertRuleTest {
					ts := time.Duration(at.EvalTime)
					if ts%interval != 0 {
						t.Fatalf("eval_time %s is not a multiple of the evaluation interval", ts)
					}
					if tested[at.Alertname] == nil {
						tested[at.Alertname] = map[bool]bool{}
					}
					tested[at.Alertname][len(at.ExpAlerts) > 0] = true
					var want []string
					for _, e := range at.ExpAlerts {
						want = append(want, labels.FromMap(e.ExpLabels).String())
					}
					var got []string
					for _, l := range firing[ts][at.Alertname] {
						got = append(got, labels.NewBuilder(l).Del("alertname").Labels().String())
					}
					sort.Strings(want)
					sort.Strings(got)
					if strings.Join(want, "\n") != strings.Join(got, "\n") {
						t.Errorf("%s at %s:\n got  %v\n want %v", at.Alertname, ts, got, want)
					}
				}
			})
		}
	}
	rs, _ := All()
	for _, r := range rs {
		if r.Alert == "" {
			continue
		}
		if !tested[r.Alert][true] || !tested[r.Alert][false] {
			t.Errorf("%s needs a case where it fires and one where it does not (have %v)", r.Alert, tested[r.Alert])
		}
	}
}

func alertingRules(t *testing.T) []*promrules.AlertingRule {
	t.Helper()
	rs, err := All()
	if err != nil {
		t.Fatal(err)
	}
	p := parser.NewParser(parser.Options{})
	var out []*promrules.AlertingRule
	for _, r := range rs {
		if r.Alert == "" {
			continue
		}
		e, err := p.ParseExpr(r.Expr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, promrules.NewAlertingRule(r.Alert, e, r.For, 0, labels.FromMap(r.Labels), labels.EmptyLabels(), labels.EmptyLabels(), "", true, slog.New(slog.DiscardHandler)))
	}
	return out
}
