package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

type demoOptions struct {
	Mode              testbed.ProxyMode
	Policy            testbed.Policy
	Connections       int
	KeepAliveRequests int
	Refused           int
	Prefix            string
}

func defaultDemoOptions() demoOptions {
	return demoOptions{Mode: testbed.ModeIPTables, Policy: testbed.PolicyCluster,
		Connections: 120, KeepAliveRequests: 300, Refused: 5, Prefix: "lbpdemo"}
}

func (o demoOptions) validate() error {
	switch o.Mode {
	case testbed.ModeIPTables, testbed.ModeNFTables:
	default:
		return fmt.Errorf("mode: %q is not iptables or nftables", o.Mode)
	}
	switch o.Policy {
	case testbed.PolicyCluster, testbed.PolicyLocal:
	default:
		return fmt.Errorf("policy: %q is not Cluster or Local", o.Policy)
	}
	if o.Connections < 2 || o.Connections > 100000 {
		return fmt.Errorf("connections: %d must be between 2 and 100000", o.Connections)
	}
	if o.KeepAliveRequests < 1 || o.KeepAliveRequests > 1000000 {
		return fmt.Errorf("keepalive-requests: %d must be between 1 and 1000000", o.KeepAliveRequests)
	}
	if o.Prefix == "" || len(o.Prefix) > 8 {
		return fmt.Errorf("prefix: %q must be 1 to 8 characters (it prefixes interface names)", o.Prefix)
	}
	return nil
}

// sent is the traffic generator's ground truth for one connection.
type sent struct {
	local, target netip.AddrPort
	pod           string
	requests      int
	entryNode     string
}

// demoReport is what the demo measured; tests assert on it.
type demoReport struct {
	sent     []sent
	merged   []flow.Merged
	matched  int // connections lbpath attributed to the pod that answered
	missing  int
	wrongPod int
	refused  int // reject records for the Service without endpoints
	hotPod   string
}

func runDemo(ctx context.Context, opt demoOptions, out, errOut io.Writer) error {
	_, err := demo(ctx, opt, out, errOut)
	return err
}

func demo(ctx context.Context, opt demoOptions, out, errOut io.Writer) (*demoReport, error) {
	start := time.Now()
	log := slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fmt.Fprintf(out, "lbpath demo: bringing up a 2-node cluster in network namespaces (kube-proxy %s mode, externalTrafficPolicy %s)\n", opt.Mode, opt.Policy)
	cl, err := testbed.Up(ctx, testbed.Options{Prefix: opt.Prefix, Mode: opt.Mode, Policy: opt.Policy, Logger: log})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := cl.Down(); err != nil {
			fmt.Fprintf(errOut, "lbpath demo: teardown: %v\n", err)
		}
	}()
	agents, err := nodeagents.Start(cl, nodeagents.Options{Flow: flow.Config{JoinWait: 300 * time.Millisecond}}, log)
	if err != nil {
		return nil, err
	}
	defer agents.Stop()
	fmt.Fprintf(out, "lbpath demo: %d node agents attached (programs %v)\n", len(agents.Agents), agents.Agents[0].Programs())

	rep := &demoReport{}
	web := cl.Web()
	// 1. Fresh connections through the LB IP; the "cloud LB" sends the
	// first half to node1 and the second half to node2.
	half := opt.Connections / 2
	for i := range opt.Connections {
		node := 1
		if i >= half {
			node = 2
		}
		if i == 0 || i == half {
			// Let the last connection's final ACK pass before the "cloud
			// LB" moves; rerouted mid-teardown it would land on the other node.
			time.Sleep(100 * time.Millisecond)
			if err := cl.RouteLB(node); err != nil {
				return nil, err
			}
		}
		res := cl.Request(ctx, cl.Client.Netns, web.LoadBalancerAddr(), 64, 512)
		if res.Err != nil {
			return nil, fmt.Errorf("request %d through the LB: %w", i, res.Err)
		}
		rep.sent = append(rep.sent, sent{local: res.Local, target: res.Remote, pod: res.Pod, requests: 1, entryNode: cl.Node(node).Name})
	}
	// 2. The skew: one client with keep-alive, pinned to whichever pod its
	// single connection landed on, sends many requests with big answers.
	time.Sleep(100 * time.Millisecond)
	if err := cl.RouteLB(1); err != nil {
		return nil, err
	}
	ka, err := keepAlive(ctx, cl, web.LoadBalancerAddr(), opt.KeepAliveRequests)
	if err != nil {
		return nil, err
	}
	ka.entryNode = cl.Node(1).Name
	rep.sent = append(rep.sent, ka)
	rep.hotPod = ka.pod
	// 3. A Service without endpoints: refused, and lbpath says so.
	empty := cl.Empty()
	for range opt.Refused {
		res := cl.Request(ctx, cl.Client.Netns, netip.AddrPortFrom(cl.Node(1).IP, empty.NodePort), 0, 0)
		if !testbed.IsRefused(res.Err) {
			return nil, fmt.Errorf("connection to the Service without endpoints: got %v, want refused", res.Err)
		}
	}

	// Wait until every connection's records are in (bounded).
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep.merged = flow.Merge(agents.Records())
		if rep.tally(cl, empty, opt) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := agents.Stop(); err != nil {
		return nil, err
	}
	rep.merged = flow.Merge(agents.Records())
	rep.tally(cl, empty, opt)
	rep.print(out, cl)
	fmt.Fprintf(out, "\nlbpath demo: finished in %.1fs; tearing down\n", time.Since(start).Seconds())
	if rep.missing > 0 || rep.wrongPod > 0 {
		return rep, fmt.Errorf("%d connections missing, %d attributed to the wrong pod", rep.missing, rep.wrongPod)
	}
	return rep, nil
}

