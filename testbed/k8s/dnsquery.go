package k8s

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/testbed"
)

// chaosHostname is the CHAOS-class name CoreDNS's chaos plugin answers with
// the server's hostname (BIND's convention; "id.server." is the same).
var chaosHostname = dnsmessage.MustNewName("hostname.bind.")

// ChaosHostname asks the cluster DNS Service (DNSServiceIP:53) for
// `CH TXT hostname.bind` over UDP from a fresh socket in the network
// namespace at from — one query per socket, a new source port each, as a
// stub resolver does — and returns the exchange. Pod is the TXT answer:
// the answering CoreDNS pod's hostname, which the kubelet sets to the pod's
// name. Sent and Received are the query's and the response's DNS payload
// bytes; Start and End enclose the send and the receive. SeenRemote is not
// known (CoreDNS does not say what it saw).
func ChaosHostname(ctx context.Context, from string) testbed.Result {
	res := testbed.Result{Remote: netip.AddrPortFrom(DNSServiceIP, 53)}
	res.Err = chaosExchange(ctx, from, &res)
	return res
}

func chaosExchange(ctx context.Context, from string, res *testbed.Result) error {
	var conn *net.UDPConn
	err := netns.Do(from, func() error {
		var err error
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(res.Remote))
		return err
	})
	if err != nil {
		return fmt.Errorf("UDP socket in %s: %w", from, err)
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	res.Local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	id := uint16(rand.Uint32())
	query, err := chaosQuery(id)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	res.Start = time.Now()
	n, err := conn.Write(query)
	if err != nil {
		return fmt.Errorf("send to %v: %w", res.Remote, err)
	}
	res.Sent = int64(n)
	buf := make([]byte, 64<<10)
	n, err = conn.Read(buf)
	res.End = time.Now()
	if err != nil {
		return fmt.Errorf("answer from %v: %w", res.Remote, err)
	}
	res.Received = int64(n)
	res.Pod, err = chaosAnswer(buf[:n], id)
	return err
}

// chaosQuery is a `CH TXT hostname.bind` query with id.
func chaosQuery(id uint16) ([]byte, error) {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: chaosHostname, Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassCHAOS}); err != nil {
		return nil, err
	}
	return b.Finish()
}

// chaosAnswer returns the TXT of a response to query id, or why it is not
// one.
func chaosAnswer(msg []byte, id uint16) (string, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return "", fmt.Errorf("parse answer: %w", err)
	}
	if !h.Response || h.ID != id || h.RCode != dnsmessage.RCodeSuccess {
		return "", fmt.Errorf("answer header %+v to query %d", h, id)
	}
	if err := p.SkipAllQuestions(); err != nil {
		return "", fmt.Errorf("parse answer: %w", err)
	}
	ah, err := p.AnswerHeader()
	if err != nil {
		return "", fmt.Errorf("answer to hostname.bind: %w", err)
	}
	if ah.Type != dnsmessage.TypeTXT || ah.Class != dnsmessage.ClassCHAOS || ah.Name != chaosHostname {
		return "", fmt.Errorf("answer %v, want CH TXT %v", ah, chaosHostname)
	}
	txt, err := p.TXTResource()
	if err != nil {
		return "", fmt.Errorf("answer's TXT: %w", err)
	}
	host := strings.Join(txt.TXT, "")
	if host == "" {
		return "", errors.New("empty hostname.bind answer")
	}
	return host, nil
}
