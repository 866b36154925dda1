package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed"
)

// httpGet returns status and body, or an error when nothing answered.
func httpGet(url string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// scrape reads /metrics with Prometheus's own parser.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body, err := httpGet("http://" + addr + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return fams
}

// sample finds the value of name whose labels include want.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		if m.Counter != nil {
			return m.Counter.GetValue(), true
		}
		return m.Gauge.GetValue(), true
	}
	return 0, false
}

// nonLoopbackIPv4 returns an address of this host that is not loopback,
// adding one on a dummy link when the host has none.
func nonLoopbackIPv4(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.To4()
		}
	}
	const link = "lbhealth0"
	for _, args := range [][]string{{"link", "add", link, "type", "dummy"}, {"addr", "add", "192.0.2.77/32", "dev", link}, {"link", "set", link, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", link).Run() })
	return net.IPv4(192, 0, 2, 77).To4()
}

// TestHealthEndpoint: the real agent binary serves /readyz 200 once its
// eBPF programs are attached (503 with a reason before), /metrics counts
// real loopback connections in Prometheus text, and the endpoint listens
// on loopback only: the host's other address refuses it while a listener
// on all interfaces is reachable there.
func TestHealthEndpoint(t *testing.T) {
	testenv.Root(t)
	bin := buildAgent(t)
	port, err := testbed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	before := countPrograms(t, "on_state")
	a := startAgent(t, bin, "--node", "health-test", "--no-kube", "--join-wait", "100ms", "--stats-interval", "0",
		"--health-addr", addr)
	t.Cleanup(func() {
		if a.cmd.ProcessState == nil {
			a.cmd.Process.Kill()
			<-a.done
			a.cmd.Wait()
		}
	})

	// Poll /readyz from the start: every answer is 503 with a reason until
	// it is 200, and 200 only with on_state attached.
	var notReady []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body, err := httpGet("http://" + addr + "/readyz")
		if err == nil && code == http.StatusOK {
			if n := countPrograms(t, "on_state"); n <= before {
				t.Fatalf("/readyz 200 but on_state is not attached (%d programs, %d before)", n, before)
			}
			break
		}
		if err == nil {
			if code != http.StatusServiceUnavailable || strings.TrimSpace(body) == "" {
				t.Fatalf("/readyz before ready: %d %q, want 503 with a reason", code, body)
			}
			notReady = append(notReady, strings.TrimSpace(body))
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 after 15 s (answers %q); agent:\n%s", notReady, a.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("/readyz answers before ready: %d, first %q", len(notReady), first(notReady))
	if code, body, err := httpGet("http://" + addr + "/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("/healthz: %d %q %v", code, body, err)
	}

	fams := scrape(t, addr)
	if v, ok := sample(fams, "lbpath_agent_program_attached", map[string]string{"program": "on_state"}); !ok || v != 1 {
		t.Errorf("lbpath_agent_program_attached{program=on_state} = %v (present %v)", v, ok)
	}
	if v, ok := sample(fams, "lbpath_agent_ready", nil); !ok || v != 1 {
		t.Errorf("lbpath_agent_ready = %v (present %v)", v, ok)
	}
	if _, ok := sample(fams, "lbpath_agent_dropped_total", map[string]string{"lbpath_stage": "ringbuf", "lbpath_reason": "on_state"}); !ok {
		t.Errorf("no ring buffer drop counter for on_state: %v", fams["lbpath_agent_dropped_total"])
	}
	c0, ok := sample(fams, "lbpath_agent_connections_total", nil)
	if !ok {
		t.Fatalf("no lbpath_agent_connections_total")
	}
	nodeLocal := map[string]string{"lbpath_connection_class": "node_local"}
	l0, ok := sample(fams, "lbpath_agent_node_connections_total", nodeLocal)
	if !ok {
		t.Fatalf("no lbpath_agent_node_connections_total{lbpath_connection_class=node_local}: %v", fams["lbpath_agent_node_connections_total"])
	}

	const n = 5
	var ports []uint16
	for range n {
		ports = append(ports, loopbackConn(t))
	}
	deadline = time.Now().Add(5 * time.Second)
	var c1, l1 float64
	for {
		fams = scrape(t, addr)
		c1, _ = sample(fams, "lbpath_agent_connections_total", nil)
		// Loopback touches no pod: the node's own traffic, by class.
		l1, _ = sample(fams, "lbpath_agent_node_connections_total", nodeLocal)
		seen := 0
		for _, p := range ports {
			if a.has(p) {
				seen++
			}
		}
		// Each loopback connection is recorded twice (client and server
		// socket): the counter must cover at least what the JSONL shows.
		if seen == n && c1-c0 >= 2*n && l1-l0 >= 2*n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d loopback connections: %d in the JSONL, lbpath_agent_connections_total %v → %v, node_local %v → %v",
				n, seen, c0, c1, l0, l1)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("lbpath_agent_connections_total %v → %v, lbpath_agent_node_connections_total{node_local} %v → %v after %d loopback connections",
		c0, c1, l0, l1, n)

	// Loopback only: the host's other address reaches a listener on all
	// interfaces (control) but not the health endpoint.
	ip := nonLoopbackIPv4(t)
	ctl, err := net.Listen("tcp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	go func() {
		for {
			c, err := ctl.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctlAddr := net.JoinHostPort(ip.String(), fmt.Sprint(ctl.Addr().(*net.TCPAddr).Port))
	if c, err := net.DialTimeout("tcp4", ctlAddr, 2*time.Second); err != nil {
		t.Fatalf("control: %s unreachable even for a listener on all interfaces: %v", ctlAddr, err)
	} else {
		c.Close()
	}
	outside := net.JoinHostPort(ip.String(), fmt.Sprint(port))
	if c, err := net.DialTimeout("tcp4", outside, 2*time.Second); err == nil {
		c.Close()
		t.Errorf("health endpoint reachable on %s; want loopback only", outside)
	} else if !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial %s: %v, want connection refused", outside, err)
	}

	a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.done
	if err := a.cmd.Wait(); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, a.stderr.String())
	}
	if _, _, err := httpGet("http://" + addr + "/healthz"); err == nil {
		t.Error("health endpoint still answers after the agent exited")
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
