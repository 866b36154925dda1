package main

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzFlags: any command line either runs (not here: no root needed paths
// are excluded by forcing a bad output) or exits 2 with a message; it never
// panics. Every seed ends with an invalid --output so a valid line cannot
// start the agent.
func FuzzFlags(f *testing.F) {
	for _, s := range []string{"", "--pod-cidr 10.0.0.0/8", "--netns /x", "--ring-buffer-bytes 3", "--join-wait -1s",
		"--otlp-protocol udp", "--client-addresses mask", "--otlp-headers a", "--max-connections 0", "-h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := append(strings.Fields(line), "--output", "invalid-for-fuzz")
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		if code != 2 && code != 0 {
			t.Fatalf("exit %d for %q: %s", code, line, errb.String())
		}
		if code == 2 && errb.Len() == 0 {
			t.Fatalf("exit 2 without a message for %q", line)
		}
	})
}

// TestSamplingFlags: a probability outside [0, 1], a word, a negative or
// unit-less threshold exit 2 naming the flag; valid values (decimal and
// fraction) pass the flag stage (the run then stops at the bad --output).
// An --externalname-resolver that is not host:port exits 2 the same way.
func TestSamplingFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--span-sampling", "1.5"}, "span-sampling"},
		{[]string{"--span-sampling", "-0.1"}, "span-sampling"},
		{[]string{"--span-sampling", "NaN"}, "span-sampling"},
		{[]string{"--span-sampling", "half"}, "span-sampling"},
		{[]string{"--span-sampling", "1/0"}, "span-sampling"},
		{[]string{"--slow-threshold", "-1s"}, "slow-threshold"},
		{[]string{"--slow-threshold", "5"}, "slow-threshold"},
		{[]string{"--externalname-resolver", "10.0.0.53"}, "externalname-resolver"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.flag) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s", tc.args, code, errb.String(), tc.flag)
		}
	}
	for _, args := range [][]string{{"--span-sampling", "1/16"}, {"--span-sampling", "0"}, {"--span-sampling", "1"},
		{"--slow-threshold", "0"}, {"--slow-threshold", "250ms"}} {
		var out, errb bytes.Buffer
		code := run(append(args, "--output", "invalid-for-test"), &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), "output") {
			t.Errorf("%v: exit %d, stderr %q; want the flag accepted (and the run stopped at --output)", args, code, errb.String())
		}
	}
}
