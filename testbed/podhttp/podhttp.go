// Package podhttp is the HTTP answer of every test pod: the testbed's
// in-process pod servers and the podserver image serve the same handler, so
// a test reads the same ground truth from either. It imports only the
// standard library, to keep the podserver binary tiny.
package podhttp

import (
	"io"
	"net/http"
	"strconv"
	"time"
)

// Response headers set by every pod server.
const (
	// HeaderPod names the pod that answered.
	HeaderPod = "X-Pod"
	// HeaderRemoteAddr is r.RemoteAddr as the pod saw it: the ground truth
	// for whether and how the connection was SNATed.
	HeaderRemoteAddr = "X-Remote-Addr"
)

// DelayEnv is the container environment variable whose duration (e.g.
// "50ms") the pod's server waits before answering, so that a Deployment can
// roll out a deliberately slower version. testbed/k8s.DelayEnv names the
// same variable.
const DelayEnv = "LBPATH_DELAY"

// ReadyPath answers 200 at once, without the delay: the path of a kubelet
// readiness probe, which must not time out because of a slow version.
const ReadyPath = "/readyz"

// maxPad bounds ?pad= so a typo cannot make a pod stream gigabytes.
const maxPad = 256 << 20

// Handler answers every request with the pod's name (body and HeaderPod)
// and the peer address it saw (HeaderRemoteAddr), after delay; ?pad=N adds
// N bytes to the body.
func Handler(pod string, delay time.Duration) http.Handler {
	body := []byte(pod + "\n")
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
		h.Set(HeaderPod, pod)
		h.Set(HeaderRemoteAddr, r.RemoteAddr)
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(len(body)+pad))
		if _, err := w.Write(body); err != nil {
			return
		}
		writePad(w, pad)
	})
}

// WithReady serves ReadyPath with 200 "ok" and everything else with h.
func WithReady(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(ReadyPath, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("/", h)
	return mux
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
