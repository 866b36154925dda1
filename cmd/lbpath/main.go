// Command lbpath is lbpath's command line: `lbpath demo` brings up a mini
// cluster in network namespaces, runs the node agents against it, drives
// skewed traffic and prints what lbpath saw per pod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/cmd/lbpath/explain"
)

const usage = `usage: lbpath <command> [flags]

commands:
  demo                      bring up a mini cluster (network namespaces, real or imitated
                            kube-proxy), run the agents, drive skewed traffic and print
                            the per-pod table (needs root)
  explain service/NS/NAME   the path, per-pod share, SNAT, skew, last deploy and findings
                            for one Service, from Prometheus (--prometheus URL)
  top                       Services ranked by connection rate (--prometheus URL)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "demo":
		fs := flag.NewFlagSet("lbpath demo", flag.ContinueOnError)
		fs.SetOutput(stderr)
		opt := defaultDemoOptions()
		fs.StringVar((*string)(&opt.Mode), "mode", string(opt.Mode), "kube-proxy mode to imitate: iptables or nftables")
		fs.StringVar((*string)(&opt.Policy), "policy", string(opt.Policy), "externalTrafficPolicy: Cluster or Local")
		fs.IntVar(&opt.Connections, "connections", opt.Connections, "fresh connections to send through the LB IP (spread over the nodes)")
		fs.IntVar(&opt.KeepAliveRequests, "keepalive-requests", opt.KeepAliveRequests, "requests on the one pinned keep-alive connection (the skew)")
		fs.StringVar(&opt.Prefix, "prefix", opt.Prefix, "name prefix of the demo's network namespaces")
		noKube := fs.Bool("no-kube", false, "skip the Kubernetes control plane: NAT written the way kube-proxy writes it, no names (fast)")
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if err := opt.validate(); err != nil {
			fmt.Fprintf(stderr, "lbpath demo: %v\n", err)
			return 2
		}
		if os.Geteuid() != 0 {
			fmt.Fprintln(stderr, "lbpath demo needs root: it creates network namespaces, NAT rules and eBPF programs. Run it as root (e.g. sudo ./scripts/demo.sh).")
			return 1
		}
		if !*noKube {
			if _, err := kubeDemo(ctx, opt, stdout, stderr); err != nil {
				fmt.Fprintf(stderr, "lbpath demo: %v\n", err)
				return 1
			}
			return 0
		}
		if err := runDemo(ctx, opt, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "lbpath demo: %v\n", err)
			return 1
		}
		return 0
	case "explain", "top":
		fs := flag.NewFlagSet("lbpath "+args[0], flag.ContinueOnError)
		fs.SetOutput(stderr)
		prom := fs.String("prometheus", os.Getenv("LBPATH_PROMETHEUS"), "Prometheus base URL (default $LBPATH_PROMETHEUS)")
		rest := args[1:]
		var target string
		if args[0] == "explain" && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
			target, rest = rest[0], rest[1:]
		}
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if *prom == "" {
			fmt.Fprintf(stderr, "lbpath %s: prometheus: a URL is required (--prometheus or LBPATH_PROMETHEUS)\n", args[0])
			return 2
		}
		var err error
		if args[0] == "top" {
			err = explain.Top(ctx, *prom, time.Now(), stdout)
		} else {
			if target == "" && fs.NArg() > 0 {
				target = fs.Arg(0)
			}
			if _, _, perr := explain.ParseService(target); perr != nil {
				fmt.Fprintf(stderr, "lbpath explain: service: %v\n", perr)
				return 2
			}
			err = explain.Explain(ctx, *prom, target, time.Now(), stdout)
		}
		if err != nil {
			fmt.Fprintf(stderr, "lbpath %s: %v\n", args[0], err)
			return 1
		}
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "lbpath: unknown command %q\n%s", args[0], usage)
	return 2
}
