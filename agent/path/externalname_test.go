package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// A pod's untranslated connection to an address an ExternalName Service
// resolved to is named with that Service, entry externalname and source
// externalname_resolved; the same address before it was resolved, another
// address, and a pod address are not.
func TestExternalNameNamesResolvedAddress(t *testing.T) {
	x := index("Cluster", false)
	db := netip.MustParseAddr("198.51.100.7")
	x.SetService(&kube.Service{Namespace: "shop", Name: "db", Type: "ExternalName", ExternalName: "db.example.test"}, t0)
	x.SetExternalNameAddrs("shop/db", "db.example.test", []netip.Addr{db}, t0.Add(time.Minute))
	n := NewNamer(Config{Node: "node1", Current: func(time.Time) bool { return true }}, x)
	conn := func(dst netip.Addr, at time.Duration) flow.Connection {
		src := netip.AddrPortFrom(podA, 41000)
		to := netip.AddrPortFrom(dst, 5432)
		return flow.Connection{Node: "node1", Role: flow.RoleClient, Outcome: flow.OutcomeOK, Start: t0.Add(at),
			Client: src, Target: to, PodSrc: src, PodDst: to}
	}
	c := conn(db, 2*time.Minute)
	p, _ := n.NameLate(&c)
	if p.Service == nil || p.Service.Key() != "shop/db" || p.Entry != kube.EntryExternalName || p.ServiceSource != ServiceSourceExternalName {
		t.Fatalf("resolved address: service %v entry %q source %q", p.Service, p.Entry, p.ServiceSource)
	}
	if has(p, DiagNoReadyEndpoints) {
		t.Error("an ExternalName Service was diagnosed without endpoints")
	}
	if r := p.Record(); r.Service != "shop/db" || r.Entry != "externalname" || r.ServiceSource != "externalname_resolved" {
		t.Errorf("record %+v", r)
	}
	for name, c := range map[string]flow.Connection{
		"before the agent resolved it": conn(db, 10*time.Second),
		"another address":              conn(netip.MustParseAddr("198.51.100.8"), 2*time.Minute),
		"a pod address":                conn(podC, 2*time.Minute),
	} {
		p, _ := n.NameLate(&c)
		if p.Entry == kube.EntryExternalName || p.ServiceSource != "" || (p.Service != nil && p.Service.Key() == "shop/db") {
			t.Errorf("%s: named %v entry %q source %q", name, p.Service, p.Entry, p.ServiceSource)
		}
	}
}
