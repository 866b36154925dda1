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

// A pod's connection to an address two ExternalName Services resolved to
// waits for metadata (its server could be a pod not yet known) and is
// named again on every tick: it is emitted unnamed and counted once, and
// a connection to one Service's own address is named and not counted.
func TestExternalNameAmbiguousCountedOnce(t *testing.T) {
	now := time.Now()
	pl, paths, _, _ := pipelineAt(t, now)
	x := pl.namer.idx
	shared, own := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8")
	for _, ns := range []string{"a", "b"} {
		x.SetService(&kube.Service{Namespace: ns, Name: "db", Type: "ExternalName", ExternalName: "db." + ns + ".test"}, now.Add(-time.Hour))
	}
	x.SetExternalNameAddrs("a/db", "db.a.test", []netip.Addr{shared, own}, now.Add(-time.Minute))
	x.SetExternalNameAddrs("b/db", "db.b.test", []netip.Addr{shared}, now.Add(-time.Minute))
	for i, dst := range []netip.Addr{shared, own, shared} {
		c := conn(flow.RoleClient, ap(podA, uint16(41000+i)), ap(dst, 5432))
		c.Start, c.End = now, now
		pl.Connection(&c)
	}
	for at := 1100 * time.Millisecond; at <= 3100*time.Millisecond; at += 100 * time.Millisecond {
		pl.Tick(now.Add(at))
	}
	if len(*paths) != 3 || pl.Waiting() != 0 {
		t.Fatalf("emitted %d, waiting %d; want 3 and 0", len(*paths), pl.Waiting())
	}
	for _, p := range *paths {
		named := p.Service != nil && p.Service.Key() == "a/db" && p.Entry == kube.EntryExternalName
		if want := p.Conn.Target.Addr() == own; named != want || p.ExternalNameAmbiguous == want {
			t.Errorf("%v: service %v entry %q ambiguous %v", p.Conn.Target, p.Service, p.Entry, p.ExternalNameAmbiguous)
		}
	}
	if n := x.ExternalNames.Ambiguous.Load(); n != 2 {
		t.Errorf("Ambiguous = %d, want 2 (one per connection)", n)
	}
}
