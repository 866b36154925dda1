package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/nodeagents"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestExternalNameService: ExternalName Services on the real API server,
// answered by real CoreDNS (on the host, serving the cluster domain from
// the API server), which is also the agents' --externalname-resolver.
// Servers outside the cluster listen on the nodes' LAN; the client pod
// dials what the Service's cluster name resolves to, as a pod does. Ground
// truth is the answer, the address dialled and the server that answered:
//   - every connection to the Service's address is named with the Service,
//     entry externalname and lbpath.service_source=externalname_resolved,
//     in the agent's record and in the span it exported over OTLP;
//   - after the Service's externalName changes (so does the answer for the
//     Service's name), connections follow the new answer and those before
//     keep the old one, though they are named after the change;
//   - two ExternalName Services resolving to one address: those
//     connections are unnamed, and lbpath.agent.dropped
//     {reason=externalname_ambiguous} rises by exactly their count, in the
//     agent and in what it exported.
//
// CoreDNS answers the external names from its kubernetes plugin's Pod
// records by address ("pods insecure": a-b-c-d.<ns>.pod.cluster.local is
// a.b.c.d, authoritatively, whether or not a pod has it). The testbed's
// trimmed CoreDNS build has no hosts plugin; an authoritative answer that
// changes when told to is all the test needs.
func TestExternalNameService(t *testing.T) {
	c := upK8s(t, "lbx", k8s.Options{Mode: testbed.ModeIPTables, Policy: testbed.PolicyCluster})
	ctx := context.Background()
	bin, err := k8s.EnsureCoreDNS(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	dns, err := c.StartHostDNS(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	sink := testbedtest.Sink(t)
	set, named := startNamedAgents(t, c, nodeagents.Options{ExternalNameResolver: dns.String(),
		Export: &exporter.Config{Endpoint: sink.GRPCAddr, Insecure: true, MetricInterval: 500 * time.Millisecond}})
	ext := map[string]netip.AddrPort{}
	for i, name := range []string{"ext-a", "ext-b", "ext-c"} {
		ext[name] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, 77, byte(50 + i)}), 8080)
		stop, err := c.TB.StartExternalServer(ctx, ext[name], name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = stop() })
	}
	// A pod of the API server's (web's, the first by name) is the client,
	// named as any pod's egress is; the testbed's client pod is no API
	// object here.
	from := c.TB.Pod(slices.Min(slices.Collect(maps.Keys(podRS(t, c)))))
	x := extNames{t: t, c: c, set: set, r: kube.NewDNSResolver(dns.String()), from: from}
	const n = 8

	x.create("default", "db", podName(ext["ext-a"], "default"))
	x.waitNamed(ext["ext-a"].Addr(), "default/db")
	before := x.dial("default", "db", ext["ext-a"], "ext-a", n)

	x.setName("default", "db", podName(ext["ext-b"], "default"))
	x.waitNamed(ext["ext-b"].Addr(), "default/db")
	after := x.dial("default", "db", ext["ext-b"], "ext-b", n)

	// Two names, one address: default/shared-a and kube-system/shared-b.
	x.create("default", "shared-a", podName(ext["ext-c"], "default"))
	x.create("kube-system", "shared-b", podName(ext["ext-c"], "kube-system"))
	x.waitAmbiguous(ext["ext-c"].Addr())
	base := ambiguousDrops(set)
	shared := x.dial("default", "shared-a", ext["ext-c"], "ext-c", n)

	all := append(append(append([]testbed.Result(nil), before...), after...), shared...)
	recs := waitClientRecords(t, named, all, 15*time.Second)
	for _, res := range append(before, after...) {
		checkExternalNamed(t, recs[res.Local], res, x.from, "default/db")
	}
	for _, res := range shared {
		checkExternalNamed(t, recs[res.Local], res, x.from, "")
	}
	rose := ambiguousDrops(set) - base
	if rose != n {
		t.Errorf("agents' externalname_ambiguous rose by %d, want %d (one per connection)", rose, n)
	}
	checkExternalSpans(t, sink, all, map[netip.Addr]string{
		ext["ext-a"].Addr(): "default/db", ext["ext-b"].Addr(): "default/db", ext["ext-c"].Addr(): ""})
	waitExportedAmbiguous(t, sink, ambiguousDrops(set))
	t.Logf("%d connections to default/db before the change, %d after, %d to the shared address; externalname_ambiguous +%d",
		len(before), len(after), len(shared), rose)
}

