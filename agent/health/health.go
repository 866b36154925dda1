// Package health serves the node agent's liveness, readiness and
// self-metrics over HTTP: /healthz, /readyz and /metrics in the Prometheus
// text format. It knows nothing of the agent's stages — the caller passes
// probes and a metrics snapshot — so it depends on none of them and the
// data flow stays one-way (capture → flow → path → exporter → health).
//
// The format is written by hand: the agent needs a few counters, not a
// Prometheus client library and its registry.
package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Probe reports nil when the condition holds, otherwise the reason it does
// not; the reason is the probe's plain-text answer.
type Probe func() error

// Label is one name="value" pair of a sample.
type Label struct {
	Name, Value string
}

// Sample is one value of a metric family with its labels, in order.
type Sample struct {
	Labels []Label
	Value  float64
}

// Family is one metric family: its samples share name, help and type.
type Family struct {
	// Name is the full Prometheus name (counters end in _total).
	Name string
	// Help is the one-line description.
	Help string
	// Type is "counter" or "gauge".
	Type string
	// Samples are written in order; a family without samples writes only
	// its HELP and TYPE lines.
	Samples []Sample
}

// Handler serves /healthz (live), /readyz (ready) and /metrics (metrics,
// called at every scrape). Probes answer 200 "ok" or 503 with the reason.
func Handler(live, ready Probe, metrics func() []Family) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", probeHandler(live))
	mux.HandleFunc("GET /readyz", probeHandler(ready))
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		// Rendered into a buffer first so a bad family is a 500, not a
		// half-written 200 that a scraper would half-ingest.
		var b bytes.Buffer
		if err := WriteText(&b, metrics()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Write(b.Bytes())
	})
	return mux
}

func probeHandler(p Probe) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := p(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, err.Error())
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// WriteText writes fams in the Prometheus text exposition format 0.0.4. It
// refuses invalid metric or label names, a type other than counter or
// gauge, and a name used twice, rather than emit text a scraper rejects.
func WriteText(w io.Writer, fams []Family) error {
	seen := map[string]bool{}
	var b strings.Builder
	for _, f := range fams {
		if !validName(f.Name, true) {
			return fmt.Errorf("metric %q: invalid name", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("metric %q: family written twice", f.Name)
		}
		seen[f.Name] = true
		if f.Type != "counter" && f.Type != "gauge" {
			return fmt.Errorf("metric %q: type %q is not counter or gauge", f.Name, f.Type)
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.Name, escape(f.Help, false), f.Name, f.Type)
		for _, s := range f.Samples {
			b.WriteString(f.Name)
			if len(s.Labels) > 0 {
				b.WriteByte('{')
				for i, l := range s.Labels {
					if !validName(l.Name, false) || strings.HasPrefix(l.Name, "__") {
						return fmt.Errorf("metric %q: invalid label name %q", f.Name, l.Name)
					}
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", l.Name, escape(l.Value, true))
				}
				b.WriteByte('}')
			}
			b.WriteByte(' ')
			b.WriteString(formatValue(s.Value))
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// validName checks a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) or a label
// name (the same without colons).
func validName(s string, metric bool) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		ok := r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (metric && r == ':') || (i > 0 && r >= '0' && r <= '9')
		if !ok {
			return false
		}
	}
	return true
}

// escape applies the format's escapes: backslash and newline everywhere,
// double quotes inside label values.
func escape(s string, quote bool) string {
	r := strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	if quote {
		r = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
	}
	return r.Replace(s)
}

// formatValue writes integers exactly (counters are integers, and
// FormatFloat's 'g' would turn 1000000 into 1e+06).
func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case v == math.Trunc(v) && math.Abs(v) < 1<<53:
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// CheckAddr validates a listen address: host:port with an IP literal or
// "localhost" (a name needing DNS would make the bound interface depend on
// the resolver) or an empty host (all interfaces), and a port from 1 to
// 65535 (probes need a fixed port). It reports whether only loopback will
// be reachable.
func CheckAddr(addr string) (loopback bool, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return false, fmt.Errorf("%q: port %q is not a number from 1 to 65535", addr, port)
	}
	switch host {
	case "":
		return false, nil
	case "localhost":
		return true, nil
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false, fmt.Errorf("%q: host %q is not an IP address or localhost", addr, host)
	}
	return ip.IsLoopback(), nil
}

// Server is a running health endpoint.
type Server struct {
	ln  net.Listener
	srv *http.Server
	log *slog.Logger
}

// Listen binds addr and serves h on it. Callers check addr with CheckAddr
// at startup, where a bad value is a configuration error.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	s := &Server{ln: ln, log: log, srv: &http.Server{
		Handler: h,
		// Probes and scrapes are tiny: short limits keep a slow or
		// hostile client from holding connections open.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("health endpoint stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return s, nil
}

// Addr is the bound address (with the real port when addr had port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Shutdown stops accepting and waits for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("health endpoint shutdown: %w", err)
	}
	return nil
}
