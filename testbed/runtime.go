package testbed

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
)

// HostLinkName is the name of the host side of the LAN link Options.HostLink
// creates for the cluster with this prefix. Interface names are limited to 15
// bytes, so it is a hash of the prefix rather than the prefix itself.
func HostLinkName(prefix string) string {
	sum := sha256.Sum256([]byte(prefix))
	return "lbh" + hex.EncodeToString(sum[:])[:8]
}

// buildHostLink connects the host namespace to the LAN bridge. The pair is
// created from the host side so that its peer lands directly in the LAN
// namespace; deleting that namespace destroys the pair, so Down and Cleanup
// remain complete.
func (c *Cluster) buildHostLink(ctx context.Context) error {
	host := HostLinkName(c.Opt.Prefix)
	lan := filepath.Base(c.LAN.Netns)
	// A crashed run's link may outlive its namespace for a moment: the
	// kernel dismantles deleted namespaces asynchronously.
	_ = deleteHostLink(ctx, host)
	if err := ipBatch(ctx, "", []string{
		"link add name " + host + " type veth peer name veth-host netns " + lan,
	}); err != nil {
		return fmt.Errorf("create host link %s: %w", host, err)
	}
	// Before the address exists, so the host never starts IPv6 autoconf
	// on it; rp_filter because replies of nodes are routed asymmetrically
	// in nothing but a misconfigured host.
	if err := writeSysctls("", [][2]string{
		{"net.ipv6.conf." + host + ".disable_ipv6", "1"},
		{"net.ipv4.conf." + host + ".rp_filter", "0"},
	}); err != nil {
		return fmt.Errorf("configure host link %s: %w", host, err)
	}
	if err := ipBatch(ctx, lan, []string{"link set veth-host master br0 up"}); err != nil {
		return fmt.Errorf("attach host link to LAN: %w", err)
	}
	if err := ipBatch(ctx, "", []string{
		"addr add " + netip.PrefixFrom(HostIP, LANPrefix.Bits()).String() + " dev " + host,
		"link set " + host + " up",
	}); err != nil {
		return fmt.Errorf("address host link %s: %w", host, err)
	}
	return nil
}

// hostLinkLock serializes clusters with a host link across processes (e.g.
// `go test ./...` running packages in parallel): they would all put HostIP
// and a LANPrefix route on the host.
const hostLinkLock = "/run/lbpath-hostlink.lock"

// lockHostLink waits for the host link lock. The kernel drops it when the
// holder dies, so a crashed run never blocks the next one.
func lockHostLink(ctx context.Context, log *slog.Logger) (*os.File, error) {
	f, err := os.OpenFile(hostLinkLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open host link lock: %w", err)
	}
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", hostLinkLock, err)
		}
		if !logged {
			log.Info("waiting for another cluster with a host link to go down", "lock", hostLinkLock)
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for host link lock %s: %w", hostLinkLock, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// deleteHostLink removes the host end of a host link (and so its peer) if it
// exists.
func deleteHostLink(ctx context.Context, name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return nil
	}
	return ipBatch(ctx, "", []string{"link del " + name})
}

// AddPod creates a server pod at run time, as a kubelet would: a namespace
// routed through its node like the pods of Up, with an HTTP server answering
// with spec.Name after spec.Delay. ip must lie in the node's pod CIDR and not
// be in use by another pod. Names and IPs may be reused after RemovePod.
func (c *Cluster) AddPod(ctx context.Context, spec PodSpec, ip netip.Addr) (*Pod, error) {
	return c.AddPodIPs(ctx, spec, ip)
}

// AddPodIPs is AddPod for a pod with one address per family of the cluster
// (see PodAddrs), the primary family's first. Each must lie in the node's
// pod CIDR of its family.
func (c *Cluster) AddPodIPs(ctx context.Context, spec PodSpec, ips ...netip.Addr) (*Pod, error) {
	if len(ips) == 0 {
		return nil, fmt.Errorf("add pod %s: no IP", spec.Name)
	}
	ip := ips[0]
	if !validName.MatchString(spec.Name) || len(spec.Name) > 200 {
		return nil, fmt.Errorf("add pod: invalid name %q", spec.Name)
	}
	if spec.Node < 1 || spec.Node > len(c.Nodes) {
		return nil, fmt.Errorf("add pod %s on node %d: only %d nodes", spec.Name, spec.Node, len(c.Nodes))
	}
	node := c.Nodes[spec.Node-1]
	for _, a := range ips {
		cidr := node.PodCIDR
		if len(node.PodCIDRs) > 0 {
			cidr = pickPrefix(node.PodCIDRs, a)
		}
		if !cidr.Contains(a) || a == cidr.Addr() {
			return nil, fmt.Errorf("add pod %s: IP %s not usable in %s's pod CIDR %s", spec.Name, a, node.Name, cidr)
		}
	}
	nsName := c.Opt.Prefix + "-p-" + spec.Name
	pod := &Pod{Name: spec.Name, Node: node, Netns: netnsPath(nsName), IP: ip, Port: PodPort, IPs: slices.Clone(ips)}

	// Reserve name, IP and veth under the lock; the slow kernel work runs
	// without it so that NAT syncs and other pods are not held up.
	c.mu.Lock()
	if err := c.checkNewPodLocked(pod); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	pod.HostVeth = fmt.Sprintf("cali%d", c.nextVeth)
	c.nextVeth++
	c.added[spec.Name] = &addedPod{pod: pod}
	c.mu.Unlock()

	srv, err := c.buildPod(ctx, pod, spec)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && c.down {
		// Down ran meanwhile and did not see the server yet.
		err = errors.New("cluster is down")
		_ = srv.stop()
	}
	if err != nil {
		delete(c.added, spec.Name)
		ino, ok := c.inodes[nsName]
		delete(c.inodes, nsName)
		if ok {
			err = errors.Join(err, deleteNetns(nsName, ino))
		}
		return nil, fmt.Errorf("add pod %s: %w", spec.Name, err)
	}
	c.added[spec.Name].server = srv
	if c.slb != nil {
		if err := c.slb.AllowNetns(pod.Netns); err != nil {
			return nil, fmt.Errorf("add pod %s: %w", spec.Name, err)
		}
	}
	return pod, nil
}

