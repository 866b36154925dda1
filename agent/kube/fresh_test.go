package kube

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestResourceOf(t *testing.T) {
	for path, want := range map[string]string{
		"/api/v1/pods":                                     "pods",
		"/api/v1/namespaces/default/pods":                  "pods",
		"/api/v1/namespaces/default/pods/web-1":            "pods",
		"/api/v1/nodes":                                    "nodes",
		"/api/v1/services":                                 "services",
		"/apis/discovery.k8s.io/v1/endpointslices":         "endpointslices",
		"/apis/apps/v1/namespaces/shop/replicasets":        "replicasets",
		"/api/v1/namespaces":                               "",
		"/api/v1/namespaces/default":                       "",
		"/api/v1/configmaps":                               "",
		"/version":                                         "",
		"/apis":                                            "",
		"/apis/coordination.k8s.io/v1/namespaces/x/leases": "",
	} {
		if got := resourceOf(path); got != want {
			t.Errorf("resourceOf(%q) = %q, want %q", path, got, want)
		}
	}
}

// TestFreshnessFromTransport drives the counting transport against a real
// HTTP server whose answers the test switches: a failing resource makes
// the index stale until that same resource is answered 2xx again, and a
// time before the recovery stays stale.
func TestFreshnessFromTransport(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	var f Freshness
	st := &APIStats{Fresh: &f}
	client := &http.Client{Transport: countingTransport{next: http.DefaultTransport, st: st}}
	get := func(path string) {
		t.Helper()
		resp, err := client.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}

	before := time.Now()
	if f.CurrentAt(before) {
		t.Fatal("current before the informers synced")
	}
	get("/api/v1/pods")
	synced := time.Now()
	f.Synced(synced)
	if f.CurrentAt(before) {
		t.Error("current at a time before the sync")
	}
	if !f.CurrentAt(time.Now()) {
		t.Fatal("not current after the sync")
	}

	status.Store(http.StatusServiceUnavailable)
	get("/api/v1/namespaces/default/pods")
	if f.CurrentAt(time.Now()) || f.CurrentAt(synced) {
		t.Fatal("current while the pods watch fails")
	}
	status.Store(http.StatusOK)
	get("/api/v1/nodes") // another resource's success clears nothing
	if f.CurrentAt(time.Now()) {
		t.Fatal("current after another resource answered, pods still failing")
	}
	duringOutage := time.Now()
	time.Sleep(time.Millisecond)
	get("/api/v1/pods?watch=true")
	after := time.Now()
	if !f.CurrentAt(after) {
		t.Error("not current after pods answered again")
	}
	if f.CurrentAt(duringOutage) || f.CurrentAt(synced) {
		t.Error("times before the recovery became current: changes made during the outage may be missing there")
	}
	if got := st.Failures.Load(); got != 1 {
		t.Errorf("failures = %d, want 1", got)
	}

	// A transport error (server gone) is a failure too; a path the
	// informers do not watch is ignored.
	status.Store(http.StatusInternalServerError)
	get("/version")
	if !f.CurrentAt(time.Now()) {
		t.Error("a request the informers do not make made the index stale")
	}
	srv.Close()
	if _, err := client.Get(srv.URL + "/apis/discovery.k8s.io/v1/endpointslices"); err == nil {
		t.Fatal("request to a closed server succeeded")
	}
	if f.CurrentAt(time.Now()) {
		t.Error("current after a transport error")
	}
}

// A watch error reported by an informer makes the index stale like a
// failed request.
func TestFreshnessWatchError(t *testing.T) {
	var f Freshness
	t0 := time.Now()
	f.Synced(t0)
	f.Fail("endpointslices")
	if f.CurrentAt(t0.Add(time.Second)) {
		t.Fatal("current after a watch error")
	}
	f.OK("endpointslices", t0.Add(2*time.Second))
	if !f.CurrentAt(t0.Add(2*time.Second)) || f.CurrentAt(t0.Add(time.Second)) {
		t.Error("recovery time not honoured")
	}
}
