package testbed

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
)

// A DNS-like UDP Service for the UDP e2e tests: pod servers that answer
// every datagram with their pod name and the peer they saw (ground truth,
// as the HTTP pods' headers are), a client that makes one exchange per
// fresh socket (a new source port each, as a stub resolver does), and
// kube-proxy-shaped UDP NAT rules.

// UDPPort is the port every UDP pod server listens on (the targetPort).
const UDPPort = 8053

// UDPServer is one pod's UDP server. It binds the wildcard address, as
// CoreDNS does, so the pod IP of each datagram is known only from the
// datagram itself.
type UDPServer struct {
	conn *net.UDPConn
	done chan struct{}
}

// StartUDPServer serves in the namespace at nsPath until Close. Each
// request's first two bytes ask for the response's length; the response
// starts with "pod|peer|".
func StartUDPServer(nsPath, pod string) (*UDPServer, error) {
	var conn *net.UDPConn
	err := netns.Do(nsPath, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: UDPPort})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("UDP server of pod %s: %w", pod, err)
	}
	s := &UDPServer{conn: conn, done: make(chan struct{})}
	go s.serve(pod)
	return s, nil
}

func (s *UDPServer) serve(pod string) {
	defer close(s.done)
	buf := make([]byte, 64<<10)
	for {
		n, peer, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed
		}
		want := 0
		if n >= 2 {
			want = int(binary.BigEndian.Uint16(buf))
		}
		resp := []byte(pod + "|" + peer.String() + "|")
		for len(resp) < want {
			resp = append(resp, '.')
		}
		_, _ = s.conn.WriteToUDPAddrPort(resp, peer)
	}
}

// Close stops the server.
func (s *UDPServer) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

// UDPResult is the ground truth of one exchange.
type UDPResult struct {
	Pod            string         // the pod that answered
	SeenRemote     netip.AddrPort // the client as the pod saw it
	Local, Remote  netip.AddrPort // the client socket's own tuple (Remote: the Service address)
	Sent, Received int64          // payload bytes of the request and of the response
	Start, End     time.Time
	Err            error
}

// UDPExchange sends one request of reqBytes (≥ 2) asking for respBytes
// from a fresh socket in the namespace at from, and reads the answer.
func UDPExchange(ctx context.Context, from string, target netip.AddrPort, reqBytes, respBytes int) UDPResult {
	res := UDPResult{Start: time.Now(), Remote: target}
	res.Err = udpExchange(ctx, from, target, reqBytes, respBytes, &res)
	res.End = time.Now()
	return res
}

func udpExchange(ctx context.Context, from string, target netip.AddrPort, reqBytes, respBytes int, res *UDPResult) error {
	var conn *net.UDPConn
	err := netns.Do(from, func() error {
		var err error
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(target))
		return err
	})
	if err != nil {
		return fmt.Errorf("UDP socket in %s: %w", nsLabel(from), err)
	}
	defer conn.Close()
	res.Local = conn.LocalAddr().(*net.UDPAddr).AddrPort()
	res.Local = netip.AddrPortFrom(res.Local.Addr().Unmap(), res.Local.Port())
	req := make([]byte, max(reqBytes, 2))
	binary.BigEndian.PutUint16(req, uint16(respBytes))
	deadline := time.Now().Add(2 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	n, err := conn.Write(req)
	if err != nil {
		return fmt.Errorf("send to %v: %w", target, err)
	}
	res.Sent = int64(n)
	buf := make([]byte, 64<<10)
	n, err = conn.Read(buf)
	if err != nil {
		return fmt.Errorf("answer from %v: %w", target, err)
	}
	res.Received = int64(n)
	parts := strings.SplitN(string(buf[:n]), "|", 3)
	if len(parts) < 3 {
		return errors.New("malformed answer " + string(buf[:min(n, 64)]))
	}
	res.Pod = parts[0]
	if res.SeenRemote, err = netip.ParseAddrPort(parts[1]); err != nil {
		return fmt.Errorf("answer's peer: %w", err)
	}
	return nil
}

// UDPService is the DNS-like Service's addresses.
type UDPService struct {
	ClusterIP netip.Addr
	Port      uint16
	NodePort  uint16
}

// DNSLike is the UDP Service the UDP tests use.
var DNSLike = UDPService{ClusterIP: netip.MustParseAddr("10.96.0.53"), Port: 53, NodePort: 30053}

// ClusterAddr is ClusterIP:Port.
func (s UDPService) ClusterAddr() netip.AddrPort { return netip.AddrPortFrom(s.ClusterIP, s.Port) }

// udpChainPrefix names the testbed's UDP chains, apart from kube-proxy's.
const udpChainPrefix = "LBP-UDP-"

