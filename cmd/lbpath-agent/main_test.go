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
