package k8s

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/lbpath/lbpath/testbed/socketlb"
)

// slbFeed keeps the socket-LB translator's Services and backends equal to
// the API server's Services and EndpointSlices, as Cilium's agent does
// for its socket-LB maps: every ClusterIP of every family, each TCP and
// UDP port, the ready endpoints of the slices of that family.
type slbFeed struct {
	tr     *socketlb.Translator
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	set     map[slbKey]bool // what the maps hold, to clear what went away
	lastErr error
	syncs   int
}

type slbKey struct {
	proto socketlb.Proto
	vip   netip.AddrPort
}

// startSocketLB attaches the translator on the cgroup v2 root for every
// namespace of the testbed and starts feeding it from the API server.
// kube-proxy keeps running: it serves NodePorts and LB IPs, and its
// ClusterIP rules never see a connect the translator rewrote.
func (c *Cluster) startSocketLB(ctx context.Context) error {
	tr, err := c.TB.AttachSocketLB()
	if err != nil {
		return fmt.Errorf("socket-LB translator: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	f := &slbFeed{tr: tr, cancel: cancel, done: make(chan struct{}), set: map[slbKey]bool{}}
	factory := informers.NewSharedInformerFactory(c.Client, 0)
	svcs := factory.Core().V1().Services()
	slices := factory.Discovery().V1().EndpointSlices()
	kick := make(chan struct{}, 1)
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify(kick) },
		UpdateFunc: func(any, any) { notify(kick) },
		DeleteFunc: func(any) { notify(kick) },
	}
	for _, inf := range []cache.SharedIndexInformer{svcs.Informer(), slices.Informer()} {
		if _, err := inf.AddEventHandler(h); err != nil {
			cancel()
			return fmt.Errorf("socket-LB feed: %w", err)
		}
	}
	factory.Start(runCtx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), svcs.Informer().HasSynced, slices.Informer().HasSynced) {
		cancel()
		factory.Shutdown()
		return fmt.Errorf("socket-LB feed: sync caches: %w", context.Cause(ctx))
	}
	go func() {
		defer close(f.done)
		defer factory.Shutdown()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-kick:
			}
			err := f.sync(svcs.Lister().List, slices.Lister().List)
			if err != nil {
				c.log.Warn("socket-LB feed: sync failed", "err", err)
			}
		}
	}()
	notify(kick)
	c.slb = f
	return nil
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// stopSocketLB ends the feed; the translator itself is detached by the
// testbed's Down.
func (c *Cluster) stopSocketLB() {
	if c.slb == nil {
		return
	}
	c.slb.cancel()
	<-c.slb.done
}

// SocketLB is the translator fed from the API server (nil without
// Options.SocketLB).
func (c *Cluster) SocketLB() *socketlb.Translator {
	if c.slb == nil {
		return nil
	}
	return c.slb.tr
}

// sync writes every Service's backends and clears the ones gone.
func (f *slbFeed) sync(listSvcs func(labels.Selector) ([]*corev1.Service, error),
	listSlices func(labels.Selector) ([]*discoveryv1.EndpointSlice, error)) error {
	svcs, err := listSvcs(labels.Everything())
	if err != nil {
		return err
	}
	eps, err := listSlices(labels.Everything())
	if err != nil {
		return err
	}
	want := desiredBackends(svcs, eps)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs++
	var errs []error
	for k, bes := range want {
		if err := f.tr.SetService(k.proto, k.vip, bes); err != nil {
			errs = append(errs, err)
		}
	}
	for k := range f.set {
		if _, ok := want[k]; !ok {
			errs = append(errs, f.tr.SetService(k.proto, k.vip, nil))
		}
	}
	f.set = map[slbKey]bool{}
	for k := range want {
		f.set[k] = true
	}
	if len(errs) > 0 {
		f.lastErr = fmt.Errorf("socket-LB feed: %v", errs)
	}
	return f.lastErr
}

// desiredBackends maps each ClusterIP:port of each Service (both
// families, TCP and UDP) to the ready endpoints of its slices of that
// family, on the slice port of the same name and protocol.
func desiredBackends(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice) map[slbKey][]netip.AddrPort {
	out := map[slbKey][]netip.AddrPort{}
	for _, s := range svcs {
		for _, cip := range s.Spec.ClusterIPs {
			vip, err := netip.ParseAddr(cip)
			if err != nil {
				continue // "None": headless, nothing to translate
			}
			for _, p := range s.Spec.Ports {
				proto, ok := slbProto(p.Protocol)
				if !ok {
					continue
				}
				k := slbKey{proto, netip.AddrPortFrom(vip, uint16(p.Port))}
				out[k] = readyBackends(s, p, vip.Is4(), eps)
			}
		}
	}
	return out
}

func slbProto(p corev1.Protocol) (socketlb.Proto, bool) {
	switch p {
	case corev1.ProtocolTCP, "":
		return socketlb.TCP, true
	case corev1.ProtocolUDP:
		return socketlb.UDP, true
	}
	return 0, false // SCTP: not served
}

func readyBackends(s *corev1.Service, p corev1.ServicePort, v4 bool, eps []*discoveryv1.EndpointSlice) []netip.AddrPort {
	var out []netip.AddrPort
	for _, sl := range eps {
		if sl.Namespace != s.Namespace || sl.Labels[discoveryv1.LabelServiceName] != s.Name {
			continue
		}
		if (sl.AddressType == discoveryv1.AddressTypeIPv4) != v4 {
			continue
		}
		for _, sp := range sl.Ports {
			if sp.Port == nil || ptrOr(sp.Name, "") != p.Name || ptrOr(sp.Protocol, corev1.ProtocolTCP) != p.Protocol {
				continue
			}
			for _, e := range sl.Endpoints {
				if e.Conditions.Ready != nil && !*e.Conditions.Ready {
					continue // not ready (terminating included)
				}
				for _, a := range e.Addresses {
					if ip, err := netip.ParseAddr(a); err == nil {
						out = append(out, netip.AddrPortFrom(ip, uint16(*sp.Port)))
					}
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return slices.Compact(out)
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
