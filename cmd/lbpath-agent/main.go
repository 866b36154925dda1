// Command lbpath-agent is lbpath's node agent: it captures TCP connections
// with eBPF, joins them with the node's NAT translations and writes one
// Connection record per line.
//
// Inside Kubernetes it runs as a hostNetwork DaemonSet; outside, --netns
// points it at a node's network namespace.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/lbpath/lbpath/agent"
	"github.com/lbpath/lbpath/agent/health"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/exporter"
)

func main() {
	// Half the default heap headroom: the agent allocates little per
	// event, so collecting more often costs little CPU, while the default
	// (heap may grow to twice the live data) doubles what the metadata
	// cache and the open-socket table cost in RSS. GOGC still overrides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	os.Exit(profiled(func() int { return run(os.Args[1:], os.Stdout, os.Stderr) }))
}

// profiled runs fn with a CPU profile written to $LBPATH_CPUPROFILE, if
// set: how the agent's own CPU per connection was found and is checked
// (docs/PERFORMANCE.md), without a network listener for pprof.
func profiled(fn func() int) int {
	path := os.Getenv("LBPATH_CPUPROFILE")
	if path == "" {
		return fn()
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lbpath-agent: LBPATH_CPUPROFILE: %v\n", err)
		return 2
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(os.Stderr, "lbpath-agent: LBPATH_CPUPROFILE: %v\n", err)
		return 2
	}
	defer pprof.StopCPUProfile()
	return fn()
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lbpath-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg agent.Config
	var scope podScope
	defNode := os.Getenv("NODE_NAME")
	if defNode == "" {
		defNode, _ = os.Hostname()
	}
	fs.StringVar(&cfg.Node, "node", defNode, "node name in every record (default $NODE_NAME, else the hostname)")
	fs.StringVar(&cfg.Netns, "netns", "", "path of the node's network namespace (default: the agent's own)")
	fs.Var(&scope, "pod-cidr", "limit socket records to pods in this CIDR and the node's own namespace (repeatable; for nodes sharing one kernel); \"node\": this node's spec.podCIDRs from the API server")
	output := fs.String("output", "jsonl", "record output: jsonl (one record per line on stdout) or none")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig path (outside a cluster)")
	extResolver := fs.String("externalname-resolver", "", "DNS server host:port that resolves ExternalName Services' names (default: the system resolver)")
	noKube := fs.Bool("no-kube", false, "do not name connections from the API server")
	inCluster := os.Getenv("KUBERNETES_SERVICE_HOST") != ""
	fs.DurationVar(&cfg.Metadata.MetadataWait, "metadata-wait", 2*time.Second, "how long a connection waits for its pod's metadata")
	fs.DurationVar(&cfg.Path.LBPendingAfter, "lb-pending-after", 2*time.Minute, "diagnose a LoadBalancer whose EXTERNAL-IP is pending this long")
	fs.BoolVar(&cfg.Path.IsolatedPodNetwork, "isolated-pod-network", false, "declare that no host outside the cluster's nodes reaches a pod address untranslated (no route to the pod CIDRs from outside, no load balancer with IP targets): a client outside the cluster at a pod's own address, untranslated on the pod's node, is then diagnosed nat_not_visible (a TC/XDP eBPF NodePort, DSR); without it such connections have entry unknown")
	var ec exporter.Config
	fs.StringVar(&ec.Endpoint, "otlp-endpoint", "", "OTLP endpoint: host:port (or Kubernetes' Service link form tcp://host:port) for grpc; host:port or a base URL http[s]://host[:port][/prefix] for http/protobuf (/v1/traces, /v1/metrics appended); enables export (also OTEL_EXPORTER_OTLP_ENDPOINT, a URL)")
	fs.StringVar(&ec.Protocol, "otlp-protocol", "", "grpc or http/protobuf (default grpc, or OTEL_EXPORTER_OTLP_PROTOCOL)")
	fs.BoolVar(&ec.Insecure, "otlp-insecure", false, "OTLP without TLS")
	headers := fs.String("otlp-headers", "", "OTLP headers k=v,k2=v2")
	fs.StringVar(&ec.Compression, "otlp-compression", "", "gzip or none")
	fs.StringVar(&ec.CAFile, "otlp-ca", "", "CA certificate to verify the OTLP server")
	fs.StringVar(&ec.CertFile, "otlp-cert", "", "client certificate for mTLS")
	fs.StringVar(&ec.KeyFile, "otlp-key", "", "client key for mTLS")
	fs.DurationVar(&ec.MetricInterval, "metric-interval", 10*time.Second, "how often metrics are pushed")
	fs.IntVar(&ec.QueueSize, "export-queue", 8192, "connections waiting to be exported; beyond it they are dropped and counted")
	fs.StringVar(&ec.ClientAddresses, "client-addresses", "keep", "client.address in exported data: keep, hash or drop")
	fs.StringVar(&ec.Temporality, "metrics-temporality", exporter.TemporalityCumulative, "cumulative or delta: delta sends each interval's increments and forgets a series after an interval without measurements (scale-out collectors; Prometheus needs --enable-feature=otlp-deltatocumulative)")
	fs.StringVar(&ec.LatencyHistogram, "latency-histogram", exporter.HistogramExponential, "exponential (base-2, 160 buckets: Prometheus native histograms) or explicit (fixed buckets, for a scraped Prometheus exporter) for lbpath.request.duration, lbpath.connection.duration and lbpath.rtt")
	fs.IntVar(&ec.MaxSeries, "max-series-per-metric", exporter.DefaultMaxSeries, "attribute sets each per-pod metric holds; measurements beyond go to its otel.metric.overflow series and are counted in lbpath.agent.series_overflow")
	fs.DurationVar(&ec.SeriesExpiry, "series-expiry", 0, "cumulative: a series with no measurement this long is stale; when stale series outnumber live ones, every per-pod series restarts with a new start time (default 5m, at least twice --metric-interval)")
	ec.Sampling = exporter.Sampling{Enabled: true, Probability: exporter.DefaultSpanSampling, SlowThreshold: exporter.DefaultSlowThreshold}
	fs.Func("span-sampling", "fraction of healthy connections exported as spans, decided from the trace ID so that every node keeps or drops the same connection (0 to 1, a decimal or a fraction; default 1/32); failed, diagnosed and slow connections are always exported; Service annotation lbpath.io/span-sampling overrides it",
		func(v string) (err error) { ec.Sampling.Probability, err = kube.ParseSpanSampling(v); return err })
	fs.Func("slow-threshold", "connections that last longer are always exported as spans (0: none for being slow; default 1s); Service annotation lbpath.io/slow-threshold overrides it",
		func(v string) (err error) { ec.Sampling.SlowThreshold, err = kube.ParseSlowThreshold(v); return err })
	spans := fs.String("spans", "cluster", "connections exported as spans: cluster (those involving a pod or a Service, and any lbpath could not classify) or all (also the node's own: node_local, apiserver, kubelet, external, lb_health_check)")
	fs.StringVar(&ec.Cluster, "cluster", os.Getenv("CLUSTER_NAME"), "k8s.cluster.name")
	rb := fs.Uint("ring-buffer-bytes", 4<<20, "eBPF ring buffer size (power of two)")
	maxConns := fs.Uint("max-connections", 65536, "kernel table of open connections")
	fs.BoolVar(&cfg.Capture.NoRequestTiming, "no-request-timing", false, "leave out the per-read/write hooks that time requests (their cost goes away with the request metrics)")
	fs.DurationVar(&cfg.Flow.JoinWait, "join-wait", time.Second, "how long a closed socket waits for its NAT entry")
	fs.DurationVar(&cfg.UDP.Idle, "udp-idle", agent.DefaultUDPIdle, "a UDP flow's record is emitted after this long without a datagram (at most 25s: below conntrack's UDP timeout)")
	fs.BoolVar(&cfg.UDP.Disabled, "no-udp", false, "leave out UDP flow capture (its per-packet cgroup_skb programs)")
	fs.StringVar(&cfg.UDP.Capture.CgroupPath, "cgroup2-root", "", "the cgroup v2 hierarchy's root, where the UDP capture attaches (default: the cgroup2 mount in /proc/self/mountinfo); a sub-cgroup is refused, since it would see only its own sockets")
	fs.DurationVar(&cfg.StatsInterval, "stats-interval", 30*time.Second, "how often counters are logged (0: only at exit)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", agent.DefaultShutdownTimeout,
		"after SIGTERM, how long pending records and the OTLP export may take to flush; what is not delivered by then is counted as failed export. Keep it below the pod's terminationGracePeriodSeconds")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	healthAddr := fs.String("health-addr", "127.0.0.1:9465", "serve /healthz, /readyz and /metrics (Prometheus text) on this host:port; loopback unless chosen otherwise; empty disables")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // flag already printed the field and the reason
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "lbpath-agent: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "lbpath-agent: log-level: %v\n", err)
		return 2
	}
	if *output != "jsonl" && *output != "none" {
		fmt.Fprintf(stderr, "lbpath-agent: output: %q is not supported (want jsonl or none)\n", *output)
		return 2
	}
	if *spans != "cluster" && *spans != "all" {
		fmt.Fprintf(stderr, "lbpath-agent: spans: %q is not supported (want cluster or all)\n", *spans)
		return 2
	}
	cfg.NodeSpans = *spans == "all"
	// Empty and 0 are the exporter library's defaults; on the command line
	// they are mistakes (0 series would fold everything into overflow).
	if ec.Temporality == "" {
		fmt.Fprintf(stderr, "lbpath-agent: metrics-temporality: \"\" is not cumulative or delta\n")
		return 2
	}
	if ec.LatencyHistogram == "" {
		fmt.Fprintf(stderr, "lbpath-agent: latency-histogram: \"\" is not exponential or explicit\n")
		return 2
	}
	if ec.MaxSeries < 1 {
		fmt.Fprintf(stderr, "lbpath-agent: max-series-per-metric: %d must be at least 1\n", ec.MaxSeries)
		return 2
	}
	h, err := exporter.ParseHeaders(*headers)
	if err != nil {
		fmt.Fprintf(stderr, "lbpath-agent: %v\n", err)
		return 2
	}
	ec.Headers = h
	if ec.Endpoint != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" {
		cfg.Export = &ec
	} else if err := ec.Validate(); err != nil {
		// Without an endpoint the OTLP flags are unused, but a typo in
		// them should not wait for the day an endpoint is added.
		fmt.Fprintf(stderr, "lbpath-agent: %v\n", err)
		return 2
	}
	if !*noKube && (*kubeconfig != "" || inCluster) {
		cfg.Kube = &kube.Config{Kubeconfig: *kubeconfig, ExternalNameResolver: *extResolver}
	}
	if *extResolver != "" {
		if _, _, err := net.SplitHostPort(*extResolver); err != nil {
			fmt.Fprintf(stderr, "lbpath-agent: externalname-resolver: %q is not host:port: %v\n", *extResolver, err)
			return 2
		}
	}
	if *rb > 1<<31 {
		fmt.Fprintf(stderr, "lbpath-agent: ring-buffer-bytes: %d is too large\n", *rb)
		return 2
	}
	if *maxConns == 0 || *maxConns > 1<<24 {
		fmt.Fprintf(stderr, "lbpath-agent: max-connections: %d must be between 1 and %d\n", *maxConns, 1<<24)
		return 2
	}
	cfg.Capture.RingBufferBytes = uint32(*rb)
	cfg.Capture.MaxConnections = uint32(*maxConns)
	cfg.PodCIDRs = scope.cidrs
	if cfg.ShutdownTimeout == 0 {
		// 0 means the default in agent.Config; on the command line it
		// would be a request to drop everything pending at stop.
		fmt.Fprintf(stderr, "lbpath-agent: shutdown-timeout: must be more than 0\n")
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "lbpath-agent: %v\n", err)
		return 2
	}
	if cfg.Kube != nil {
		if err := cfg.Kube.Check(); err != nil {
			fmt.Fprintf(stderr, "lbpath-agent: %v\n", err)
			return 2
		}
	}
	healthLoopback := true
	if *healthAddr != "" {
		if healthLoopback, err = health.CheckAddr(*healthAddr); err != nil {
			fmt.Fprintf(stderr, "lbpath-agent: health-addr: %v\n", err)
			return 2
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if !startupChecks(log) {
		return 2
	}
	if scope.fromNode {
		if cfg.PodCIDRs, err = scope.resolve(context.Background(), cfg.Kube, cfg.Node); err != nil {
			log.Error("scope to this node's pods", "flag", "pod-cidr", "err", err)
			return 2
		}
		log.Info("scoped to this node's pod CIDRs", "node", cfg.Node, "pod_cidrs", cfg.PodCIDRs)
	}

	// The health endpoint starts first: a port already taken fails before
	// the eBPF load, and the probes answer (not ready) while it runs.
	hs := newAgentHealth()
	if *healthAddr != "" {
		if !healthLoopback {
			log.Warn("health endpoint is reachable beyond this host: /metrics exposes the agent's counters to the network",
				"health_addr", *healthAddr)
		}
		srv, err := health.Listen(*healthAddr, health.Handler(hs.live, hs.ready, hs.metrics), log)
		if err != nil {
			log.Error("start health endpoint", "flag", "health-addr", "err", err)
			return 1
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				log.Warn("stop health endpoint", "err", err)
			}
		}()
		log.Info("health endpoint listening", "addr", srv.Addr())
	}

	enc := json.NewEncoder(stdout)
	var writeErr error
	var out agent.Outputs
	if *output == "jsonl" {
		out.Path = func(p *path.Path) {
			if err := enc.Encode(p.Record()); err != nil && writeErr == nil {
				writeErr = err
				log.Error("write record", "err", err)
			}
		}
	}
	a, err := agent.New(cfg, log, out)
	if err != nil {
		log.Error("start agent", "err", err)
		return 1
	}
	hs.cur.Store(a)
	log.Info("lbpath-agent running", "node", cfg.Node, "netns", cfg.Netns, "programs", a.Programs(),
		"kube", cfg.Kube != nil, "otlp", cfg.Export != nil)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { hs.stopping.Store(true) })
	if err := a.Run(ctx); err != nil {
		log.Error("agent stopped", "err", err)
		return 1
	}
	log.Info("lbpath-agent stopped cleanly")
	return 0
}
