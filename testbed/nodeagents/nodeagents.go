// Package nodeagents runs one lbpath agent per testbed node, in-process,
// and collects every Connection they emit. The e2e tests and the demo use
// it; it is the testbed's stand-in for a DaemonSet.
package nodeagents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/lbpath/lbpath/agent"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/testbed"
)

// Set is the running agents of one cluster and what they emitted.
type Set struct {
	Agents []*agent.Agent
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   []error

	mu   sync.Mutex
	recs []flow.Connection
}

// Options configure every agent of the set.
type Options struct {
	Flow flow.Config
	// Kubeconfig, when set, names connections from that API server.
	Kubeconfig string
	// GatewayRecheck is how often agents ask whether the Gateway API is
	// served while it is not (kube.Config.GatewayRecheck).
	GatewayRecheck time.Duration
	// Metadata bounds the wait for names.
	Metadata path.PipelineConfig
	// Export, when set, sends each agent's spans and metrics over OTLP.
	Export *exporter.Config
	// Path receives named records (with or without Kubernetes names).
	Path func(*path.Path)
	// Request receives named requests.
	Request func(*path.Request)
	// UDP configures each agent's UDP capture.
	UDP agent.UDPConfig
	// PodCIDRScope also scopes each agent to sockets whose local address
	// is in its node's pod CIDR, as the agent's --pod-cidr does: pods a
	// real kubelet made live in namespaces the testbed does not know.
	// Only one cluster with those addresses may run (real nodes take the
	// host link lock).
	PodCIDRScope bool
	// Names tunes each agent's naming and diagnoses (path.Config; the
	// node and its addresses are set per agent).
	Names path.Config
	// ExternalNameResolver is the DNS server (host:port) the agents
	// resolve ExternalName Services' externalName with, as the agent's
	// --externalname-resolver; empty means the system resolver. Only
	// with Kubeconfig.
	ExternalNameResolver string
}

// Start runs an agent for every node of cl. Each agent attaches to its
// node's namespace and is scoped to the namespaces of that node and its
// pods: all simulated nodes share one kernel, and scoping by namespace
// rather than pod CIDR stays right even when another testbed cluster with
// the same addresses runs at the same time.
func Start(cl *testbed.Cluster, opt Options, log *slog.Logger) (*Set, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Set{cancel: cancel}
	for _, n := range cl.Nodes {
		cfg := agent.Config{Node: n.Name, Netns: n.Netns, Scope: scope(cl, n, opt.PodCIDRScope), Flow: opt.Flow,
			Metadata: opt.Metadata, Export: opt.Export, UDP: opt.UDP, Path: opt.Names}
		if opt.Kubeconfig != "" {
			cfg.Kube = &kube.Config{Kubeconfig: opt.Kubeconfig, GatewayRecheck: opt.GatewayRecheck,
				ExternalNameResolver: opt.ExternalNameResolver}
		}
		a, err := agent.New(cfg, log, agent.Outputs{Connection: s.add, Path: opt.Path, Request: opt.Request})
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("agent for %s: %w", n.Name, err)
		}
		s.Agents = append(s.Agents, a)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := a.Run(ctx); err != nil {
				s.mu.Lock()
				s.errs = append(s.errs, fmt.Errorf("agent %s: %w", n.Name, err))
				s.mu.Unlock()
			}
		}()
	}
	// Let the conntrack subscriptions and their first dump finish.
	time.Sleep(300 * time.Millisecond)
	return s, nil
}

func (s *Set) add(c *flow.Connection) {
	s.mu.Lock()
	s.recs = append(s.recs, *c)
	s.mu.Unlock()
}

// Records returns a copy of everything emitted so far.
func (s *Set) Records() []flow.Connection {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]flow.Connection(nil), s.recs...)
}

// Stop stops every agent (flushing what they hold) and returns their errors.
func (s *Set) Stop() error {
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// scope admits sockets in node n's namespace or in the namespace of a pod
// on n. Pods come and go (rollouts), so an inode never seen before triggers
// a refresh; inodes known to be someone else's are remembered for a few
// seconds (a namespace inode can be reused after deletion).
func scope(cl *testbed.Cluster, n *testbed.Node, byCIDR bool) func(netip.Addr, uint32) bool {
	var mu sync.Mutex
	ours := map[uint32]bool{}
	notOurs := map[uint32]time.Time{}
	refresh := func() {
		ours = map[uint32]bool{}
		if ino, err := netns.Inode(n.Netns); err == nil {
			ours[ino] = true
		}
		pods := append(append([]*testbed.Pod(nil), cl.Pods...), cl.ClientPod)
		pods = append(pods, cl.AddedPods()...)
		for _, p := range pods {
			if p != nil && p.Node == n {
				if ino, err := netns.Inode(p.Netns); err == nil {
					ours[ino] = true
				}
			}
		}
	}
	refresh()
	return func(local netip.Addr, ino uint32) bool {
		if byCIDR && n.PodCIDR.Contains(local.Unmap()) {
			return true
		}
		mu.Lock()
		defer mu.Unlock()
		if ours[ino] {
			return true
		}
		if t, ok := notOurs[ino]; ok && time.Since(t) < 5*time.Second {
			return false
		}
		refresh()
		if ours[ino] {
			return true
		}
		notOurs[ino] = time.Now()
		return false
	}
}
