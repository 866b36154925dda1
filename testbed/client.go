package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
)

// Client timeouts are short so that a broken path fails a test quickly
// instead of hanging it.
const (
	dialTimeout    = 2 * time.Second
	requestTimeout = 10 * time.Second
)

// Result is the ground truth of one request made with Cluster.Request.
type Result struct {
	// Pod is the pod that answered (X-Pod).
	Pod string
	// SeenRemote is the client address as the pod saw it (X-Remote-Addr):
	// a node IP means the connection was SNATed.
	SeenRemote netip.AddrPort
	// Local and Remote are the client socket's own tuple, i.e. before any
	// NAT: Remote is the service address that was dialed.
	Local, Remote netip.AddrPort
	// Sent and Received count bytes written to and read from the TCP
	// connection, HTTP headers included (UDPExchange: the payload of the
	// request and of the response datagram).
	Sent, Received int64
	// Status is the HTTP status code, 0 if no response arrived.
	Status     int
	Start, End time.Time
	Err        error
}

// CountingConn wraps a net.Conn and counts the payload bytes that cross it.
type CountingConn struct {
	net.Conn
	sent, received atomic.Int64
}

// Read counts bytes read.
func (c *CountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.received.Add(int64(n))
	return n, err
}

// Write counts bytes written.
func (c *CountingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent.Add(int64(n))
	return n, err
}

// Sent is the number of bytes written so far.
func (c *CountingConn) Sent() int64 { return c.sent.Load() }

// Received is the number of bytes read so far.
func (c *CountingConn) Received() int64 { return c.received.Load() }

// DialFrom opens a TCP connection from inside the network namespace at
// nsPath. Only the socket creation and connect run on the namespace's thread;
// the returned connection can be used from any goroutine.
func DialFrom(ctx context.Context, nsPath string, target netip.AddrPort) (*CountingConn, error) {
	var conn net.Conn
	err := netns.Do(nsPath, func() error {
		// "tcp4"/"tcp6" with a literal address makes the dialer connect
		// on this goroutine; a parallel (happy-eyeballs) dial would
		// create the socket on another thread, in the wrong netns.
		d := net.Dialer{Timeout: dialTimeout}
		network := "tcp4"
		if target.Addr().Is6() {
			network = "tcp6"
		}
		var err error
		conn, err = d.DialContext(ctx, network, target.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", target, nsLabel(nsPath), err)
	}
	return &CountingConn{Conn: conn}, nil
}

// Request makes one HTTP/1.1 request on a fresh TCP connection from inside
// the namespace at from and reports what both ends saw. reqBody bytes are
// POSTed (GET if 0); pad asks the pod for that many extra response bytes.
// The client closes the connection after reading the response.
func (c *Cluster) Request(ctx context.Context, from string, target netip.AddrPort, reqBody, pad int) Result {
	res := Result{Start: time.Now()}
	res.Err = doRequest(ctx, from, target, reqBody, pad, &res)
	res.End = time.Now()
	return res
}

func doRequest(ctx context.Context, from string, target netip.AddrPort, reqBody, pad int, res *Result) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	conn, err := DialFrom(ctx, from, target)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer func() {
		res.Sent, res.Received = conn.Sent(), conn.Received()
	}()
	res.Local = conn.LocalAddr().(*net.TCPAddr).AddrPort()
	res.Remote = conn.RemoteAddr().(*net.TCPAddr).AddrPort()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}

	method, body := http.MethodGet, io.Reader(nil)
	if reqBody > 0 {
		method, body = http.MethodPost, strings.NewReader(strings.Repeat("x", reqBody))
	}
	url := fmt.Sprintf("http://%s/", target)
	if pad > 0 {
		url += fmt.Sprintf("?pad=%d", pad)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return fmt.Errorf("build request to %s: %w", target, err)
	}
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("write request to %s: %w", target, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fmt.Errorf("read response from %s: %w", target, err)
	}
	defer resp.Body.Close()
	res.Status = resp.StatusCode
	res.Pod = resp.Header.Get(HeaderPod)
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("read body from %s: %w", target, err)
	}
	if s := resp.Header.Get(HeaderRemoteAddr); s != "" {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return fmt.Errorf("parse %s %q from %s: %w", HeaderRemoteAddr, s, target, err)
		}
		res.SeenRemote = ap
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("request to %s: status %s", target, resp.Status)
	}
	return nil
}

// HTTPClient returns a client whose connections are dialed from inside the
// namespace at from. With keepAlive it reuses one connection per target, for
// skewed long-lived traffic; without, every request opens a new connection.
// The cluster closes the client's idle connections on Down.
func (c *Cluster) HTTPClient(from string, keepAlive bool) *http.Client {
	maxConns := 0
	if keepAlive {
		// One connection per target, so all requests share it.
		maxConns = 1
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, fmt.Errorf("testbed dials IP:port only, got %q: %w", addr, err)
			}
			return DialFrom(ctx, from, ap)
		},
		DisableKeepAlives:     !keepAlive,
		MaxIdleConnsPerHost:   1,
		MaxConnsPerHost:       maxConns,
		ResponseHeaderTimeout: requestTimeout,
		IdleConnTimeout:       time.Minute,
	}
	c.mu.Lock()
	c.transports = append(c.transports, tr)
	c.mu.Unlock()
	return &http.Client{Transport: tr, Timeout: requestTimeout}
}

// IsRefused reports whether err is a connection refused (RST or ICMP port
// unreachable, which is how kube-proxy rejects services without endpoints).
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
