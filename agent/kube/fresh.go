package kube

import (
	"strings"
	"sync"
	"time"
)

// Freshness tells whether the index held every change the API server knew
// of at a given time. A name found in the index is a positive fact; "no
// pod had this address" is only a fact if the index was complete then.
// That is what lets agent/path call a connection the node's own traffic
// instead of a pod's that could not be named.
//
// The index is current at t when
//   - every informer had listed once (synced) no later than t, and
//   - no informer was failing at t or since: the last failed request or
//     watch error of every resource was followed by a successful (2xx)
//     request for that resource no later than t.
//
// Failures are seen twice: by the client's transport (transport errors,
// 5xx and 429 answers, per resource from the request path), which is how a
// watch stream cut by an API server outage shows (client-go re-watches at
// once and the new request fails), and by the informers' watch error
// handlers (a list whose body broke off). Success is seen only by the
// transport: with a client not built by Config.Client, a failure is never
// cleared, so the index is never taken as current again — the safe side.
//
// Known limit: a watch that hangs silently (no FIN, no error) looks current
// until client-go's HTTP/2 health check fails it (about 45 s).
type Freshness struct {
	mu        sync.Mutex
	syncedAt  time.Time
	failing   map[string]bool // resource → failed and not yet answered 2xx since
	recovered time.Time       // when the last failing resource recovered
}

// Synced records that every informer has listed once, at t.
func (f *Freshness) Synced(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.syncedAt.IsZero() {
		f.syncedAt = t
	}
}

// Fail records a failed request or watch for resource.
func (f *Freshness) Fail(resource string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing == nil {
		f.failing = map[string]bool{}
	}
	f.failing[resource] = true
}

// OK records a successful request for resource at t.
func (f *Freshness) OK(resource string, t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.failing[resource] {
		return
	}
	delete(f.failing, resource)
	if len(f.failing) == 0 && t.After(f.recovered) {
		f.recovered = t
	}
}

// CurrentAt reports whether the index held every change known to the API
// server at t (see Freshness).
func (f *Freshness) CurrentAt(t time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.syncedAt.IsZero() && !f.syncedAt.After(t) && len(f.failing) == 0 && !f.recovered.After(t)
}

// watchedResources are the resources the Watcher's informers list and
// watch: the only ones whose failures make the index stale.
var watchedResources = map[string]bool{"pods": true, "nodes": true, "services": true, "endpointslices": true, "replicasets": true}

// resourceOf returns the resource a request path addresses
// (/api/v1/pods, /api/v1/namespaces/x/pods, /apis/discovery.k8s.io/v1/endpointslices)
// when it is one the informers watch, else "".
func resourceOf(path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(segs) >= 3 && segs[0] == "api":
		segs = segs[2:] // api, v1
	case len(segs) >= 4 && segs[0] == "apis":
		segs = segs[3:] // apis, group, version
	default:
		return ""
	}
	if len(segs) >= 3 && segs[0] == "namespaces" {
		segs = segs[2:]
	}
	if watchedResources[segs[0]] {
		return segs[0]
	}
	return ""
}