// podName is CoreDNS's Pod record for ap's address in namespace ns.
func podName(ap netip.AddrPort, ns string) string {
	return fmt.Sprintf("%s.%s.pod.%s", strings.ReplaceAll(ap.Addr().String(), ".", "-"), ns, k8s.ClusterDomain)
}

// extNames drives the ExternalName Services of TestExternalNameService.
type extNames struct {
	t    *testing.T
	c    *k8s.Cluster
	set  *nodeagents.Set
	r    *net.Resolver
	from *testbed.Pod // the client
}

func (x extNames) create(ns, name, target string) {
	x.t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: target}}
	if _, err := x.c.Client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		x.t.Fatal(err)
	}
}

func (x extNames) setName(ns, name, target string) {
	x.t.Helper()
	svcs := x.c.Client.CoreV1().Services(ns)
	svc, err := svcs.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		x.t.Fatal(err)
	}
	svc.Spec.ExternalName = target
	if _, err := svcs.Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		x.t.Fatal(err)
	}
}

// waitNamed waits until every agent has resolved ip for Service key: the
// agents resolve on their own, and a connection made before the answer
// reached them is (rightly) not named.
func (x extNames) waitNamed(ip netip.Addr, key string) {
	x.t.Helper()
	x.waitAgents(fmt.Sprintf("%v named %s", ip, key), func(ix *kube.Index) bool {
		s, k := ix.ExternalNameAt(ip, time.Now())
		return k == 1 && s.Key() == key
	})
}

func (x extNames) waitAmbiguous(ip netip.Addr) {
	x.t.Helper()
	x.waitAgents(fmt.Sprintf("%v held by two Services", ip), func(ix *kube.Index) bool {
		_, k := ix.ExternalNameAt(ip, time.Now())
		return k == 2
	})
}

func (x extNames) waitAgents(what string, ok func(*kube.Index) bool) {
	x.t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		done := true
		for _, a := range x.set.Agents {
			done = done && ok(a.Watcher().Index)
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("agents: %s not seen in 15s", what)
		}
	}
}

// dial resolves Service ns/name's cluster name as a pod does (a CNAME to
// its externalName, then its address), expects exactly want, and makes n
// requests from x.from to the answer, each answered by server.
func (x extNames) dial(ns, name string, want netip.AddrPort, server string, n int) []testbed.Result {
	x.t.Helper()
	ctx := context.Background()
	host := fmt.Sprintf("%s.%s.svc.%s", name, ns, k8s.ClusterDomain)
	addrs, err := x.r.LookupNetIP(ctx, "ip4", host)
	if err != nil || len(addrs) != 1 || addrs[0] != want.Addr() {
		x.t.Fatalf("%s resolved to %v (%v), want %v", host, addrs, err, want.Addr())
	}
	var out []testbed.Result
	for range n {
		res := x.c.TB.Request(ctx, x.from.Netns, netip.AddrPortFrom(addrs[0], want.Port()), 0, 0)
		if res.Err != nil || res.Pod != server {
			x.t.Fatalf("request to %v: answered by %q, err %v; want %s", want, res.Pod, res.Err, server)
		}
		out = append(out, res)
	}
	return out
}

