package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestMetricsFlags: an unknown temporality or histogram kind, a series
// limit below 1 or above the bound, an expiry inside two metric intervals
// and the SDK's temporality variable exit 2 naming the flag (or variable)
// and the reason; valid values pass the export configuration's validation
// (the run then stops at --max-connections 0, checked after it and before
// any eBPF is loaded: a check that let a bad value through fails the test
// the same way, never starting the agent).
func TestMetricsFlags(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		env    string
		flag   string
		reason string
	}{
		{args: []string{"--metrics-temporality", "Delta"}, flag: "metrics-temporality", reason: "not cumulative or delta"},
		{args: []string{"--metrics-temporality", ""}, flag: "metrics-temporality", reason: "not cumulative or delta"},
		{args: []string{"--latency-histogram", "native"}, flag: "latency-histogram", reason: "not exponential or explicit"},
		{args: []string{"--max-series-per-metric", "0"}, flag: "max-series-per-metric", reason: "at least 1"},
		{args: []string{"--max-series-per-metric", "-5"}, flag: "max-series-per-metric", reason: "at least 1"},
		{args: []string{"--max-series-per-metric", "2000000"}, flag: "max-series-per-metric", reason: "between 1 and"},
		{args: []string{"--series-expiry", "15s"}, flag: "series-expiry", reason: "twice metric-interval"},
		{args: []string{"--series-expiry", "1m", "--metric-interval", "1m"}, flag: "series-expiry", reason: "twice metric-interval"},
		{args: []string{"--series-expiry", "-1m"}, flag: "series-expiry", reason: "twice metric-interval"},
		{env: "delta", flag: "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", reason: "set --metrics-temporality"},
	} {
		t.Setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", tc.env)
		var out, errb bytes.Buffer
		code := run(append(tc.args, "--max-connections", "0"), &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), tc.flag+":") || !strings.Contains(errb.String(), tc.reason) {
			t.Errorf("%v (env %q): exit %d, stderr %q; want 2 naming %s and %q", tc.args, tc.env, code, errb.String(), tc.flag, tc.reason)
		}
	}
	t.Setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "")
	for _, args := range [][]string{{"--metrics-temporality", "delta"}, {"--metrics-temporality", "cumulative"},
		{"--latency-histogram", "explicit"}, {"--latency-histogram", "exponential"},
		{"--max-series-per-metric", "1"}, {"--series-expiry", "20s"}, {"--series-expiry", "2h", "--metric-interval", "1h"}} {
		var out, errb bytes.Buffer
		code := run(append(args, "--max-connections", "0"), &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), "max-connections:") {
			t.Errorf("%v: exit %d, stderr %q; want the flag accepted (and the run stopped at --max-connections)", args, code, errb.String())
		}
	}
}
