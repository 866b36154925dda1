package manifests

import (
	"strings"
	"testing"
)

// TestAgentProbesReachTheHealthEndpoint: the DaemonSet's probes ask the
// address the agent is told to bind (--health-addr), on loopback, at the
// paths the agent serves — a port changed in one place only would make
// every agent unready.
func TestAgentProbesReachTheHealthEndpoint(t *testing.T) {
	d := decodeMain(t)
	c := d.ds[0].Spec.Template.Spec.Containers[0]
	var addr string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--health-addr="); ok {
			addr = v
		}
	}
	if addr == "" {
		t.Fatalf("agent args lack --health-addr: %v", c.Args)
	}
	host, port, _ := strings.Cut(addr, ":")
	if host != "127.0.0.1" {
		t.Errorf("--health-addr=%s: want it on 127.0.0.1 (the counters stay off the node's network)", addr)
	}
	for _, p := range []struct {
		name, path string
		get        func() (string, string, string, bool)
	}{
		{"livenessProbe", "/healthz", func() (string, string, string, bool) {
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil {
				return "", "", "", false
			}
			g := c.LivenessProbe.HTTPGet
			return g.Host, g.Path, g.Port.String(), true
		}},
		{"readinessProbe", "/readyz", func() (string, string, string, bool) {
			if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil {
				return "", "", "", false
			}
			g := c.ReadinessProbe.HTTPGet
			return g.Host, g.Path, g.Port.String(), true
		}},
	} {
		h, path, pt, ok := p.get()
		if !ok {
			t.Errorf("%s: no httpGet probe", p.name)
			continue
		}
		if h != host || pt != port || path != p.path {
			t.Errorf("%s: GET %s:%s%s, want %s:%s%s", p.name, h, pt, path, host, port, p.path)
		}
	}
	if len(c.Ports) != 0 {
		t.Errorf("container declares ports %v: on hostNetwork they claim host ports", c.Ports)
	}
}