// keepAlive sends n requests over one kept-alive connection and closes it.
func keepAlive(ctx context.Context, cl *testbed.Cluster, target netip.AddrPort, n int) (sent, error) {
	client := cl.HTTPClient(cl.Client.Netns, true)
	defer client.CloseIdleConnections()
	s := sent{target: target, requests: n}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		s.local = netip.MustParseAddrPort(info.Conn.LocalAddr().String())
	}}
	for i := range n {
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet,
			fmt.Sprintf("http://%s/?pad=4096", target), nil)
		if err != nil {
			return s, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return s, fmt.Errorf("keep-alive request %d: %w", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		pod := resp.Header.Get(testbed.HeaderPod)
		if s.pod != "" && pod != s.pod {
			return s, fmt.Errorf("keep-alive connection moved from %s to %s", s.pod, pod)
		}
		s.pod = pod
	}
	return s, nil
}

// tally matches what was sent against what lbpath reported; true when
// every connection is accounted for.
func (r *demoReport) tally(cl *testbed.Cluster, empty testbed.Service, opt demoOptions) bool {
	byClient := map[[2]netip.AddrPort]*flow.Merged{}
	for i := range r.merged {
		m := &r.merged[i]
		if m.Server != nil {
			byClient[[2]netip.AddrPort{m.Client, m.Target}] = m
		}
	}
	r.matched, r.missing, r.wrongPod = 0, 0, 0
	for _, s := range r.sent {
		m := byClient[[2]netip.AddrPort{s.local, s.target}]
		switch {
		case m == nil:
			r.missing++
		case podName(cl, m.Key.Dst.Addr()) != s.pod:
			r.wrongPod++
		default:
			r.matched++
		}
	}
	r.refused = 0
	for _, m := range r.merged {
		if m.Reject != nil && m.Reject.Target.Port() == empty.NodePort {
			r.refused++
		}
	}
	return r.missing == 0 && r.refused >= opt.Refused
}

func podName(cl *testbed.Cluster, ip netip.Addr) string {
	for _, p := range cl.Pods {
		if p.IP == ip {
			return p.Name
		}
	}
	return ip.String()
}

type podRow struct {
	pod, node   string
	conns, reqs int
	bytes       uint64
	entry       map[string]int
	snat, cross int
	durations   []time.Duration
}

