package kube

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeResolver answers from a table. A fake here because the unit test is
// about the index's time ranges; the e2e TestExternalNameService resolves
// through a real DNS server (CoreDNS).
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	errs    map[string]error
}

func (f *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.errs[host]; err != nil {
		return nil, err
	}
	return f.answers[host], nil
}

func extSvc(ns, name, ext string) *Service {
	return ServiceFrom(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: ext}})
}

// Resolved addresses name their Service only while the answers held them;
// a changed answer, a deleted Service and a name that no longer exists
// close the range; a temporary error keeps the last answer.
func TestExternalNameIndexTimeRanges(t *testing.T) {
	x := NewIndex(IndexConfig{Slack: 500 * time.Millisecond})
	a1, a2 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.20")
	x.SetService(extSvc("shop", "db", "db.example.test"), at(0))
	if s, _ := x.Service("shop", "db"); s.ExternalName != "db.example.test" || len(s.ClusterIPs) != 0 {
		t.Fatalf("service view %+v", s)
	}
	x.SetExternalNameAddrs("shop/db", "db.example.test", []netip.Addr{a1}, at(10))
	x.SetExternalNameAddrs("shop/db", "db.example.test", []netip.Addr{a1}, at(40)) // same answer: range kept
	x.SetExternalNameAddrs("shop/db", "db.example.test", []netip.Addr{a2}, at(70))
	x.SetExternalNameAddrs("shop/db", "other.example.test", []netip.Addr{a1}, at(80)) // stale lookup: ignored
	x.DeleteService("shop", "db", at(100))
	for _, tc := range []struct {
		ip   netip.Addr
		sec  int
		want bool
	}{{a1, 5, false}, {a1, 11, true}, {a1, 50, true}, {a1, 69, true}, {a1, 71, false}, {a1, 85, false},
		{a2, 60, false}, {a2, 71, true}, {a2, 99, true}, {a2, 101, false}} {
		s, n := x.ExternalNameAt(tc.ip, at(tc.sec))
		if ok := n == 1; ok != tc.want || (ok && s.Key() != "shop/db") {
			t.Errorf("%v t=%ds: got %v %v, want %v", tc.ip, tc.sec, s, ok, tc.want)
		}
	}
	// A ClusterIP Service is no ExternalName: nothing to resolve.
	x.SetService(&Service{Namespace: "shop", Name: "web", Type: "ClusterIP"}, at(110))
	x.SetExternalNameAddrs("shop/web", "", []netip.Addr{a1}, at(110))
	if _, n := x.ExternalNameAt(a1, at(111)); n != 0 {
		t.Error("a ClusterIP Service was given resolved addresses")
	}
}

// Two Services resolving to one address at once: neither is named and the
// lookup says there are two (the pipeline counts the connection); once one
// stops, the other is named.
func TestExternalNameAmbiguous(t *testing.T) {
	x := NewIndex(IndexConfig{Slack: 500 * time.Millisecond})
	a := netip.MustParseAddr("2001:db8::5")
	x.SetService(extSvc("a", "db", "db.a.test"), at(0))
	x.SetService(extSvc("b", "db", "db.b.test"), at(0))
	x.SetExternalNameAddrs("a/db", "db.a.test", []netip.Addr{a}, at(1))
	x.SetExternalNameAddrs("b/db", "db.b.test", []netip.Addr{a}, at(2))
	if s, n := x.ExternalNameAt(a, at(1)); n != 1 || s.Key() != "a/db" {
		t.Errorf("before b resolved: %v %d, want a/db", s, n)
	}
	if s, n := x.ExternalNameAt(a, at(10)); s != nil || n != 2 {
		t.Errorf("ambiguous address: named %v, %d Services, want none of 2", s, n)
	}
	x.SetExternalNameAddrs("a/db", "db.a.test", nil, at(20))
	if s, n := x.ExternalNameAt(a, at(30)); n != 1 || s.Key() != "b/db" {
		t.Errorf("after a moved away: %v %d, want b/db", s, n)
	}
}

// The resolver loop: a new Service is resolved at once (not after the
// interval), errors are counted, NXDOMAIN closes, other errors keep, and
// names past Max are skipped and counted.
func TestResolveExternalNames(t *testing.T) {
	x := NewIndex(IndexConfig{Slack: time.Millisecond})
	a := netip.MustParseAddr("192.0.2.30")
	res := &fakeResolver{answers: map[string][]netip.Addr{"db.example.test": {a}}, errs: map[string]error{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		x.ResolveExternalNames(ctx, ExternalNameConfig{Resolver: res, Interval: time.Hour, Max: 1}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	defer func() { cancel(); <-done }()
	x.SetService(extSvc("shop", "db", "db.example.test"), time.Now())
	waitFor(t, func() bool { _, n := x.ExternalNameAt(a, time.Now()); return n == 1 })

	res.mu.Lock()
	res.errs["db.example.test"] = errors.New("i/o timeout")
	res.mu.Unlock()
	x.SetService(extSvc("shop", "zz", "zz.example.test"), time.Now()) // wakes a round; past Max
	waitFor(t, func() bool { return x.ExternalNames.Errors.Load() == 1 && x.ExternalNames.Skipped.Load() >= 1 })
	if _, n := x.ExternalNameAt(a, time.Now()); n != 1 {
		t.Error("a temporary error dropped the last answer")
	}
	res.mu.Lock()
	res.errs["db.example.test"] = &net.DNSError{Err: "no such host", Name: "db.example.test", IsNotFound: true}
	res.mu.Unlock()
	x.SetService(extSvc("shop", "zz", "zz2.example.test"), time.Now())
	waitFor(t, func() bool { return x.ExternalNames.Errors.Load() == 2 })
	time.Sleep(5 * time.Millisecond) // past the slack
	if _, n := x.ExternalNameAt(a, time.Now()); n != 0 {
		t.Error("NXDOMAIN kept the address named")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
