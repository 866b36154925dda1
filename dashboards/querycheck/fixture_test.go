package querycheck

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// The synthetic cluster the queries are evaluated over, shaped exactly as
// the collector's Prometheus exporter writes lbpath's data (names, labels,
// cumulative counters, explicit-bucket histograms with the agent's bucket
// bounds), one sample per minute from 0 to 60 minutes:
//
//   - Service shop/web (LoadBalancer, externalTrafficPolicy Cluster), pods
//     on node-a and node-b; web-7d9f-hot on node-a takes most connections,
//     node-b forwards part of its LB traffic to it (SNAT, cross-node).
//   - Deployment shop/checkout rolled out at minute 30 (hash 5c6d → 8e9f)
//     and regressed: p90 0.05 s → 0.12 s, regression flag from minute 40.
//   - Agents on node-a, node-b, node-c; node-c stopped reporting at minute
//     50; node-a drops ring-buffer events; node-b's export queue overflows;
//     node-b's conntrack table is full from minute 30 and drops SYNs.
//   - shop/web is listed in lbpath:client_ip_required.
const (
	hotPod      = "web-7d9f-hot"
	regressedDe = "checkout"
	silentNode  = "node-c"
)

// fixture is the series text for promqltest. With native set, latency
// histograms are native histograms (what Prometheus' OTLP receiver makes of
// the agents' default exponential histograms) instead of classic ones.
type fixture struct {
	lines  []string
	native bool
}

func labelStr(ls map[string]string) string {
	keys := make([]string, 0, len(ls))
	for k := range ls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("{")
	for i, k := range keys {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%s=%q", k, ls[k])
	}
	b.WriteString("}")
	return b.String()
}

func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// add appends one series; values is in promqltest's expanding notation.
func (f *fixture) add(name string, ls map[string]string, values string) {
	f.lines = append(f.lines, "  "+name+labelStr(ls)+" "+values)
}

// counter is a series growing by perMin from minute from to minute to.
func counter(perMin float64, from, to int) string {
	var s string
	if from > 0 {
		s = fmt.Sprintf("_x%d ", from)
	}
	return s + fmt.Sprintf("0+%gx%d", perMin, to-from)
}

func gauge(v float64, from, to int) string {
	var s string
	if from > 0 {
		s = fmt.Sprintf("_x%d ", from)
	}
	return s + fmt.Sprintf("%gx%d", v, to-from)
}

// histogram adds _bucket/_sum/_count series of a latency distribution with
// the given median: a fraction le/(le+median) of observations is ≤ le. In a
// native fixture it adds one native histogram series instead.
func (f *fixture) histogram(name string, ls map[string]string, bounds []float64, perMin, median float64, from, to int) {
	if f.native {
		f.nativeHistogram(name, ls, perMin, median, from, to)
		return
	}
	for _, le := range bounds {
		frac := le / (le + median)
		f.add(name+"_bucket", merge(ls, map[string]string{"le": fmt.Sprint(le)}), counter(math.Round(perMin*frac*100)/100, from, to))
	}
	f.add(name+"_bucket", merge(ls, map[string]string{"le": "+Inf"}), counter(perMin, from, to))
	f.add(name+"_count", ls, counter(perMin, from, to))
	f.add(name+"_sum", ls, counter(perMin*median*1.3, from, to))
}

// nativeSchema is the fixture's native histogram schema: 8 buckets per
// doubling, a resolution the agents' 160-bucket exponential histograms
// reach on latencies spanning up to 2^20 (the SDK's scale 3; Prometheus
// keeps it).
const nativeSchema = 3