// WriteUDPService programs the UDP Service in every node in kube-proxy's
// shape, with iptables (mode iptables) or nftables (mode nftables):
// ClusterIP and NodePort go to a Service chain that picks an endpoint at
// random (iptables: the statistic match with probabilities 1/n, 1/(n-1),
// …; nftables: numgen random into a verdict map) and DNATs to it; traffic
// from outside the cluster CIDR to the ClusterIP, and NodePort traffic
// under policy Cluster, is marked and MASQUERADEd after routing. Under
// policy Local a node's NodePort goes only to its own pods (no SNAT) and
// nodes without one drop it. The rules are the testbed's own (iptables
// chains LBP-UDP-*, nft table ip lbp-udp), beside the TCP writer's or
// kube-proxy's, and each call first removes what an earlier call of
// either dialect wrote; the nodes' namespaces take them along at Down.
func (c *Cluster) WriteUDPService(ctx context.Context, svc UDPService, mode ProxyMode, policy Policy, pods []*Pod) error {
	for _, n := range c.Nodes {
		var local []*Pod
		for _, p := range pods {
			if p.Node == n {
				local = append(local, p)
			}
		}
		ext := pods
		if policy == PolicyLocal {
			ext = local
		}
		snat := policy == PolicyCluster
		clearUDPRules(ctx, n.Netns)
		var err error
		switch mode {
		case ModeIPTables:
			err = run(ctx, n.Netns, udpRules(svc, pods, ext, snat, true), "iptables-restore", "--noflush", "-w")
		case ModeNFTables:
			err = run(ctx, n.Netns, udpNFT(svc, pods, ext, snat), "nft", "-f", "-")
		default:
			err = fmt.Errorf("unknown mode %q", mode)
		}
		if err != nil {
			return fmt.Errorf("UDP Service rules on %s: %w", n.Name, err)
		}
	}
	return nil
}

// clearUDPRules removes both dialects' UDP Service rules; what is not
// there fails quietly.
func clearUDPRules(ctx context.Context, nsPath string) {
	p := udpChainPrefix
	for _, hook := range [][2]string{{"PREROUTING", p + "SVC"}, {"OUTPUT", p + "SVC"}, {"POSTROUTING", p + "POST"}} {
		_ = run(ctx, nsPath, "", "iptables", "-w", "-t", "nat", "-D", hook[0], "-j", hook[1])
	}
	for _, ch := range []string{"SVC", "CLUSTER", "EXT", "POST"} {
		_ = run(ctx, nsPath, "", "iptables", "-w", "-t", "nat", "-F", p+ch)
		_ = run(ctx, nsPath, "", "iptables", "-w", "-t", "nat", "-X", p+ch)
	}
	_ = run(ctx, nsPath, "", "nft", "delete", "table", "ip", "lbp-udp")
}

// udpNFT is the nftables form, shaped like kube-proxy's nftables mode.
func udpNFT(svc UDPService, all, ext []*Pod, extSNAT bool) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("table ip lbp-udp {")
	w("  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }")
	w("  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }")
	w("  chain nat-postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & 0x8000 == 0x8000 masquerade\n  }")
	w("  chain services {")
	w("    ip daddr %s udp dport %d goto svc-cluster", svc.ClusterIP, svc.Port)
	w("    fib daddr type local udp dport %d goto svc-ext", svc.NodePort)
	w("  }")
	w("  chain svc-cluster {")
	w("    ip saddr != %s meta mark set meta mark | 0x8000", ClusterCIDR)
	w("    %s", udpPick(all))
	w("  }")
	w("  chain svc-ext {")
	if len(ext) == 0 {
		w("    drop")
	} else {
		if extSNAT {
			w("    meta mark set meta mark | 0x8000")
		}
		w("    %s", udpPick(ext))
	}
	w("  }")
	for _, p := range all {
		w("  chain ep-%s {\n    meta l4proto udp dnat to %s:%d\n  }", p.Name, p.IP, UDPPort)
	}
	w("}")
	return b.String()
}

func udpPick(pods []*Pod) string {
	parts := make([]string, len(pods))
	for i, p := range pods {
		parts[i] = fmt.Sprintf("%d : goto ep-%s", i, p.Name)
	}
	return fmt.Sprintf("numgen random mod %d vmap { %s }", len(pods), strings.Join(parts, ", "))
}

func udpRules(svc UDPService, all, ext []*Pod, extSNAT, hook bool) string {
	p := udpChainPrefix
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("*nat")
	for _, ch := range []string{"SVC", "CLUSTER", "EXT", "POST"} {
		w(":%s%s - [0:0]", p, ch)
	}
	if hook {
		w("-I PREROUTING 1 -j %sSVC", p)
		w("-I OUTPUT 1 -j %sSVC", p)
		w("-I POSTROUTING 1 -j %sPOST", p)
	}
	w("-A %sSVC -d %s/32 -p udp --dport %d -j %sCLUSTER", p, svc.ClusterIP, svc.Port, p)
	w("-A %sSVC -p udp --dport %d -m addrtype --dst-type LOCAL -j %sEXT", p, svc.NodePort, p)
	w("-A %sPOST -m mark --mark 0x8000/0x8000 -j MASQUERADE", p)
	endpoints(&b, p+"CLUSTER", all, fmt.Sprintf("! -s %s", ClusterCIDR), true)
	if len(ext) == 0 {
		w("-A %sEXT -j DROP", p)
	} else {
		endpoints(&b, p+"EXT", ext, "", extSNAT)
	}
	w("COMMIT")
	return b.String()
}

// endpoints writes a chain's rules: the masquerade mark (for match, or
// for all when match is empty and snat), then one DNAT per pod with
// kube-proxy's statistic probabilities 1/n, 1/(n-1), …, 1.
func endpoints(b *strings.Builder, chain string, pods []*Pod, match string, snat bool) {
	if snat {
		fmt.Fprintf(b, "-A %s %s -j MARK --set-xmark 0x8000/0x8000\n", chain, match)
	}
	for i, pod := range pods {
		left := len(pods) - i
		stat := ""
		if left > 1 {
			stat = fmt.Sprintf("-m statistic --mode random --probability %.10f ", 1/float64(left))
		}
		fmt.Fprintf(b, "-A %s -p udp %s-j DNAT --to-destination %s:%d\n", chain, stat, pod.IP, UDPPort)
	}
}
