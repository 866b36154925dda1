// Command podserver is the workload of the real-node testbed: an HTTP server
// that answers every request with its pod name and the peer address it saw
// (podhttp.Handler, the same answer as the testbed's in-process pods), and
// podhttp.ReadyPath for a kubelet readiness probe.
//
// The pod name comes from $POD_NAME (downward API), an optional answer delay
// from $LBPATH_DELAY, the listen address from -listen or $LBPATH_LISTEN.
// SIGTERM drains open requests, then exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/testbed/podhttp"
)

// Environment variables read at start.
const (
	PodNameEnv = "POD_NAME"
	ListenEnv  = "LBPATH_LISTEN"
)

// drainTimeout bounds the drain after SIGTERM; below the default grace
// period of 30 s.
const drainTimeout = 10 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

type config struct {
	listen string
	pod    string
	delay  time.Duration
}

func parse(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("podserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := os.Getenv(ListenEnv)
	if listen == "" {
		listen = ":8080"
	}
	var c config
	fs.StringVar(&c.listen, "listen", listen, "listen address (default $"+ListenEnv+", else :8080)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if _, _, err := net.SplitHostPort(c.listen); err != nil {
		return c, fmt.Errorf("-listen %q: %w", c.listen, err)
	}
	if c.pod = os.Getenv(PodNameEnv); c.pod == "" {
		return c, fmt.Errorf("$%s is empty: set it from the downward API (fieldRef metadata.name)", PodNameEnv)
	}
	if v := os.Getenv(podhttp.DelayEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return c, fmt.Errorf("$%s=%q: want a duration like 50ms", podhttp.DelayEnv, v)
		}
		c.delay = d
	}
	return c, nil
}

func run(args []string, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	c, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "podserver: %v\n", err)
		return 2
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		log.Error("listen", "addr", c.listen, "err", err)
		return 1
	}
	srv := &http.Server{
		Handler:           podhttp.WithReady(podhttp.Handler(c.pod, c.delay)),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving", "pod", c.pod, "addr", ln.Addr().String(), "delay", c.delay)
	select {
	case err := <-served:
		log.Error("serve", "err", err)
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("drain cut short", "err", err)
		_ = srv.Close()
	}
	log.Info("stopped")
	return 0
}
