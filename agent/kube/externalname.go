package kube

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync/atomic"
	"time"
)

// ExternalName Services have no ClusterIP and no NAT: the cluster DNS
// answers their name with a CNAME to spec.externalName and the pod
// connects to whatever that resolves to. The kernel never sees the
// resolution, so the agent resolves each externalName itself and indexes
// the answers with the time they were seen; a connection to such an
// address is named as *resolved*, never as a translation
// (docs/ARCHITECTURE.md, "ExternalName Services").

// Resolver is the part of net.Resolver the agent uses; tests may inject
// another.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// extSpan is one resolved address of one ExternalName Service.
type extSpan struct {
	svc      *Service
	from, to time.Time // to is zero while the last answer still held it
}

// ExternalNameStats counts the resolver's work. Ambiguous counts
// connections to an address that several Services resolved to at once
// (left unnamed); the path pipeline counts each connection once.
type ExternalNameStats struct {
	Lookups, Errors, Skipped, Ambiguous atomic.Uint64
}

// SetExternalNameAddrs records the addresses key's externalName (name)
// resolved to at now: addresses no longer in the answer are closed, new ones opened.
func (x *Index) SetExternalNameAddrs(key, name string, addrs []netip.Addr, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := x.svcs[key]
	if s == nil || name == "" || s.ExternalName != name {
		return // deleted or changed while it was being resolved
	}
	x.closeExternalName(key, func(a netip.Addr) bool { return !slices.Contains(addrs, a) }, now)
	for _, a := range addrs {
		a = a.Unmap()
		tl := x.extByIP[a]
		open := slices.IndexFunc(tl, func(sp extSpan) bool { return sp.to.IsZero() && sp.svc.Key() == key })
		if open >= 0 {
			tl[open].svc = s
			continue
		}
		tl = append(tl, extSpan{svc: s, from: now})
		x.extByIP[a] = x.pruneExt(tl, now)
	}
}

// closeExternalName ends key's open spans on the addresses drop selects.
func (x *Index) closeExternalName(key string, drop func(netip.Addr) bool, now time.Time) {
	for a, tl := range x.extByIP {
		if !drop(a) {
			continue
		}
		for i := range tl {
			if tl[i].to.IsZero() && tl[i].svc.Key() == key {
				tl[i].to = now
			}
		}
		if tl = x.pruneExt(tl, now); len(tl) == 0 {
			delete(x.extByIP, a)
		} else {
			x.extByIP[a] = tl
		}
	}
}

// pruneExt drops closed spans older than History, then the oldest beyond
// MaxSpans (counted in Stats.Pruned).
func (x *Index) pruneExt(tl []extSpan, now time.Time) []extSpan {
	tl = slices.DeleteFunc(tl, func(sp extSpan) bool { return !sp.to.IsZero() && now.Sub(sp.to) > x.cfg.History })
	if extra := len(tl) - x.cfg.MaxSpans; extra > 0 {
		x.Stats.Pruned.Add(uint64(extra))
		tl = slices.Delete(tl, 0, extra)
	}
	return tl
}

// ExternalNameAt names the ExternalName Service whose externalName the
// agent had resolved to ip at t (within the index's slack). n is how many
// Services held ip at t: with several, the address is ambiguous and s is
// nil. It counts nothing: a connection is named several times while it
// waits for metadata, so the caller counts an ambiguous connection once
// (ExternalNames.Ambiguous, agent/path Pipeline).
func (x *Index) ExternalNameAt(ip netip.Addr, t time.Time) (s *Service, n int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var keys []string
	for _, sp := range x.extByIP[ip.Unmap()] {
		if t.Before(sp.from.Add(-x.cfg.Slack)) || (!sp.to.IsZero() && !t.Before(sp.to.Add(x.cfg.Slack))) {
			continue
		}
		if k := sp.svc.Key(); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
		s = sp.svc
	}
	if len(keys) > 1 {
		return nil, len(keys)
	}
	return s, len(keys)
}

// externalNameChanged closes the resolved addresses of old when s (nil:
// deleted) no longer resolves the same name, and wakes the resolver for a
// new name. Called with x.mu held.
func (x *Index) externalNameChanged(old, s *Service, now time.Time) {
	oldName, newName := "", ""
	if old != nil {
		oldName = old.ExternalName
	}
	if s != nil {
		newName = s.ExternalName
	}
	if oldName == newName {
		return
	}
	if oldName != "" {
		x.closeExternalName(old.Key(), func(netip.Addr) bool { return true }, now)
	}
	if newName != "" {
		select {
		case x.extWake <- struct{}{}:
		default:
		}
	}
}

// ExternalNameConfig tunes ResolveExternalNames.
type ExternalNameConfig struct {
	// Resolver answers the lookups; nil means the system resolver.
	Resolver Resolver
	// Interval is how often every externalName is resolved again.
	// Default 30s.
	Interval time.Duration
	// Max bounds the names resolved per round; the rest are counted in
	// Skipped. Default 256.
	Max int
	// Timeout bounds one lookup. Default 5s.
	Timeout time.Duration
}

// NewDNSResolver returns a resolver that sends every query to server
// (host:port) instead of the system's name servers.
func NewDNSResolver(server string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
}

// ResolveExternalNames resolves the index's ExternalName Services every
// Interval, and at once when one appears or changes, until ctx is done.
// Errors are counted, never fatal: a temporary failure keeps the last
// answer, a name that does not exist closes its addresses.
func (x *Index) ResolveExternalNames(ctx context.Context, cfg ExternalNameConfig, log *slog.Logger) {
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.Max <= 0 {
		cfg.Max = 256
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	for {
		x.resolveRound(ctx, cfg, log)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-x.extWake:
		}
	}
}

func (x *Index) resolveRound(ctx context.Context, cfg ExternalNameConfig, log *slog.Logger) {
	var names []*Service
	for _, s := range x.Services() {
		if s.ExternalName != "" {
			names = append(names, s)
		}
	}
	sort.Slice(names, func(i, j int) bool { return names[i].Key() < names[j].Key() })
	if len(names) > cfg.Max {
		x.ExternalNames.Skipped.Add(uint64(len(names) - cfg.Max))
		names = names[:cfg.Max]
	}
	for _, s := range names {
		lctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		addrs, err := cfg.Resolver.LookupNetIP(lctx, "ip", s.ExternalName)
		cancel()
		x.ExternalNames.Lookups.Add(1)
		if err != nil {
			x.ExternalNames.Errors.Add(1)
			var de *net.DNSError
			if !errors.As(err, &de) || !de.IsNotFound {
				log.Debug("externalName lookup failed; last answer kept", "service", s.Key(), "name", s.ExternalName, "err", err)
				continue
			}
			addrs = nil
		}
		x.SetExternalNameAddrs(s.Key(), s.ExternalName, addrs, time.Now())
	}
}
