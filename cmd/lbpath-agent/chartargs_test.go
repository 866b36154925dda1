package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/lbpath/lbpath/deploy/manifests"
)

// TestChartArgsAreAccepted: every agent command line the chart renders
// (deploy/manifests, committed and checked against the chart) passes all of
// the agent's flag validation. A trailing --shutdown-timeout=0 is the one
// mistake, and it is checked after every other flag, so exit 2 naming only
// it means the chart's own flags were all accepted — a chart value the agent
// refuses would otherwise surface as a crash-looping DaemonSet.
func TestChartArgsAreAccepted(t *testing.T) {
	for _, r := range manifests.Renderings {
		raw, err := os.ReadFile(filepath.Join(manifests.Dir(), r.File))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, doc := range strings.Split(string(raw), "\n---") {
			if !strings.Contains(doc, "kind: DaemonSet") {
				continue
			}
			var ds appsv1.DaemonSet
			if err := yaml.Unmarshal([]byte(doc), &ds); err != nil {
				t.Fatalf("%s: %v", r.File, err)
			}
			for _, c := range ds.Spec.Template.Spec.Containers {
				found = true
				for _, clusterIP := range []string{"10.96.0.10", "fd00:10:96::a"} {
					args := serviceLinks(c.Args, clusterIP)
					var out, errb bytes.Buffer
					code := run(append(args, "--health-addr=not-an-addr"), &out, &errb)
					if code != 2 || !strings.HasPrefix(errb.String(), "lbpath-agent: health-addr:") {
						t.Errorf("%s: container %s args %q: exit %d, stderr %q; want only the appended health-addr refused",
							r.File, c.Name, args, code, errb.String())
					}
				}
			}
		}
		if !found && r.File != "lbpath-monitoring.yaml" {
			t.Errorf("%s: no agent DaemonSet", r.File)
		}
	}
}

// serviceLinks expands $(<SERVICE>_PORT_<port>_TCP) in args as the kubelet
// does for a Service of the pod's namespace with clusterIP (Docker link
// form, tcp://ip:port, IPv6 bracketed); any other $(…) stays, as the
// kubelet leaves a variable it does not know.
func serviceLinks(args []string, clusterIP string) []string {
	link := regexp.MustCompile(`\$\([A-Z0-9_]+_PORT_([0-9]+)_TCP\)`)
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = link.ReplaceAllStringFunc(a, func(v string) string {
			return "tcp://" + net.JoinHostPort(clusterIP, link.FindStringSubmatch(v)[1])
		})
	}
	return out
}
