package path

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

const hcPort = 32101

// lbCluster is cluster() plus shop/edge: a LoadBalancer with
// externalTrafficPolicy Local whose healthCheckNodePort is hcPort from t0
// + 30 s (before that it was Cluster, with no such port).
func lbNamer(t *testing.T) (*Namer, *kube.Freshness) {
	t.Helper()
	x, local, fresh := cluster(t)
	edge := &kube.Service{Namespace: "shop", Name: "edge", Type: "LoadBalancer", ExternalTrafficPolicy: "Cluster",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.30")}, Ports: []kube.ServicePort{{Port: 443, NodePort: 30443, TargetPort: 8443}}}
	x.SetService(edge, t0)
	edgeLocal := *edge
	edgeLocal.ExternalTrafficPolicy, edgeLocal.HealthCheckNodePort = "Local", hcPort
	x.SetService(&edgeLocal, t0.Add(30*time.Second))
	return NewNamer(Config{Node: "node1", Local: local, Current: fresh.CurrentAt}, x), fresh
}

// TestLBHealthCheckClass: a connection to this node's address at a
// Service's healthCheckNodePort from a client that is no pod and not this
// node is that Service's load-balancer probe — a node class, so it is in
// no per-pod metric, Service or span by default — decided with the same
// certainty as the other node classes (an unknown client only once the
// metadata wait is over, nothing during an API server outage). Pods'
// connections there (the lbsignals receiver's own probes), this node's,
// other ports, other nodes' ports and times before the Service had the
// port are not probes.
func TestLBHealthCheckClass(t *testing.T) {
	lbChecker := netip.MustParseAddrPort("35.191.0.7:41000") // a cloud health checker: no object owns it
	lo := netip.MustParseAddr("127.0.0.1")
	probe := conn(flow.RoleServer, lbChecker, ap(node1, hcPort))
	refused := conn(flow.RoleReject, lbChecker, ap(node1, hcPort))
	refused.Outcome = flow.OutcomeRefused
	beforePort := probe
	beforePort.Start = t0.Add(10 * time.Second)
	const u, hc = ClassUnknown, ClassLBHealthCheck
	for _, tc := range []struct {
		classCase
		probeOf string // the Service named in HealthCheck when the class is hc
	}{
		{classCase{"probe from the load balancer", probe, u, hc, u}, "shop/edge"},
		{classCase{"probe from another node", conn(flow.RoleServer, ap(node2, 41001), ap(node1, hcPort)), hc, hc, u}, "shop/edge"},
		{classCase{"probe refused: nothing listens (kube-proxy down)", refused, u, hc, u}, "shop/edge"},
		{classCase{"the collector pod probing (lbsignals receiver)", conn(flow.RoleClient, ap(podA, 41002), ap(node1, hcPort)), ClassCluster, ClassCluster, pending}, ""},
		{classCase{"curl on the node to its own address", conn(flow.RoleClient, ap(node1, 41003), ap(node1, hcPort)), ClassNodeLocal, ClassNodeLocal, u}, ""},
		{classCase{"curl on the node to loopback", conn(flow.RoleClient, ap(lo, 41004), ap(lo, hcPort)), ClassNodeLocal, ClassNodeLocal, ClassNodeLocal}, ""},
		{classCase{"this node probing another node's port", conn(flow.RoleClient, ap(node1, 41005), ap(node2, hcPort)), ClassExternal, ClassExternal, u}, ""},
		{classCase{"another port", conn(flow.RoleServer, lbChecker, ap(node1, hcPort+1)), u, ClassExternal, u}, ""},
		{classCase{"before the Service had the port", beforePort, u, ClassExternal, u}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, fresh := lbNamer(t)
			check := func(what string, name func(*flow.Connection) (Path, bool), want Class) {
				t.Helper()
				p, complete := name(&tc.c)
				wantClass, wantComplete := want, want != ClassUnknown
				if want == pending {
					wantClass, wantComplete = ClassCluster, false
				}
				if p.Class != wantClass || complete != wantComplete {
					t.Errorf("%s: class %q complete %v, want %q", what, p.Class, complete, want)
				}
				gotOf := ""
				if p.HealthCheck != nil {
					gotOf = p.HealthCheck.Key()
				}
				if wantOf := map[bool]string{true: tc.probeOf}[p.Class == hc]; gotOf != wantOf {
					t.Errorf("%s: probe of %q, want %q", what, gotOf, wantOf)
				}
				if p.Class == hc && (p.Service != nil || p.Pod != nil || p.Entry != "" || len(p.Diagnoses) > 0 || !p.Class.Node()) {
					t.Errorf("%s: a probe is the node's, not the Service's traffic: %+v", what, p)
				}
				if r := p.Record(); r.HealthCheckService != gotOf || r.Service != "" {
					t.Errorf("%s: record health_check_service %q service %q", what, r.HealthCheckService, r.Service)
				}
			}
			check("settled", n.Name, tc.settled)
			check("late", n.NameLate, tc.late)
			fresh.Fail("pods")
			check("late during an outage", n.NameLate, tc.outage)
		})
	}
}

