package kube

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbpath/lbpath/internal/testenv"
)

const goodKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: abc
contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
`

// TestCheckKubeconfig: a kubeconfig that is missing, unreadable, does not
// parse, or names a context or file that is not there is refused at start
// with a message that starts with the flag; a good one passes without an
// API server (nothing is contacted).
func TestCheckKubeconfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		path, want string
	}{
		{filepath.Join(dir, "absent"), "no such file"},
		{dir, "is a directory"},
		{write("garbage", "{{{ not yaml"), "does not parse"},
		{write("empty", ""), "no configuration"},
		{write("nocontext", strings.Replace(goodKubeconfig, "current-context: ctx", "current-context: other", 1)), "context was not found for specified context: other"},
		{write("nocafile", strings.Replace(goodKubeconfig, "insecure-skip-tls-verify: true", "certificate-authority: "+filepath.Join(dir, "ca-absent.pem"), 1)), "ca-absent.pem"},
		{write("badserver", strings.Replace(goodKubeconfig, "https://127.0.0.1:6443", "https://[::1", 1)), "kubeconfig:"},
	} {
		err := Config{Kubeconfig: tc.path}.Check()
		if err == nil {
			t.Errorf("%s: accepted", filepath.Base(tc.path))
			continue
		}
		if !strings.HasPrefix(err.Error(), "kubeconfig:") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %q, want it to start with kubeconfig: and mention %q", filepath.Base(tc.path), err, tc.want)
		}
	}
	if err := (Config{Kubeconfig: write("good", goodKubeconfig)}).Check(); err != nil {
		t.Errorf("good kubeconfig: %v", err)
	}
}

// TestCheckInClusterNamesWhatIsMissing: without --kubeconfig the service
// environment and account files are checked, each named. (The token and
// CA files live at fixed paths; the case where they exist but the CA is
// broken runs with the agent binary in a private mount namespace,
// e2e TestAgentStartupChecks.)
func TestCheckInClusterNamesWhatIsMissing(t *testing.T) {
	for _, tc := range []struct {
		host, port, want string
	}{
		{"", "", "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set"},
		{"10.96.0.1", "", "KUBERNETES_SERVICE_PORT is not set"},
		{"", "443", "KUBERNETES_SERVICE_HOST is not set"},
		{"10.96.0.1", "https", `KUBERNETES_SERVICE_PORT "https" is not a port`},
	} {
		t.Setenv("KUBERNETES_SERVICE_HOST", tc.host)
		t.Setenv("KUBERNETES_SERVICE_PORT", tc.port)
		err := Config{}.Check()
		if err == nil || !strings.HasPrefix(err.Error(), "in-cluster config:") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("host %q port %q: %v, want %q", tc.host, tc.port, err, tc.want)
		}
	}
	if _, err := os.Stat(inClusterToken); err == nil {
		testenv.Unavailable(t, inClusterToken+" exists on this machine: the missing-token case cannot be shown")
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	err := Config{}.Check()
	if err == nil || !strings.Contains(err.Error(), "service account token") || !strings.Contains(err.Error(), inClusterToken) {
		t.Errorf("missing token: %v", err)
	}
}