// waitClientRecords waits until each result has its records (keyed by the
// client's address), or timeout.
func waitClientRecords(t *testing.T, named *namedRecords, results []testbed.Result, timeout time.Duration) map[netip.AddrPort][]path.Record {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		by := map[netip.AddrPort][]path.Record{}
		for _, r := range named.all() {
			by[r.Client] = append(by[r.Client], r)
		}
		missing := 0
		for _, res := range results {
			if len(by[res.Local]) == 0 {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return by
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkExternalNamed: the connection res has exactly one record, the
// client record of pod from's node, named with svc ("" = no Service).
func checkExternalNamed(t *testing.T, recs []path.Record, res testbed.Result, from *testbed.Pod, svc string) {
	t.Helper()
	id := fmt.Sprintf("%v->%v (%s)", res.Local, res.Remote, res.Pod)
	if len(recs) != 1 {
		t.Errorf("%s: %d records, want 1", id, len(recs))
		return
	}
	r := recs[0]
	if r.Role != flow.RoleClient || r.Node != from.Node.Name || r.Target != res.Remote || r.Class != path.ClassCluster ||
		r.ClientKind != "pod" || r.ClientName != "default/"+from.Name {
		t.Errorf("%s: record role %s on %s, target %v, class %s, client %q", id, r.Role, r.Node, r.Target, r.Class, r.ClientName)
	}
	wantEntry, wantSource := "externalname", path.ServiceSourceExternalName
	if svc == "" {
		// Unnamed: dialled untranslated, which is all lbpath knows.
		wantEntry, wantSource = "direct", ""
	}
	if r.Service != svc || r.Entry != wantEntry || r.ServiceSource != wantSource {
		t.Errorf("%s: service %q entry %q source %q, want %q %q %q", id, r.Service, r.Entry, r.ServiceSource, svc, wantEntry, wantSource)
	}
}

// checkExternalSpans: each connection's exported client span names the
// Service of its address (want: "" for none) with entry and source.
func checkExternalSpans(t *testing.T, sink *otlpsink.Sink, results []testbed.Result, want map[netip.Addr]string) {
	t.Helper()
	var spans []otlpsink.Span
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		spans = sink.Spans()
		if len(spans) > 0 && countSpans(spans, results) == len(results) || time.Now().After(deadline) {
			break
		}
	}
	for _, res := range results {
		s, ok := clientSpan(spans, res)
		if !ok {
			t.Errorf("%v->%v: no client span exported", res.Local, res.Remote)
			continue
		}
		svc, got := want[res.Remote.Addr()], ""
		if s.Attrs["k8s.service.name"] != nil {
			got = fmt.Sprint(s.Attrs["k8s.namespace.name"], "/", s.Attrs["k8s.service.name"])
		}
		entry, source := fmt.Sprint(s.Attrs["lbpath.entry"]), fmt.Sprint(s.Attrs["lbpath.service_source"])
		wantEntry, wantSource := "externalname", path.ServiceSourceExternalName
		if svc == "" {
			wantEntry, wantSource = "direct", "<nil>"
		}
		if got != svc || entry != wantEntry || source != wantSource {
			t.Errorf("%v->%v: span %q service %q entry %s source %s, want %q %s %s",
				res.Local, res.Remote, s.Name, got, entry, source, svc, wantEntry, wantSource)
		}
	}
}

func countSpans(spans []otlpsink.Span, results []testbed.Result) int {
	n := 0
	for _, res := range results {
		if _, ok := clientSpan(spans, res); ok {
			n++
		}
	}
	return n
}

// clientSpan is the root span of res's client record.
func clientSpan(spans []otlpsink.Span, res testbed.Result) (otlpsink.Span, bool) {
	for _, s := range spans {
		a := s.Attrs
		if fmt.Sprint(a["lbpath.role"]) == string(flow.RoleClient) && fmt.Sprint(a["network.peer.port"]) == fmt.Sprint(res.Local.Port()) &&
			fmt.Sprint(a["network.peer.address"]) == res.Local.Addr().String() && fmt.Sprint(a["server.address"]) == res.Remote.Addr().String() {
			return s, true
		}
	}
	return otlpsink.Span{}, false
}

// ambiguousDrops is the agents' externalname_ambiguous drop count.
func ambiguousDrops(set *nodeagents.Set) uint64 {
	var n uint64
	for _, a := range set.Agents {
		for _, d := range a.Drops() {
			if d.Reason == "externalname_ambiguous" {
				n += d.Count
			}
		}
	}
	return n
}

// waitExportedAmbiguous: the agents' exported lbpath.agent.dropped
// {reason=externalname_ambiguous}, summed over nodes' newest points,
// reaches want and never passes it.
func waitExportedAmbiguous(t *testing.T, sink *otlpsink.Sink, want uint64) {
	t.Helper()
	var got float64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		last := map[string]float64{}
		for _, p := range sink.Points() {
			if p.Metric == "lbpath.agent.dropped" && fmt.Sprint(p.Attrs["lbpath.reason"]) == "externalname_ambiguous" {
				last[fmt.Sprint(p.Resource["k8s.node.name"])] = p.Value
			}
		}
		got = 0
		for _, v := range last {
			got += v
		}
		if got >= float64(want) || time.Now().After(deadline) {
			break
		}
	}
	if got != float64(want) {
		t.Errorf("exported externalname_ambiguous = %v, want %d", got, want)
	}
}
