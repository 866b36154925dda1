package exporter

import (
	"strings"
	"testing"
)

// FuzzParseHeaders: header strings parse or fail with a message naming the
// flag; parsed keys are never empty.
func FuzzParseHeaders(f *testing.F) {
	for _, s := range []string{"", "a=b", "a=b,c=d", "=x", "a", "a=b,,c", "authorization=Bearer x=y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHeaders(s)
		if err != nil {
			if !strings.Contains(err.Error(), "otlp-headers") {
				t.Fatalf("error does not name the flag: %v", err)
			}
			return
		}
		for k := range h {
			if strings.TrimSpace(k) == "" {
				t.Fatalf("empty key from %q", s)
			}
		}
	})
}
