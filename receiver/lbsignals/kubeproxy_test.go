package lbsignals

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed/k8s"
)

// kpNode is a node namespace for a real kube-proxy: a veth to the host,
// the node's InternalIP on the namespace's end.
type kpNode struct {
	name, ns, hostIf string
	hostIP, nodeIP   netip.Addr
}

// Addresses of this test's own host links: outside the test bed's LAN
// (192.168.77.0/24) and pod/Service ranges, so it runs beside it.
var kpNodes = []kpNode{
	{"kp1", "lbsig-kp1", "lbsigh1", netip.MustParseAddr("10.213.7.1"), netip.MustParseAddr("10.213.7.2")},
	{"kp2", "lbsig-kp2", "lbsigh2", netip.MustParseAddr("10.213.7.5"), netip.MustParseAddr("10.213.7.6")},
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// setupNodeNamespaces creates the namespaces and links; deleting a
// namespace removes its veth and every rule kube-proxy wrote in it.
func setupNodeNamespaces(t *testing.T) {
	t.Helper()
	for _, n := range kpNodes {
		_ = exec.Command("ip", "netns", "del", n.ns).Run() // a crashed run's leftovers
		_ = exec.Command("ip", "link", "del", n.hostIf).Run()
	}
	for _, n := range kpNodes {
		t.Cleanup(func() {
			_ = exec.Command("ip", "netns", "del", n.ns).Run()
			_ = exec.Command("ip", "link", "del", n.hostIf).Run()
		})
		run(t, "ip", "netns", "add", n.ns)
		run(t, "ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", "eth0", "netns", n.ns)
		run(t, "ip", "addr", "add", n.hostIP.String()+"/30", "dev", n.hostIf)
		run(t, "ip", "link", "set", n.hostIf, "up")
		run(t, "ip", "-n", n.ns, "addr", "add", n.nodeIP.String()+"/30", "dev", "eth0")
		run(t, "ip", "-n", n.ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", n.ns, "link", "set", "eth0", "up")
		run(t, "ip", "-n", n.ns, "route", "add", "default", "via", n.hostIP.String())
	}
}

// startKubeProxy runs the real kube-proxy (nftables mode) in n's namespace.
func startKubeProxy(t *testing.T, cp *k8s.ControlPlane, n kpNode) {
	t.Helper()
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: nftables
clusterCIDR: 10.244.0.0/16
healthzBindAddress: %s:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
nftables:
  minSyncPeriod: 0s
`, cp.KubeProxyKubeconfig, n.name, n.nodeIP)
	path := filepath.Join(cp.Dir, "kube-proxy-"+n.name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(cp.Dir, "kube-proxy-"+n.name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", n.ns, cp.Binaries.KubeProxy, "--config="+path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			raw, _ := os.ReadFile(logf.Name())
			t.Logf("kube-proxy %s log (tail):\n%s", n.name, tail(string(raw), 20))
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestProbeRealKubeProxy probes the health-check node ports that the real
// kube-proxy (v1.37, nftables mode) serves in two node namespaces for a
// Local LoadBalancer Service, with the endpoint on one node and then moved
// to the other: the receiver reports 200 and kube-proxy's localEndpoints
// where the endpoint is, 503 and 0 where it is not, and no probe error.
func TestProbeRealKubeProxy(t *testing.T) {
	testenv.Root(t)
	bins, err := k8s.FindBinaries()
	if err != nil {
		testenv.Unavailable(t, err.Error())
	}
	setupNodeNamespaces(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The apiserver listens on the first link's host address, which both
	// namespaces route to.
	cp, err := k8s.Start(ctx, k8s.ControlPlaneOptions{Binaries: bins, Name: "lbsignals-kp", BindAddress: kpNodes[0].hostIP,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	cs := cp.Client
	for _, n := range kpNodes {
		node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.nodeIP.String()}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes, tcp, port, portName := true, corev1.ProtocolTCP, int32(8080), "http"
	slice := func(node string) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "lbsignals-test"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &tcp}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.10"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes},
				NodeName: &node, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web-pod"}}},
		}
	}
	sl, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, slice("kp1"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range kpNodes {
		startKubeProxy(t, cp, n)
	}

	// Probe errors before kube-proxy first synced would be true but are
	// not what this test is about: start probing once both listen.
	began := time.Now()
	for _, n := range kpNodes {
		addr := netip.AddrPortFrom(n.nodeIP, uint16(svc.Spec.HealthCheckNodePort)).String()
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Since(began) > time.Minute {
				t.Fatalf("kube-proxy on %s does not serve %s after a minute: %v", n.name, addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("both kube-proxies serve the health-check node port after %v", time.Since(began).Round(time.Millisecond))
	cfg := testConfig(cp.Kubeconfig)
	_, sink := startReceiver(t, cfg, "kp")
	hc := func(metric, node string, v int) string {
		return fmt.Sprintf("lbpath.service.health_check.%s{k8s.namespace.name=default,k8s.node.name=%s,k8s.service.name=web} %d", metric, node, v)
	}
	expect := func(what string, want []string) {
		t.Helper()
		start := time.Now()
		waitFor(t, sink, what, 60*time.Second, func(lines []string, _ map[string]float64) bool {
			for _, l := range lines {
				if strings.HasPrefix(l, "lbpath.service.health_check.errors") {
					t.Fatalf("probe error against the real kube-proxy: %s", l)
				}
			}
			for _, w := range want {
				if !slices.Contains(lines, w) {
					return false
				}
			}
			return true
		})
		t.Logf("%s: seen after %v", what, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("healthCheckNodePort %d", svc.Spec.HealthCheckNodePort)
	expect("endpoint on kp1", []string{
		hc("status", "kp1", 200), hc("local_endpoints", "kp1", 1), hc("healthy", "kp1", 1),
		hc("status", "kp2", 503), hc("local_endpoints", "kp2", 0), hc("healthy", "kp2", 0),
	})

	// Move the endpoint to kp2: both kube-proxies follow, so do the answers.
	moved := slice("kp2")
	moved.ResourceVersion = sl.ResourceVersion
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Update(ctx, moved, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("endpoint moved to kp2", []string{
		hc("status", "kp1", 503), hc("local_endpoints", "kp1", 0), hc("healthy", "kp1", 0),
		hc("status", "kp2", 200), hc("local_endpoints", "kp2", 1), hc("healthy", "kp2", 1),
	})
}
