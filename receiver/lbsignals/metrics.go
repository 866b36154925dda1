package lbsignals

import (
	"sort"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
)

// Attribute names (semantic conventions).
const (
	attrNamespace = "k8s.namespace.name"
	// lbpath.loadbalancer.address: the ingress IP or hostname, and which.
	attrLBAddress     = "lbpath.loadbalancer.address"
	attrLBAddressType = "lbpath.loadbalancer.address.type"
	attrService       = "k8s.service.name"
	attrPod           = "k8s.pod.name"
	attrNode          = "k8s.node.name"
	attrTransport     = "network.transport"
	attrErrorType     = "error.type"
)

const (
	// selfService is the resource's service.name, as on the processors'
	// output.
	selfService = "lbpath-collector"
	// scopeName tells this receiver's metrics from the agents' and the
	// processors'.
	scopeName = "github.com/lbpath/lbpath/receiver/lbsignals"
)

// errorKey identifies one cumulative probe-error stream.
type errorKey struct {
	Namespace, Service, Node, ErrorType string
}

// probeErrors counts failed probes since the receiver started leading.
type probeErrors struct {
	start  time.Time
	counts map[errorKey]uint64
}

func newProbeErrors(start time.Time) *probeErrors {
	return &probeErrors{start: start, counts: map[errorKey]uint64{}}
}

func (e *probeErrors) add(rs []probeResult) {
	for _, r := range rs {
		if r.ErrorType != "" {
			e.counts[errorKey{r.Namespace, r.Service, r.Node, r.ErrorType}]++
		}
	}
}

// toMetrics renders one collection. Gauges carry only what was seen now:
// a Service no longer pending, or a probe that failed, has no point.
func toMetrics(s snapshot, errs *probeErrors, clusterName string, now time.Time) pmetric.Metrics {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	rm.Resource().Attributes().PutStr("service.name", selfService)
	if clusterName != "" {
		rm.Resource().Attributes().PutStr("k8s.cluster.name", clusterName)
	}
	sm := rm.ScopeMetrics().AppendEmpty()
	sm.Scope().SetName(scopeName)
	ms := sm.Metrics()
	ts := pcommon.NewTimestampFromTime(now)

	ready := newGauge(ms, "lbpath.service.endpoint.ready", "{endpoint}", "1 per ready endpoint (pod) of a Service, per transport, whether or not it gets traffic.")
	for _, r := range s.Ready {
		p := point(ready, ts, 1)
		put(p, attrNamespace, r.Namespace, attrService, r.Service, attrPod, r.Pod, attrNode, r.Node, attrTransport, r.Transport)
	}

	point(newGauge(ms, "lbpath.loadbalancer.services", "{service}", "Services of type LoadBalancer in the cluster (each is usually one cloud load balancer)."), ts, int64(s.LBServices))
	point(newGauge(ms, "lbpath.loadbalancer.pending", "{service}", "LoadBalancer Services without an ingress IP or hostname in their status."), ts, int64(len(s.Pending)))
	if len(s.Pending) > 0 {
		age := newGauge(ms, "lbpath.loadbalancer.pending.age", "s", "How long the LoadBalancer Service has been pending: since creation, or since the receiver saw it become pending, whichever is later.")
		for _, p := range s.Pending {
			ap := age.AppendEmpty()
			ap.SetTimestamp(ts)
			ap.SetDoubleValue(p.Age.Seconds())
			put(ap, attrNamespace, p.Namespace, attrService, p.Service)
		}
	}

	addressMetrics(ms, ts, s.LBAddresses)

	if len(s.ProbeResults) > 0 {
		status := newGauge(ms, "lbpath.service.health_check.status", "", "HTTP status code the node's healthCheckNodePort answered (kube-proxy: 200 with local endpoints, 503 without).")
		healthy := newGauge(ms, "lbpath.service.health_check.healthy", "", "1 when the node's healthCheckNodePort answered 200, 0 for any other status.")
		local := newGauge(ms, "lbpath.service.health_check.local_endpoints", "{endpoint}", "Local endpoints kube-proxy reported in the health-check answer.")
		for _, r := range s.ProbeResults {
			if r.ErrorType != "" {
				continue
			}
			var h int64
			if r.Status == 200 {
				h = 1
			}
			kv := []string{attrNamespace, r.Namespace, attrService, r.Service, attrNode, r.Node}
			put(point(status, ts, int64(r.Status)), kv...)
			put(point(healthy, ts, h), kv...)
			put(point(local, ts, int64(r.LocalEndpoints)), kv...)
		}
	}
	if errs != nil && len(errs.counts) > 0 {
		counter := newCounter(ms, "lbpath.service.health_check.errors", "{probe}", "Health-check probes that got no usable answer, by error.type.")
		keys := make([]errorKey, 0, len(errs.counts))
		for k := range errs.counts {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			a, b := keys[i], keys[j]
			return a.Namespace+a.Service+a.Node+a.ErrorType < b.Namespace+b.Service+b.Node+b.ErrorType
		})
		for _, k := range keys {
			p := point(counter, ts, int64(errs.counts[k]))
			p.SetStartTimestamp(pcommon.NewTimestampFromTime(errs.start))
			put(p, attrNamespace, k.Namespace, attrService, k.Service, attrNode, k.Node, attrErrorType, k.ErrorType)
		}
	}
	return md
}

func newGauge(ms pmetric.MetricSlice, name, unit, desc string) pmetric.NumberDataPointSlice {
	m := ms.AppendEmpty()
	m.SetName(name)
	m.SetUnit(unit)
	m.SetDescription(desc)
	return m.SetEmptyGauge().DataPoints()
}

func newCounter(ms pmetric.MetricSlice, name, unit, desc string) pmetric.NumberDataPointSlice {
	m := ms.AppendEmpty()
	m.SetName(name)
	m.SetUnit(unit)
	m.SetDescription(desc)
	sum := m.SetEmptySum()
	sum.SetIsMonotonic(true)
	sum.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	return sum.DataPoints()
}

// point appends an integer point: counts, codes and flags are whole.
func point(dps pmetric.NumberDataPointSlice, ts pcommon.Timestamp, v int64) pmetric.NumberDataPoint {
	p := dps.AppendEmpty()
	p.SetTimestamp(ts)
	p.SetIntValue(v)
	return p
}

// put sets attribute pairs, leaving out empty values (an endpoint without
// a nodeName has no k8s.node.name rather than an empty one).
func put(p pmetric.NumberDataPoint, kv ...string) {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			p.Attributes().PutStr(kv[i], kv[i+1])
		}
	}
}

// addressMetrics renders lbpath.loadbalancer.address: 1 per address.
func addressMetrics(ms pmetric.MetricSlice, ts pcommon.Timestamp, addrs []lbAddress) {
	if len(addrs) == 0 {
		return
	}
	g := newGauge(ms, "lbpath.loadbalancer.address", "{address}", "1 per address a LoadBalancer Service's status publishes (ingress IP or hostname); a hostname load balancer is provisioned.")
	for _, a := range addrs {
		put(point(g, ts, 1), attrNamespace, a.Namespace, attrService, a.Service, attrLBAddress, a.Address, attrLBAddressType, a.Type)
	}
}
