package dashboards

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// quantile reads the q-quantile of a latency histogram in either form
// Prometheus may hold it: a native histogram (the agents' default,
// --latency-histogram=exponential, which Prometheus' OTLP receiver stores
// as one series named hist, with no _bucket) or classic _bucket series
// (--latency-histogram=explicit). Only one form exists per series, so
// `native or classic` answers for each label set from whichever is there;
// during a switch-over both may exist for a while and the native answer
// wins for the label sets both have.
func quantile(q float64, hist, by string, matchers ...string) string {
	return fmt.Sprintf("histogram_quantile(%g, sum by (%s) (%s)) or histogram_quantile(%g, sum by (le, %s) (%s))",
		q, by, rate(hist, matchers...), q, by, rate(hist+"_bucket", matchers...))
}

// mean is the mean of a histogram's observations, from a native histogram
// (histogram_sum / histogram_count) or the classic _sum and _count series.
func mean(hist, by string, matchers ...string) string {
	return fmt.Sprintf("(sum by (%s) (histogram_sum(%s)) / sum by (%s) (histogram_count(%s))) or (sum by (%s) (%s) / sum by (%s) (%s))",
		by, rate(hist, matchers...), by, rate(hist, matchers...),
		by, rate(hist+"_sum", matchers...), by, rate(hist+"_count", matchers...))
}

func podLatency() *dashboard.DashboardBuilder {
	byPod := lNamespace + ", " + lPod
	b := newBoard("lbpath-pod-latency", "lbpath / Pod latency",
		"Request latency measured at each pod's socket (first request byte read → first response byte written), TCP round-trip time and retransmits per pod.",
		scopeService)
	b = b.WithRow(row("Requests")).
		WithPanel(ts("Request latency by Service", "p50 / p90 / p99 of request latency at the pods of each Service.", "s", 12, 8,
			promQuery("A", quantile(0.5, metricRequestDuration, lNamespace+", "+lService, mSvc), "p50 {{k8s_namespace_name}}/{{k8s_service_name}}"),
			promQuery("B", quantile(0.9, metricRequestDuration, lNamespace+", "+lService, mSvc), "p90 {{k8s_namespace_name}}/{{k8s_service_name}}"),
			promQuery("C", quantile(0.99, metricRequestDuration, lNamespace+", "+lService, mSvc), "p99 {{k8s_namespace_name}}/{{k8s_service_name}}"))).
		WithPanel(ts("Requests/s per pod", "Request/response turns answered by each pod.", "reqps", 12, 8,
			promQuery("A", fmt.Sprintf("sum by (%s) (%s)", byPod, rate(metricRequests, mSvc)), "{{k8s_pod_name}}")).
			DataLinks(traceLinks(lPod))).
		WithPanel(ts("p90 request latency per pod", "A pod much slower than its siblings points at its node or its own state, not the Service.", "s", 12, 8,
			promQuery("A", quantile(0.9, metricRequestDuration, byPod, mSvc), "{{k8s_pod_name}}")).
			DataLinks(traceLinks(lPod))).
		WithPanel(ts("p99 request latency per pod", "", "s", 12, 8,
			promQuery("A", quantile(0.99, metricRequestDuration, byPod, mSvc), "{{k8s_pod_name}}")).
			DataLinks(traceLinks(lPod))).
		WithRow(row("TCP")).
		WithPanel(ts("p90 RTT per pod", "Smoothed TCP round-trip time at connection close, seen by the pod's accepting sockets.", "s", 8, 8,
			promQuery("A", quantile(0.9, metricRTT, byPod, roleServer, mSvc), "{{k8s_pod_name}}")).
			DataLinks(traceLinks(lPod))).
		WithPanel(ts("Retransmits/s per pod", "TCP segments retransmitted by the pod's accepting sockets.", "pps", 8, 8,
			promQuery("A", fmt.Sprintf("sum by (%s) (%s)", byPod, rate(metricRetransmits, roleServer, mSvc)), "{{k8s_pod_name}}")).
			DataLinks(traceLinks(lPod))).
		WithPanel(ts("Mean connection lifetime per pod", "", "s", 8, 8,
			promQuery("A", mean(metricConnDuration, byPod, roleServer, mSvc), "{{k8s_pod_name}}"))).
		WithPanel(ts("Bytes/s per pod", "TCP payload by direction (to_server: requests, to_client: responses).", "Bps", 24, 8,
			promQuery("A", fmt.Sprintf("sum by (%s, lbpath_direction) (%s)", byPod, rate(metricBytes, roleServer, mSvc)), "{{k8s_pod_name}} {{lbpath_direction}}")))
	return withIngress(b) // ingress.go
}
