package lbsignals

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// kubeProxyHandler answers as kube-proxy's service health server does
// (kubernetes pkg/proxy/healthcheck, v1.37): 200 when the node has local
// endpoints, else 503, with the same headers and JSON body. The e2e test
// with the real kube-proxy checks the same parser against the real thing.
func kubeProxyHandler(namespace, name string, local int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", fmt.Sprint(local))
		if local > 0 {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": true\n}", namespace, name, local)
	})
}

// serve runs h on a real TCP listener at addr ("127.0.0.1:0" for any port).
func serve(t *testing.T, addr string, h http.Handler) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String())
}

func TestProbeAnswers(t *testing.T) {
	healthy := serve(t, "127.0.0.1:0", kubeProxyHandler("shop", "web", 2))
	empty := serve(t, "127.0.0.1:0", kubeProxyHandler("shop", "web", 0))
	other := serve(t, "127.0.0.1:0", kubeProxyHandler("shop", "api", 3))
	html := serve(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("<html>ok</html>"))
	}))
	slow := serve(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(3 * time.Second):
		}
	}))
	// A port that was just free: nothing listens there now.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()

	target := func(node string, a netip.AddrPort) probeTarget {
		return probeTarget{Namespace: "shop", Service: "web", Node: node, Addr: a}
	}
	targets := []probeTarget{
		target("healthy", healthy), target("empty", empty), target("other", other), target("html", html),
		target("slow", slow), target("closed", closed), target("noip", netip.AddrPort{}),
	}
	want := []probeResult{
		{Status: 200, LocalEndpoints: 2},
		{Status: 503, LocalEndpoints: 0},
		{LocalEndpoints: -1, ErrorType: errInvalidResponse},
		{LocalEndpoints: -1, ErrorType: errInvalidResponse},
		{LocalEndpoints: -1, ErrorType: errTimeout},
		{LocalEndpoints: -1, ErrorType: errRefused},
		{LocalEndpoints: -1, ErrorType: errNoInternalIP},
	}
	p := newProber(HealthCheckConfig{Enabled: true, Timeout: 300 * time.Millisecond, Concurrency: 3})
	got := p.probeAll(context.Background(), targets)
	if len(got) != len(want) {
		t.Fatalf("%d results for %d targets", len(got), len(targets))
	}
	for i := range want {
		want[i].probeTarget = targets[i]
		if got[i] != want[i] {
			t.Errorf("%s: got %s (%+v), want %+v", targets[i].Node, got[i], got[i], want[i])
		}
	}
}