// ProbeCounts: per Service and outcome, ok and refused always reported
// for every Service with a healthCheckNodePort (0 when none came), other
// outcomes once seen, Services that lost the port or are gone forgotten.
func TestProbeCounts(t *testing.T) {
	edge := &kube.Service{Namespace: "shop", Name: "edge", HealthCheckNodePort: hcPort}
	api := &kube.Service{Namespace: "shop", Name: "api", HealthCheckNodePort: hcPort + 1}
	web := &kube.Service{Namespace: "default", Name: "web"} // Cluster policy: no port
	var pc ProbeCounts
	add := func(s *kube.Service, o flow.Outcome, class Class, n int) {
		for range n {
			pc.Add(&Path{Class: class, HealthCheck: s, Conn: flow.Connection{Outcome: o}})
		}
	}
	add(edge, flow.OutcomeOK, ClassLBHealthCheck, 5)
	add(edge, flow.OutcomeRefused, ClassLBHealthCheck, 2)
	add(edge, flow.OutcomeOK, ClassExternal, 3) // not a probe
	add(edge, flow.OutcomeReset, ClassLBHealthCheck, 1)
	got := pc.Snapshot([]*kube.Service{web, edge, api})
	want := []ProbeCount{
		{"shop", "api", flow.OutcomeOK, 0},
		{"shop", "api", flow.OutcomeRefused, 0},
		{"shop", "edge", flow.OutcomeOK, 5},
		{"shop", "edge", flow.OutcomeRefused, 2},
		{"shop", "edge", flow.OutcomeReset, 1},
	}
	if !slices.Equal(got, want) {
		t.Errorf("snapshot %+v, want %+v", got, want)
	}
	// edge turns Cluster (its port is released): forgotten, even when it
	// gets one again.
	edgeCluster := *edge
	edgeCluster.HealthCheckNodePort = 0
	if got := pc.Snapshot([]*kube.Service{&edgeCluster, api}); !slices.Equal(got, want[:2]) {
		t.Errorf("after edge lost its port: %+v, want %+v", got, want[:2])
	}
	if got := pc.Snapshot([]*kube.Service{edge}); !slices.Equal(got, []ProbeCount{{"shop", "edge", flow.OutcomeOK, 0}, {"shop", "edge", flow.OutcomeRefused, 0}}) {
		t.Errorf("edge back: %+v, want a fresh 0", got)
	}
}

// BenchmarkNameProbe: naming a load-balancer probe (late, as the external
// checker's connections are decided) next to an external connection,
// which now also looks its port up among the health-check ports.
func BenchmarkNameProbe(b *testing.B) {
	n, _ := lbNamer(&testing.T{})
	for _, bc := range []struct {
		name string
		c    flow.Connection
	}{
		{"probe", conn(flow.RoleServer, netip.MustParseAddrPort("35.191.0.7:41000"), ap(node1, hcPort))},
		{"external", conn(flow.RoleServer, netip.MustParseAddrPort("35.191.0.7:41000"), ap(node1, 22))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := bc.c
			b.ReportAllocs()
			for b.Loop() {
				if p, _ := n.NameLate(&c); p.Class == ClassUnknown {
					b.Fatal("unknown")
				}
			}
		})
	}
}