// nativeHistogram adds one native histogram series of the same
// distribution as histogram: buckets (2^(i/8), 2^((i+1)/8)] from median/2^10
// to median·2^10, each growing by perMin·(F(upper)−F(lower)) a minute with
// F(v) = v/(v+median); the rest of the mass (below and above) is left out,
// as it is in the classic fixture beyond its bounds.
func (f *fixture) nativeHistogram(name string, ls map[string]string, perMin, median float64, from, to int) {
	per := math.Exp2(nativeSchema)
	lo := int(math.Floor(math.Log2(median)*per)) - 10*int(per)
	hi := lo + 20*int(per)
	cdf := func(i int) float64 { v := math.Exp2(float64(i) / per); return v / (v + median) }
	var buckets []string
	var count float64
	for i := lo; i < hi; i++ {
		c := math.Round(perMin*(cdf(i+1)-cdf(i))*1000) / 1000
		buckets = append(buckets, fmt.Sprint(c))
		count += c
	}
	// Prometheus numbers a bucket by its upper bound (index i is
	// (base^(i−1), base^i]), one more than OpenTelemetry does.
	inc := fmt.Sprintf("{{schema:%d count:%g sum:%g offset:%d buckets:[%s]}}", nativeSchema, count, perMin*median*1.3, lo+1, strings.Join(buckets, " "))
	var v string
	if from > 0 {
		v = fmt.Sprintf("_x%d ", from)
	}
	f.add(name, ls, v+fmt.Sprintf("{{schema:%d count:0 sum:0}}+%sx%d", nativeSchema, inc, to-from))
}

// The agent's bucket bounds (exporter/instruments.go).
var (
	requestBounds = []float64{0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10}
	connBounds    = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800}
	rttBounds     = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}
)

type pod struct {
	ns, svc, name, node, deploy, hash string
	from, to                          int
	latency                           float64 // median request latency, s
}

func (p pod) labels() map[string]string {
	return map[string]string{
		"k8s_namespace_name": p.ns, "k8s_service_name": p.svc, "k8s_pod_name": p.name,
		"k8s_node_name": p.node, "k8s_deployment_name": p.deploy,
		"k8s_replicaset_name": p.deploy + "-" + p.hash, "lbpath_pod_template_hash": p.hash,
	}
}

// conn is one kind of connection record an agent exports.
type conn struct {
	role, outcome, entry, entryNode string
	snat, cross                     bool
	perMin                          float64
}

func (c conn) labels() map[string]string {
	return map[string]string{
		"lbpath_role": c.role, "lbpath_outcome": c.outcome, "lbpath_entry": c.entry,
		"lbpath_entry_node": c.entryNode, "lbpath_snat": fmt.Sprint(c.snat), "lbpath_cross_node": fmt.Sprint(c.cross),
	}
}

func buildFixture() string { return buildFixtureWith(false) }

// buildNativeFixture is the same cluster with native latency histograms.
func buildNativeFixture() string { return buildFixtureWith(true) }