func (r *demoReport) print(out io.Writer, cl *testbed.Cluster) {
	reqs := map[[2]netip.AddrPort]int{}
	for _, s := range r.sent {
		reqs[[2]netip.AddrPort{s.local, s.target}] = s.requests
	}
	rows := map[string]*podRow{}
	var totConns, totReqs int
	var totBytes uint64
	for _, m := range r.merged {
		if m.Server == nil || m.Target.Port() != cl.Web().Port {
			continue
		}
		name := podName(cl, m.Key.Dst.Addr())
		row := rows[name]
		if row == nil {
			row = &podRow{pod: name, node: m.PodNode, entry: map[string]int{}}
			rows[name] = row
		}
		row.conns++
		row.reqs += reqs[[2]netip.AddrPort{m.Client, m.Target}]
		row.bytes += m.Server.BytesToClient + m.Server.BytesToServer
		row.entry[m.EntryNode]++
		if m.SNAT {
			row.snat++
		}
		if m.CrossNode {
			row.cross++
		}
		row.durations = append(row.durations, m.Server.Duration())
		totConns++
		totReqs += reqs[[2]netip.AddrPort{m.Client, m.Target}]
		totBytes += m.Server.BytesToClient + m.Server.BytesToServer
	}
	names := make([]string, 0, len(rows))
	for n := range rows {
		names = append(names, n)
	}
	sort.Strings(names)

	fmt.Fprintf(out, "\nService default/web — LB %v, NodePort %d, ClusterIP %v (what lbpath saw, per pod)\n\n",
		cl.Web().LoadBalancerAddr(), cl.Web().NodePort, cl.Web().ClusterAddr())
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tCONNS\tCONN%\tREQS*\tREQ%\tBYTES\tBYTE%\tENTRY NODES\tSNAT%\tCROSS-NODE%\tP50 CONN\tP99 CONN\t")
	for _, n := range names {
		row := rows[n]
		var entries []string
		for node, c := range row.entry {
			entries = append(entries, fmt.Sprintf("%s:%d", node, c))
		}
		sort.Strings(entries)
		flag := ""
		if n == r.hotPod {
			flag = " ◀ hot"
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%d\t%.0f%%\t%d\t%.0f%%\t%s\t%.0f%%\t%s\t%.0f%%\t%.0f%%\t%s\t%s\t\n",
			n, flag, row.node, row.conns, pct(row.conns, totConns), row.reqs, pct(row.reqs, totReqs),
			human(row.bytes), 100*float64(row.bytes)/float64(max(totBytes, 1)), strings.Join(entries, " "),
			pct(row.snat, row.conns), pct(row.cross, row.conns),
			quantile(row.durations, 0.5), quantile(row.durations, 0.99))
	}
	tw.Flush()
	fmt.Fprintf(out, "\n* REQS is what the traffic generator sent on each connection lbpath saw; lbpath itself counts\n  connections and bytes here (per-request timing comes with the OTLP exporter).\n")
	fmt.Fprintf(out, "\nground truth: %d of %d connections attributed to the pod that answered them (%d missing, %d wrong)\n",
		r.matched, len(r.sent), r.missing, r.wrongPod)
	if r.hotPod != "" {
		row := rows[r.hotPod]
		if row != nil {
			fmt.Fprintf(out, "skew: %s holds %.0f%% of connections but %.0f%% of requests and %.0f%% of bytes — one keep-alive client is pinned to it\n",
				r.hotPod, pct(row.conns, totConns), pct(row.reqs, totReqs), 100*float64(row.bytes)/float64(max(totBytes, 1)))
		}
	}
	fmt.Fprintf(out, "refused: %d connections to Service default/empty (no endpoints) were refused by the entry node's kube-proxy rules\n", r.refused)
}

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func human(b uint64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%dB", b)
}

func quantile(d []time.Duration, q float64) string {
	if len(d) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(q*float64(len(s)))) - 1 // nearest rank
	return s[max(i, 0)].Round(10 * time.Microsecond).String()
}
