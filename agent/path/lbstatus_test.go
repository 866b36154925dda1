package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// TestHostnameLBIsProvisioned: a LoadBalancer whose status has only a
// hostname (AWS ELB/NLB) is provisioned: no pending diagnosis, not in the
// inventory's pending list; one without any address is.
func TestHostnameLBIsProvisioned(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hostnames []string
		pending   bool
	}{
		{"hostname only", []string{"a1b2c3-123.elb.us-east-1.amazonaws.com"}, false},
		{"nothing", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := index("Cluster", false)
			s, _ := x.Service("default", "web")
			hs := *s
			hs.LBHostnames = tc.hostnames
			hs.LBPendingSince = time.Time{}
			x.SetService(&hs, t0)
			n := NewNamer(Config{Node: "node2", LBPendingAfter: time.Minute}, x)
			c := flow.Connection{Node: "node2", Role: flow.RoleServer, Outcome: flow.OutcomeOK, Start: t0.Add(time.Hour),
				Client: client, Target: netip.AddrPortFrom(node2, 30080), PodSrc: client, PodDst: netip.AddrPortFrom(podC, 8080),
				NAT: &flow.NAT{DNAT: true}}
			p, _ := n.Name(&c)
			if has(p, DiagLBPending) != tc.pending {
				t.Errorf("pending diagnosis %v, want %v: %+v", has(p, DiagLBPending), tc.pending, p.Diagnoses)
			}
			if inv := n.Inventory(t0.Add(time.Hour)); inv.LoadBalancers != 1 || (len(inv.Pending) == 1) != tc.pending {
				t.Errorf("inventory %+v, want pending %v", inv, tc.pending)
			}
		})
	}
}

// TestExternalIPEntry: a connection to a Service's spec.externalIPs is
// entry externalip, not loadbalancer, and an externalIP alone does not make
// a LoadBalancer Service provisioned in the agent's index differently from
// kubectl (which shows the external IP instead of <pending>).
func TestExternalIPEntry(t *testing.T) {
	x := index("Cluster", true)
	s, _ := x.Service("default", "web")
	es := *s
	ext := netip.MustParseAddr("198.51.100.7")
	es.ExternalIPs = []netip.Addr{ext}
	x.SetService(&es, t0)
	n := NewNamer(Config{Node: "node1"}, x)
	for _, tc := range []struct {
		target netip.AddrPort
		want   kube.Entry
	}{
		{netip.AddrPortFrom(ext, 80), kube.EntryExternalIP},
		{lb, kube.EntryLoadBalancer},
		{netip.MustParseAddrPort("10.96.0.10:80"), kube.EntryClusterIP},
	} {
		c := flow.Connection{Node: "node1", Role: flow.RoleServer, Outcome: flow.OutcomeOK, Start: t0.Add(time.Minute),
			Client: client, Target: tc.target, PodSrc: client, PodDst: netip.AddrPortFrom(podA, 8080), NAT: &flow.NAT{DNAT: true}}
		p, _ := n.Name(&c)
		if p.Entry != tc.want || p.Service == nil || p.Service.Name != "web" {
			t.Errorf("%v: entry %q service %v, want %q web", tc.target, p.Entry, p.Service, tc.want)
		}
	}
	pend := &kube.Service{Type: "LoadBalancer", ExternalIPs: []netip.Addr{ext}}
	if pend.LBPending() {
		t.Error("LoadBalancer with an external IP pending (kubectl shows the external IP)")
	}
}
