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

// The UDP side of a pod for the UDP e2e tests: a pod server that answers
// every datagram with its pod name and the peer it saw (ground truth, as
// the HTTP pods' headers are), and a client that makes one exchange per
// fresh socket (a new source port each, as a stub resolver does). The
// Service in front of the servers is the real kube-proxy's (testbed/k8s,
// Service dns).

// UDPPort is the port a pod's UDP server listens on (PodSpec.UDP; the
// targetPort of testbed/k8s's Service dns).
const UDPPort = 8053

// UDPServer is one pod's UDP server. It binds the wildcard address, as
// CoreDNS does, so the pod IP of each datagram is known only from the
// datagram itself.
type UDPServer struct {
	conn *net.UDPConn
	done chan struct{}
}

// StartUDPServer serves on UDPPort in the namespace at nsPath until
// Close, on network "udp4" (an IPv4-only pod) or "udp" (one socket for
// both families, as CoreDNS listens). Each request's first two bytes ask
// for the response's length; the response starts with "pod|peer|".
func StartUDPServer(nsPath, network, pod string) (*UDPServer, error) {
	var conn *net.UDPConn
	err := netns.Do(nsPath, func() error {
		var err error
		conn, err = net.ListenUDP(network, &net.UDPAddr{Port: UDPPort})
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
		// A dual-stack socket sees an IPv4 peer as ::ffff:a.b.c.d; the
		// client compares with its own IPv4 address.
		seen := netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		resp := []byte(pod + "|" + seen.String() + "|")
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

// UDPExchange sends one request of reqBytes (≥ 2) asking for respBytes
// from a fresh socket in the namespace at from, and reads the answer. The
// Result is as a Request's, with Sent and Received the payload bytes of
// the request and of the response datagram, and no Status.
func UDPExchange(ctx context.Context, from string, target netip.AddrPort, reqBytes, respBytes int) Result {
	res := Result{Start: time.Now(), Remote: target}
	res.Err = udpExchange(ctx, from, target, reqBytes, respBytes, &res)
	res.End = time.Now()
	return res
}

func udpExchange(ctx context.Context, from string, target netip.AddrPort, reqBytes, respBytes int, res *Result) error {
	network := "udp4"
	if target.Addr().Is6() {
		network = "udp6"
	}
	var conn *net.UDPConn
	err := netns.Do(from, func() error {
		var err error
		conn, err = net.DialUDP(network, nil, net.UDPAddrFromAddrPort(target))
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
