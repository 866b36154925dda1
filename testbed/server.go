package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
)

// Response headers set by every pod server.
const (
	// HeaderPod names the pod that answered.
	HeaderPod = "X-Pod"
	// HeaderRemoteAddr is r.RemoteAddr as the pod saw it: the ground truth
	// for whether and how the connection was SNATed.
	HeaderRemoteAddr = "X-Remote-Addr"
)

// maxPad bounds ?pad= so a typo cannot make a pod stream gigabytes.
const maxPad = 256 << 20

// podServer is the HTTP server of one pod. Its listening socket was created
// inside the pod's namespace; serving happens on ordinary goroutines because a
// socket stays in the namespace it was created in.
type podServer struct {
	srv  *http.Server
	done chan struct{}
}

func startPodServer(pod *Pod, delay time.Duration) (*podServer, error) {
	var ln net.Listener
	err := netns.Do(pod.Netns, func() error {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", pod.Port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen in pod %s: %w", pod.Name, err)
	}
	ps := &podServer{
		srv: &http.Server{
			Handler:           podHandler(pod.Name, delay),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(ps.done)
		_ = ps.srv.Serve(ln) // always returns ErrServerClosed after stop
	}()
	return ps, nil
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
	return err
}

func podHandler(name string, delay time.Duration) http.Handler {
	body := []byte(name + "\n")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Drain the body so request bytes are fully received and the
		// connection can be reused.
		_, _ = io.Copy(io.Discard, r.Body)
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		pad := 0
		if v := r.URL.Query().Get("pad"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > maxPad {
				http.Error(w, "bad pad", http.StatusBadRequest)
				return
			}
			pad = n
		}
		h := w.Header()
		h.Set(HeaderPod, name)
		h.Set(HeaderRemoteAddr, r.RemoteAddr)
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(len(body)+pad))
		if _, err := w.Write(body); err != nil {
			return
		}
		writePad(w, pad)
	})
}

var padChunk = func() []byte {
	b := make([]byte, 32<<10)
	for i := range b {
		b[i] = '.'
	}
	return b
}()

func writePad(w io.Writer, n int) {
	for n > 0 {
		c := min(n, len(padChunk))
		if _, err := w.Write(padChunk[:c]); err != nil {
			return
		}
		n -= c
	}
}
