package k8s

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/testbed"
)

// StartHostDNS runs CoreDNS (bin: the testbed's build, EnsureCoreDNS) on
// the host as a child of the control plane, serving the cluster domain
// from the API server through the admin kubeconfig: Services (an
// ExternalName Service's name is a CNAME to its externalName, chased
// within the zone) and Pod records by address ("pods insecure", as
// kubeadm's Corefile has it: a-b-c-d.<namespace>.pod.<domain> is
// a.b.c.d, authoritatively). No cache and TTL 0, so a changed answer shows
// at once. The trimmed build has no bind plugin: it listens on every host
// address at a free port; the returned address is 127.0.0.1:port, once
// CoreDNS answers. It stops with the control plane (Down).
func (c *Cluster) StartHostDNS(ctx context.Context, bin string) (netip.AddrPort, error) {
	port, err := testbed.FreePort("127.0.0.1")
	if err != nil {
		return netip.AddrPort{}, err
	}
	corefile := fmt.Sprintf(`%s:%d {
    errors
    kubernetes %s {
        kubeconfig %s
        pods insecure
        ttl 0
    }
}
`, ClusterDomain, port, ClusterDomain, c.CP.Kubeconfig)
	path := filepath.Join(c.CP.st.dir, "Corefile-host")
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		return netip.AddrPort{}, fmt.Errorf("write host CoreDNS Corefile: %w", err)
	}
	p, err := c.CP.startProcess("coredns-host", bin, "-conf", path)
	if err != nil {
		return netip.AddrPort{}, err
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	// The kubernetes plugin answers once its informers have synced.
	r := kube.NewDNSResolver(addr.String())
	probe := "kubernetes.default.svc." + ClusterDomain
	for deadline := time.Now().Add(30 * time.Second); ; {
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := r.LookupNetIP(lctx, "ip4", probe)
		cancel()
		switch {
		case err == nil:
			return addr, nil
		case p.exited():
			return netip.AddrPort{}, fmt.Errorf("host CoreDNS: %w (log %s)", p.failure(), p.logPath)
		case time.Now().After(deadline):
			return netip.AddrPort{}, fmt.Errorf("host CoreDNS at %v: %s unresolved after 30s: %w (log %s)", addr, probe, err, p.logPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
