package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestBadFlags: every bad flag exits 2 naming the flag, before building.
func TestBadFlags(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-registry", "Not A Registry"}, "-registry"},
		{[]string{"-registry", ""}, "-registry"},
		{[]string{"-tag", "a b"}, "-tag"},
		{[]string{"-tag", strings.Repeat("x", 129)}, "-tag"},
		{[]string{"-nope"}, "-nope"},
		{[]string{"extra"}, `"extra"`},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		if code := run(c.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 naming %s", c.args, code, errb.String(), c.want)
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %q", c.args, out.String())
		}
	}
}
