package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/testbed/podhttp"
)

// Response headers set by every pod server (see podhttp).
const (
	HeaderPod        = podhttp.HeaderPod
	HeaderRemoteAddr = podhttp.HeaderRemoteAddr
)

// podServer is the HTTP server of one pod. Its listening socket was created
// inside the pod's namespace; serving happens on ordinary goroutines because a
// socket stays in the namespace it was created in.
type podServer struct {
	srv  *http.Server
	done chan struct{}
	udp  *UDPServer // nil unless the pod serves UDP (PodSpec.UDP)
}

func startPodServer(pod *Pod, delay time.Duration, udp bool) (*podServer, error) {
	ps, err := startHTTPServer(pod, delay)
	if err != nil || !udp {
		return ps, err
	}
	network := "udp4"
	if pod.listenNetwork() == "tcp" {
		network = "udp"
	}
	if ps.udp, err = StartUDPServer(pod.Netns, network, pod.Name); err != nil {
		return nil, errors.Join(err, ps.stop())
	}
	return ps, nil
}

func startHTTPServer(pod *Pod, delay time.Duration) (*podServer, error) {
	var ln net.Listener
	err := netns.Do(pod.Netns, func() error {
		var err error
		ln, err = net.Listen(pod.listenNetwork(), fmt.Sprintf(":%d", pod.Port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen in pod %s: %w", pod.Name, err)
	}
	return serveHTTP(ln, pod.Name, delay), nil
}

// serveHTTP serves the pods' handler, answering as name, on ln.
func serveHTTP(ln net.Listener, name string, delay time.Duration) *podServer {
	ps := &podServer{
		srv: &http.Server{
			Handler:           podhttp.Handler(name, delay),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(ps.done)
		_ = ps.srv.Serve(ln) // always returns ErrServerClosed after stop
	}()
	return ps
}

// stop closes the listener and all connections and waits until the serving
// goroutine has returned.
func (ps *podServer) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := ps.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		// Active requests (e.g. a stalled keep-alive client) must not
		// keep the testbed alive.
		err = ps.srv.Close()
	}
	<-ps.done
	if ps.udp != nil {
		err = errors.Join(err, ps.udp.Close())
	}
	return err
}
