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

// WriteUDPService programs the UDP Service in every node's nat table with
// iptables, in kube-proxy's shape: ClusterIP and NodePort jump to a
// Service chain that picks an endpoint with the statistic match and DNATs
// to it; traffic from outside the cluster CIDR to the ClusterIP, and
// NodePort traffic under policy Cluster, is marked and MASQUERADEd after
// routing. Under policy Local a node's NodePort goes only to its own pods
// (no SNAT) and nodes without one drop it. pods are the endpoints.
// The chains are the testbed's own (LBP-UDP-*), so they stand beside the
// built-in writer's or kube-proxy's rules and are replaced whole on each
// call; the nodes' namespaces take them with them when the cluster goes
// down.
func (c *Cluster) WriteUDPService(ctx context.Context, svc UDPService, policy Policy, pods []*Pod) error {
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
		// Hook the chains once; later calls only rewrite them.
		hooked := run(ctx, n.Netns, "", "iptables", "-w", "-t", "nat", "-C", "PREROUTING", "-j", udpChainPrefix+"SVC") == nil
		rules := udpRules(svc, pods, ext, policy == PolicyCluster, !hooked)
		if err := run(ctx, n.Netns, rules, "iptables-restore", "--noflush", "-w"); err != nil {
			return fmt.Errorf("UDP Service rules on %s: %w", n.Name, err)
		}
	}
	return nil
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
