package kube

import "time"

// uidEntry is a pod by UID: the current view, and when it was deleted
// (zero while it exists). Deleted pods stay for History: a connection to
// a pod deleted during a rollout is named after the pod is gone.
type uidEntry struct {
	pod     *Pod
	deleted time.Time
}

// setUID records p under its UID. Called with mu held.
func (x *Index) setUID(p *Pod, now time.Time) {
	if p.UID == "" {
		return
	}
	if x.byUID == nil {
		x.byUID = map[string]uidEntry{}
	}
	x.byUID[p.UID] = uidEntry{pod: p}
	x.pruneUIDs(now)
}

// deleteUID marks a pod deleted; it is forgotten History later. Called
// with mu held.
func (x *Index) deleteUID(p *Pod, now time.Time) {
	if e, ok := x.byUID[p.UID]; ok {
		e.deleted = now
		x.byUID[p.UID] = e
	}
	x.pruneUIDs(now)
}

// pruneUIDs forgets pods deleted more than History ago, at most once a
// second (a walk of the map).
func (x *Index) pruneUIDs(now time.Time) {
	if now.Sub(x.uidPruned) < time.Second {
		return
	}
	x.uidPruned = now
	for uid, e := range x.byUID {
		if !e.deleted.IsZero() && now.Sub(e.deleted) > x.cfg.History {
			delete(x.byUID, uid)
		}
	}
}

// PodByUID returns the pod with this UID, also one deleted within
// History: the pod whose sandbox a socket's network namespace was
// (agent/podns), whatever address it had.
func (x *Index) PodByUID(uid string) (*Pod, bool) {
	x.mu.RLock()
	e, ok := x.byUID[uid]
	var p *Pod
	if ok {
		p = e.pod
		if p.Deployment == "" && p.ReplicaSet != "" {
			p = x.withDeployment(p)
		}
	}
	x.mu.RUnlock()
	return p, ok
}
