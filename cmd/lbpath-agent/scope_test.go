package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestPodCIDRNode: "node" is accepted only alone and only with an API
// server to read the Node from; both mistakes exit 2 naming the flag before
// anything is loaded.
func TestPodCIDRNode(t *testing.T) {
	var s podScope
	if err := s.Set("node"); err != nil || !s.fromNode {
		t.Fatalf("Set(node) = %v, fromNode %v", err, s.fromNode)
	}
	for _, args := range [][]string{
		{"--pod-cidr", "node,10.244.0.0/24"},
		{"--pod-cidr", "10.244.0.0/24", "--pod-cidr", "node"},
		{"--pod-cidr", "nodes"},
		// No --kubeconfig and not in a cluster: nothing to read the Node from.
		{"--pod-cidr", "node", "--no-kube"},
	} {
		t.Setenv("KUBERNETES_SERVICE_HOST", "")
		var out, errb bytes.Buffer
		if code := run(append(args, "--health-addr="), &out, &errb); code != 2 || !strings.Contains(errb.String(), "pod-cidr") {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming pod-cidr", args, code, errb.String())
		}
	}
}