func buildFixtureWith(native bool) string {
	f := &fixture{native: native}
	agent := map[string]string{"job": "lbpath-agent", "k8s_cluster_name": "prod", "otel_scope_name": "github.com/lbpath/lbpath/exporter"}
	coll := map[string]string{"job": "lbpath-collector", "k8s_cluster_name": "prod"}

	pods := []struct {
		p     pod
		conns []conn
	}{
		{pod{"shop", "web", hotPod, "node-a", "web", "7d9f", 0, 60, 0.02}, []conn{
			{"server", "ok", "loadbalancer", "node-a", false, false, 60},
			{"server", "ok", "", "node-b", true, true, 30}, // SNATed by node-b: only the entry node knows the entry
		}},
		{pod{"shop", "web", "web-7d9f-a2", "node-b", "web", "7d9f", 0, 60, 0.02}, []conn{
			{"server", "ok", "loadbalancer", "node-b", true, false, 10}, // Cluster policy masquerades LB traffic even locally
		}},
		{pod{"shop", "web", "web-7d9f-b3", "node-b", "web", "7d9f", 0, 60, 0.02}, []conn{
			{"server", "ok", "clusterip", "node-b", false, false, 10},
		}},
		{pod{"shop", "checkout", "checkout-5c6d-x1", "node-a", "checkout", "5c6d", 0, 32, 0.04}, []conn{
			{"server", "ok", "clusterip", "node-a", false, false, 40},
		}},
		{pod{"shop", "checkout", "checkout-8e9f-y1", "node-b", "checkout", "8e9f", 30, 60, 0.10}, []conn{
			{"server", "ok", "clusterip", "node-b", false, false, 40},
		}},
	}
	for _, pc := range pods {
		p := pc.p
		pl := merge(agent, p.labels())
		for _, c := range pc.conns {
			ls := merge(pl, c.labels())
			if c.entry == "" {
				delete(ls, "lbpath_entry")
			}
			f.add("lbpath_connections_total", ls, counter(c.perMin, p.from, p.to))
			f.add("lbpath_retransmits_total", ls, counter(c.perMin*0.01, p.from, p.to))
			f.add("lbpath_bytes_total", merge(ls, map[string]string{"lbpath_direction": "to_server"}), counter(c.perMin*800, p.from, p.to))
			f.add("lbpath_bytes_total", merge(ls, map[string]string{"lbpath_direction": "to_client"}), counter(c.perMin*12000, p.from, p.to))
			f.histogram("lbpath_rtt_seconds", ls, rttBounds, c.perMin, 0.0004, p.from, p.to)
			f.histogram("lbpath_connection_duration_seconds", ls, connBounds, c.perMin, 2, p.from, p.to)
		}
		var perMin float64
		for _, c := range pc.conns {
			perMin += c.perMin * 5 // five requests per connection
		}
		f.add("lbpath_requests_total", pl, counter(perMin, p.from, p.to))
		f.histogram("lbpath_request_duration_seconds", pl, requestBounds, perMin, p.latency, p.from, p.to)
	}
	// The web pods also serve requests an ingress proxy pod routes to them
	// (Ingress shop/shop, route */web): the edge metrics at the backend pods.
	for i, pc := range pods[:3] {
		p := pc.p
		ls := merge(agent, map[string]string{"lbpath_ingress_name": "shop/shop", "lbpath_ingress_class": "nginx",
			"lbpath_ingress_route": "*/web", "lbpath_ingress_proxy_pod": "ingress/ingress-nginx-controller",
			"k8s_namespace_name": p.ns, "k8s_service_name": p.svc, "k8s_pod_name": p.name})
		perMin := float64(60 - 20*i)
		f.add("lbpath_ingress_requests_total", ls, counter(perMin, p.from, p.to))
		f.histogram("lbpath_ingress_request_duration_seconds", ls, requestBounds, perMin, p.latency, p.from, p.to)
	}
	// node-b forwarded 30/min of its LB traffic to the hot pod on node-a; the
	// resource's k8s.node.name (node-b, the agent's node) overwrites the pod's
	// node on these points in the exporter's output.
	fwd := conn{"forward", "forwarded", "loadbalancer", "node-b", true, true, 30}
	f.add("lbpath_connections_total", merge(agent, pods[0].p.labels(), map[string]string{"k8s_node_name": "node-b"}, fwd.labels()), counter(30, 0, 60))
	// node-a's kernel refuses SYNs to a Service without endpoints.
	rej := conn{"reject", "refused", "clusterip", "node-a", false, false, 1}
	f.add("lbpath_connections_total", merge(agent, map[string]string{"k8s_namespace_name": "shop", "k8s_service_name": "cart", "k8s_node_name": "node-a"}, rej.labels()), counter(1, 0, 60))

	// Agent self-metrics: resource k8s.node.name is the agent's node.
	for _, n := range []string{"node-a", "node-b", silentNode} {
		to := 60
		if n == silentNode {
			to = 50
		}
		nl := merge(agent, map[string]string{"k8s_node_name": n})
		f.add("lbpath_agent_exported_total", nl, counter(100, 0, to))
		// The node's own traffic, counted by class (no loss).
		for i, class := range []string{"node_local", "apiserver", "kubelet", "external"} {
			f.add("lbpath_agent_node_connections_total", merge(nl, map[string]string{"lbpath_connection_class": class}), counter(float64(40-10*i), 0, to))
		}
		for _, d := range [][2]string{{"export", "queue_full"}, {"export", "spans_failed"}, {"export", "metric_exports_failed"},
			{"ringbuf", "on_state"}, {"kernel", "conn_table_full"}, {"metadata", "unattributed"}, {"flow", "nat_table_full"}} {
			var per float64
			switch {
			case n == "node-a" && d[1] == "on_state":
				per = 2
			case n == "node-a" && d[1] == "unattributed":
				per = 1
			case n == "node-b" && d[1] == "queue_full":
				per = 5
			}
			f.add("lbpath_agent_dropped_total", merge(nl, map[string]string{"lbpath_stage": d[0], "lbpath_reason": d[1]}), counter(per, 0, to))
		}
	}

	// Node conntrack tables (agent resource, per node): node-b's filled at
	// minute 30 and drops 40 SYNs a minute from then on; node-a stays at
	// 40% with an occasional insert race (not a full table).
	const ctMax = 262144
	for _, n := range []string{"node-a", "node-b"} {
		nl := merge(agent, map[string]string{"k8s_node_name": n})
		f.add("lbpath_node_conntrack_max", nl, gauge(ctMax, 0, 60))
		for _, r := range []string{"drop", "early_drop", "insert_failed"} {
			rl := merge(nl, map[string]string{"lbpath_reason": r})
			switch {
			case n == "node-b" && r == "drop":
				f.add("lbpath_node_conntrack_drops_total", rl, "0x30 0+40x30")
			case n == "node-a" && r == "insert_failed":
				f.add("lbpath_node_conntrack_drops_total", rl, counter(0.5, 0, 60))
			default:
				f.add("lbpath_node_conntrack_drops_total", rl, counter(0, 0, 60))
			}
		}
	}
	f.add("lbpath_node_conntrack_entries", merge(agent, map[string]string{"k8s_node_name": "node-a"}), gauge(0.4*ctMax, 0, 60))
	f.add("lbpath_node_conntrack_entries", merge(agent, map[string]string{"k8s_node_name": "node-b"}), fmt.Sprintf("100000x30 %dx30", ctMax))

	// lbimbalance output.
	svc := func(ns, s string) map[string]string {
		return merge(coll, map[string]string{"k8s_namespace_name": ns, "k8s_service_name": s})
	}
	web := svc("shop", "web")
	for _, sig := range []string{"connections", "requests", "bytes"} {
		sl := map[string]string{"lbpath_signal": sig}
		for _, ps := range []struct {
			pod, node string
			share     float64
		}{{hotPod, "node-a", 0.75}, {"web-7d9f-a2", "node-b", 0.125}, {"web-7d9f-b3", "node-b", 0.125}} {
			f.add("lbpath_lb_share_ratio", merge(web, sl, map[string]string{"k8s_pod_name": ps.pod, "k8s_node_name": ps.node}), gauge(ps.share, 0, 60))
		}
		f.add("lbpath_lb_max_mean_ratio", merge(web, sl), gauge(2.25, 0, 60))
		f.add("lbpath_lb_cv_ratio", merge(web, sl), gauge(0.88, 0, 60))
		f.add("lbpath_lb_node_share_ratio", merge(web, sl, map[string]string{"k8s_node_name": "node-a"}), gauge(0.75, 0, 60))
		f.add("lbpath_lb_node_share_ratio", merge(web, sl, map[string]string{"k8s_node_name": "node-b"}), gauge(0.25, 0, 60))
		co := svc("shop", "checkout")
		f.add("lbpath_lb_share_ratio", merge(co, sl, map[string]string{"k8s_pod_name": "checkout-8e9f-y1", "k8s_node_name": "node-b"}), gauge(1, 30, 60))
		f.add("lbpath_lb_max_mean_ratio", merge(co, sl), gauge(1, 0, 60))
		f.add("lbpath_lb_cv_ratio", merge(co, sl), gauge(0, 0, 60))
		f.add("lbpath_lb_node_share_ratio", merge(co, sl, map[string]string{"k8s_node_name": "node-b"}), gauge(1, 30, 60))
	}
	// shop/web's ready endpoints (lbsignals receiver) all have traffic.
	f.add("lbpath_lb_idle_pods", web, gauge(0, 0, 60))
	f.add("lbpath_lb_hot", merge(web, map[string]string{"k8s_pod_name": hotPod, "k8s_node_name": "node-a"}), gauge(1, 0, 60))
	f.add("lbpath_lb_hot", merge(web, map[string]string{"k8s_pod_name": "web-7d9f-a2", "k8s_node_name": "node-b"}), gauge(0, 0, 60))
	f.add("lbpath_lb_hot", merge(web, map[string]string{"k8s_pod_name": "web-7d9f-b3", "k8s_node_name": "node-b"}), gauge(0, 0, 60))
	f.add("lbpath_lb_pods", web, gauge(3, 0, 60))
	f.add("lbpath_lb_pods", svc("shop", "checkout"), gauge(1, 0, 60))
	f.add("lbpath_lb_hot_transitions_total", web, "0x29 1x30")
	f.add("lbpath_lb_evictions_total", merge(coll, map[string]string{"lbpath_reason": "stale"}), counter(0.1, 0, 60))

	// deployregression output for checkout after its rollout at minute 30.
	dep := merge(coll, map[string]string{"k8s_namespace_name": "shop", "k8s_deployment_name": regressedDe})
	for _, rv := range []struct {
		rev, hash string
		p90       float64
	}{{"before", "5c6d", 0.05}, {"after", "8e9f", 0.12}, {"current", "8e9f", 0.13}} {
		rl := merge(dep, map[string]string{"lbpath_revision": rv.rev, "lbpath_pod_template_hash": rv.hash})
		f.add("lbpath_deploy_latency_p50_seconds", rl, gauge(rv.p90/2, 30, 60))
		f.add("lbpath_deploy_latency_p90_seconds", rl, gauge(rv.p90, 30, 60))
		f.add("lbpath_deploy_latency_p99_seconds", rl, gauge(rv.p90*2, 30, 60))
		f.add("lbpath_deploy_samples", merge(dep, map[string]string{"lbpath_revision": rv.rev}), gauge(5000, 30, 60))
	}
	for _, q := range []string{"p50", "p90", "p99"} {
		f.add("lbpath_deploy_latency_delta_ratio", merge(dep, map[string]string{"lbpath_quantile": q}), gauge(2.4, 30, 60))
	}
	f.add("lbpath_deploy_regression", dep, "_x30 0x9 1x20")
	f.add("lbpath_deploy_p_value", dep, gauge(0.0001, 30, 60))
	f.add("lbpath_deploy_time_since_seconds", dep, "_x30 0+60x30")
	f.add("lbpath_deploy_rollouts_total", dep, "0x29 1x30")
	f.add("lbpath_deploy_regressions_total", dep, "0x39 1x20")
	f.add("lbpath_deploy_evictions_total", merge(coll, map[string]string{"lbpath_reason": "stale"}), counter(0, 0, 60))

	// What the recording rule yields once shop/web is listed (Helm value
	// clientIP.required); the committed file lists no Service.
	f.add("lbpath:client_ip_required", map[string]string{"k8s_cluster_name": "prod", "k8s_namespace_name": "shop", "k8s_service_name": "web"}, gauge(1, 0, 60))

	addLBSignals(f, coll) // lbsignals_fixture_test.go
	return "load 1m\n" + strings.Join(f.lines, "\n") + "\n"
}