func (c *Cluster) checkNewPodLocked(pod *Pod) error {
	if c.down {
		return fmt.Errorf("add pod %s: cluster is down", pod.Name)
	}
	for _, p := range c.allPods() {
		if p.Name == pod.Name || p.IP == pod.IP || slices.ContainsFunc(pod.IPs, func(a netip.Addr) bool { return slices.Contains(p.addrs(), a) }) {
			return fmt.Errorf("add pod %s/%s: conflicts with pod %s/%s", pod.Name, pod.IP, p.Name, p.IP)
		}
	}
	for _, a := range c.added {
		if a.pod.Name == pod.Name || a.pod.IP == pod.IP {
			return fmt.Errorf("add pod %s/%s: conflicts with pod %s/%s", pod.Name, pod.IP, a.pod.Name, a.pod.IP)
		}
	}
	return nil
}

// buildPod is the run-time twin of the pod part of build.
func (c *Cluster) buildPod(ctx context.Context, pod *Pod, spec PodSpec) (podRunner, error) {
	nsName := filepath.Base(pod.Netns)
	if err := ipBatch(ctx, "", []string{"netns add " + nsName}); err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	ino, err := netns.Inode(pod.Netns)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.inodes[nsName] = ino
	c.mu.Unlock()

	kv := [][2]string{
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv6.conf.default.disable_ipv6", "1"},
	}
	if c.Opt.has6() {
		kv = append(kv[:2], c.ipv6Sysctls(false)...)
	}
	if err := writeSysctls(pod.Netns, kv); err != nil {
		return nil, err
	}
	// replace, not add: a route left by a pod whose namespace the
	// kernel has not finished dismantling must not block its IP.
	if err := ipBatch(ctx, filepath.Base(pod.Node.Netns), append([]string{
		"link add name " + pod.HostVeth + " type veth peer name eth0 netns " + nsName,
		"link set " + pod.HostVeth + " up",
	}, c.podVethCmds(pod, "replace")...)); err != nil {
		return nil, fmt.Errorf("wire into %s: %w", pod.Node.Name, err)
	}
	if err := writeSysctls(pod.Node.Netns, [][2]string{
		{"net.ipv4.conf." + pod.HostVeth + ".rp_filter", "0"},
		{"net.ipv4.conf." + pod.HostVeth + ".proxy_arp", "1"},
		{"net.ipv4.neigh." + pod.HostVeth + ".proxy_delay", "0"},
	}); err != nil {
		return nil, err
	}
	if err := ipBatch(ctx, nsName, podCmds(pod)); err != nil {
		return nil, fmt.Errorf("configure: %w", err)
	}
	if len(spec.Command) > 0 {
		return startPodProcess(ctx, pod, spec.Command)
	}
	ps, err := startPodServer(pod, spec.Delay, spec.UDP)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return ps, nil
}

// RemovePod stops a pod added with AddPod and deletes its namespace, which
// also removes its veth pair and its route on the node. Connections to it die
// with the namespace, as they do when a real pod's sandbox goes away.
func (c *Cluster) RemovePod(name string) error {
	c.mu.Lock()
	a, ok := c.added[name]
	if !ok || a.server == nil {
		c.mu.Unlock()
		return fmt.Errorf("remove pod %s: no pod added at run time with that name", name)
	}
	delete(c.added, name)
	nsName := filepath.Base(a.pod.Netns)
	ino, haveIno := c.inodes[nsName]
	delete(c.inodes, nsName)
	c.mu.Unlock()

	var errs []error
	if err := a.server.stop(); err != nil {
		errs = append(errs, fmt.Errorf("stop server of pod %s: %w", name, err))
	}
	// The veth pair and the pod's route on the node are removed here, at
	// once: the namespace deletion below would remove them only when the
	// kernel dismantles the namespace, asynchronously, and the kubelet
	// may hand the IP to the next pod within milliseconds.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ipBatch(ctx, filepath.Base(a.pod.Node.Netns), []string{"link del " + a.pod.HostVeth}); err != nil {
		errs = append(errs, fmt.Errorf("remove pod %s: %w", name, err))
	}
	if haveIno {
		if err := deleteNetns(nsName, ino); err != nil {
			errs = append(errs, fmt.Errorf("remove pod %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// AddedPods are the pods currently added with AddPod, sorted by name.
func (c *Cluster) AddedPods() []*Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Pod
	for _, a := range c.added {
		if a.server != nil {
			out = append(out, a.pod)
		}
	}
	slices.SortFunc(out, func(a, b *Pod) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// deleteNetns deletes a namespace unless it is gone or no longer the one we
// created (inode ino).
func deleteNetns(name string, ino uint32) error {
	if got, err := netns.Inode(netnsPath(name)); err != nil || got != ino {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return ipBatch(ctx, "", []string{"netns del " + name})
}
