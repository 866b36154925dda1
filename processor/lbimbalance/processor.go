package lbimbalance

import (
	"context"
	"math"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.uber.org/zap"

	"github.com/lbpath/lbpath/processor/internal/streams"
)

// Signals whose per-pod shares are computed, in the order of the slot array.
const (
	sigConnections = iota
	sigRequests
	sigBytes
	numSignals
)

var signalNames = [numSignals]string{"connections", "requests", "bytes"}

// inputSignals maps the agents' metric names to the signal they feed.
// lbpath.bytes carries both directions; a pod's share counts the sum.
var inputSignals = map[string]int{
	"lbpath.connections": sigConnections,
	"lbpath.requests":    sigRequests,
	"lbpath.bytes":       sigBytes,
}

// readyMetric is the cluster receiver's gauge: one point (value 1) per ready
// endpoint of a Service per transport, every collection interval.
const readyMetric = "lbpath.service.endpoint.ready"

// Eviction reasons, reported as lbpath.reason on lbpath.lb.evictions.
const (
	evictServiceLimit = iota
	evictPodLimit
	evictStreamLimit
	evictStaleService
	evictStalePod
	evictStaleStream
	evictEndpointLimit
	evictStaleEndpoints
	numReasons
)

var reasonNames = [numReasons]string{"service_limit", "pod_limit", "stream_limit", "stale_service", "stale_pod", "stale_stream", "endpoint_limit", "stale_endpoints"}

// Attribute keys shared with the agents' metrics, so computed series join
// with the raw ones in PromQL without relabelling.
const (
	attrNamespace = "k8s.namespace.name"
	attrService   = "k8s.service.name"
	attrPod       = "k8s.pod.name"
	attrNode      = "k8s.node.name"
	attrSignal    = "lbpath.signal"
	attrReason    = "lbpath.reason"
	selfService   = "lbpath-collector"
)

type svcKey struct{ namespace, name string }

type slot struct {
	epoch int64
	v     [numSignals]float64
}

type pod struct {
	name, node string
	lastSeen   pcommon.Timestamp
	slots      []slot
	hot        bool
}

// readySet is a Service's ready endpoints as reported by the
// lbpath.service.endpoint.ready gauge; at is its newest point's timestamp.
//
// The receiver reports every ready endpoint of every Service at once, all
// points with one timestamp, at least a second apart. So an endpoint is
// current only if it was in the latest report (p.readyAt, over all
// Services, within readySlack): one missing from it is no longer ready, and
// a Service missing from it has no ready endpoint at all.
type readySet struct {
	key  svcKey
	at   pcommon.Timestamp
	pods map[string]*readyPod
}

type readyPod struct {
	pod  pod // name, node and hot state; never has traffic slots
	seen pcommon.Timestamp
}

type service struct {
	key            svcKey
	created        pcommon.Timestamp
	lastSeen       pcommon.Timestamp
	pods           map[string]*pod
	hotTransitions uint64
	touchedGen     uint64
	evicted        bool
}

// imbalance is the lbimbalance processor. It keeps, per Service, a ring of
// window/bucket slots per pod holding the deltas of connections, requests
// and bytes, and on every batch recomputes the shares of the Services that
// batch touched.
//
// Time is the data's, not the wall clock's: the window ends at the newest
// data-point timestamp seen. Replays and tests are then deterministic, and a
// collector that falls behind still attributes traffic to the right bucket.
//
// A pod turning hot is reported as an edge, not a level: the per-service
// counter lbpath.lb.hot_transitions increments and an Info log record is
// written through the collector's logger. We do not emit a plog.LogRecord
// from here because a metrics processor has only a metrics consumer; doing
// so would need a connector and a second pipeline for one event type,
// whereas the collector's own logs can already be shipped over OTLP with
// service::telemetry::logs::processors, and the counter makes the event
// queryable (increase(...) > 0) next to the shares.
type imbalance struct {
	cfg      *Config
	logger   *zap.Logger
	bucketNs int64
	nBuckets int64

	mu        sync.Mutex
	hasher    streams.Hasher
	tracker   *streams.Tracker
	services  map[svcKey]*service
	ready     map[svcKey]*readySet
	readyAt   pcommon.Timestamp // newest ready-endpoint report
	now       pcommon.Timestamp // newest data-point timestamp seen
	start     pcommon.Timestamp // first data-point timestamp: start of the self counters
	lastSweep pcommon.Timestamp
	evicted   [numReasons]uint64
	gen       uint64
	touched   []*service

	// scratch reused across batches to keep the hot path allocation-free
	podSums  []podSum
	nodeSums map[string]*[numSignals]float64
}

type podSum struct {
	p *pod
	v [numSignals]float64
}

func newImbalance(cfg *Config, logger *zap.Logger) *imbalance {
	return &imbalance{
		cfg:      cfg,
		logger:   logger,
		bucketNs: int64(cfg.Bucket),
		nBuckets: int64(cfg.Window / cfg.Bucket),
		tracker:  streams.NewTracker(cfg.MaxStreams, pcommon.Timestamp(cfg.Window)),
		services: make(map[svcKey]*service),
		ready:    make(map[svcKey]*readySet),
		nodeSums: make(map[string]*[numSignals]float64),
	}
}

func (p *imbalance) processMetrics(_ context.Context, md pmetric.Metrics) (pmetric.Metrics, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.touched = p.touched[:0]

	rms := md.ResourceMetrics()
	for i := 0; i < rms.Len(); i++ {
		rm := rms.At(i)
		res := rm.Resource().Attributes()
		if v, ok := res.Get("service.name"); ok && v.Str() == selfService {
			// The collector's own: the cluster receiver's ready endpoints,
			// and our output if a pipeline feeds it back (ignored).
			p.observeReadyIn(rm, res)
			continue
		}
		var resHash uint64
		hashed := false
		sms := rm.ScopeMetrics()
		for j := 0; j < sms.Len(); j++ {
			ms := sms.At(j).Metrics()
			for k := 0; k < ms.Len(); k++ {
				m := ms.At(k)
				if m.Name() == readyMetric && m.Type() == pmetric.MetricTypeGauge {
					p.observeReadyPoints(m.Gauge().DataPoints(), res)
					continue
				}
				sig, ok := inputSignals[m.Name()]
				if !ok || m.Type() != pmetric.MetricTypeSum {
					continue
				}
				if !hashed {
					resHash, hashed = p.hasher.Attributes(res), true
					p.tracker.Source(resHash)
				}
				p.observeSum(m.Name(), sig, m.Sum(), res, resHash)
			}
		}
	}
	if p.now-p.lastSweep >= pcommon.Timestamp(p.bucketNs) {
		p.sweep()
	}
	if len(p.touched) > 0 {
		p.emit(md)
	}
	return md, nil
}

// observeReadyIn records the ready-endpoint gauge points of rm. They do not
// trigger a recomputation: a Service's figures change with its traffic,
// and the next agents' batch picks the endpoints up.
func (p *imbalance) observeReadyIn(rm pmetric.ResourceMetrics, res pcommon.Map) {
	sms := rm.ScopeMetrics()
	for j := 0; j < sms.Len(); j++ {
		ms := sms.At(j).Metrics()
		for k := 0; k < ms.Len(); k++ {
			m := ms.At(k)
			if m.Name() == readyMetric && m.Type() == pmetric.MetricTypeGauge {
				p.observeReadyPoints(m.Gauge().DataPoints(), res)
			}
		}
	}
}

func (p *imbalance) observeReadyPoints(dps pmetric.NumberDataPointSlice, res pcommon.Map) {
	for i := 0; i < dps.Len(); i++ {
		p.observeReady(dps.At(i), res)
	}
}

func (p *imbalance) observeReady(dp pmetric.NumberDataPoint, res pcommon.Map) {
	attrs := dp.Attributes()
	ts := dp.Timestamp()
	v := dp.DoubleValue()
	if dp.ValueType() == pmetric.NumberDataPointValueTypeInt {
		v = float64(dp.IntValue())
	}
	if ts == 0 || v < 1 {
		return // only ready endpoints are reported with 1
	}
	ns := streams.Attr(attrs, res, attrNamespace)
	svcName := streams.Attr(attrs, res, attrService)
	podName := streams.Attr(attrs, res, attrPod)
	if ns == "" || svcName == "" || podName == "" {
		return
	}
	rs := p.ready[svcKey{ns, svcName}]
	if rs == nil {
		if len(p.ready) >= p.cfg.MaxServices {
			p.evicted[evictEndpointLimit] += uint64(streams.EvictOldest(p.ready, streams.EvictionBatch(p.cfg.MaxServices),
				func(rs *readySet) pcommon.Timestamp { return rs.at }, nil))
		}
		rs = &readySet{key: svcKey{strings.Clone(ns), strings.Clone(svcName)}, pods: make(map[string]*readyPod)}
		p.ready[rs.key] = rs
	}
	if ts > rs.at {
		rs.at = ts
	}
	if ts > p.readyAt {
		p.readyAt = ts
	}
	rp := rs.pods[podName]
	if rp == nil {
		if len(rs.pods) >= p.cfg.MaxPodsPerService {
			p.evicted[evictEndpointLimit] += uint64(streams.EvictOldest(rs.pods, streams.EvictionBatch(p.cfg.MaxPodsPerService),
				func(rp *readyPod) pcommon.Timestamp { return rp.seen }, nil))
		}
		rp = &readyPod{pod: pod{name: strings.Clone(podName)}}
		rs.pods[rp.pod.name] = rp
	}
	if ts > rp.seen {
		rp.seen = ts
	}
	if node := streams.Attr(attrs, res, attrNode); node != "" && node != rp.pod.node {
		rp.pod.node = strings.Clone(node)
	}
}

// readySlack is how far apart the points of one report may be.
const readySlack = pcommon.Timestamp(time.Second)

// readyFor returns s's ready endpoints, or nil when the gauge has not
// reported the Service within stale_after (no receiver, or none for this
// cluster): then only pods with traffic are known.
func (p *imbalance) readyFor(s *service) *readySet {
	rs := p.ready[s.key]
	if rs == nil || p.now > p.readyAt+pcommon.Timestamp(p.cfg.StaleAfter) {
		return nil
	}
	return rs
}

// current reports whether rp was in the latest report.
func (p *imbalance) current(rp *readyPod) bool {
	return rp.seen+readySlack >= p.readyAt
}

func (p *imbalance) observeSum(name string, sig int, sum pmetric.Sum, res pcommon.Map, resHash uint64) {
	cumulative := sum.AggregationTemporality() == pmetric.AggregationTemporalityCumulative
	dps := sum.DataPoints()
	for i := 0; i < dps.Len(); i++ {
		dp := dps.At(i)
		attrs := dp.Attributes()
		ts := dp.Timestamp()
		if ts == 0 || !streams.ServerSide(attrs, res) {
			continue
		}
		ns := streams.Attr(attrs, res, attrNamespace)
		svcName := streams.Attr(attrs, res, attrService)
		podName := streams.Attr(attrs, res, attrPod)
		if ns == "" || svcName == "" || podName == "" {
			continue
		}
		var value float64
		switch dp.ValueType() {
		case pmetric.NumberDataPointValueTypeInt:
			value = float64(dp.IntValue())
		case pmetric.NumberDataPointValueTypeDouble:
			value = dp.DoubleValue()
		default:
			continue
		}
		delta, counted := value, true
		if cumulative {
			var r streams.Result
			delta, r = p.tracker.Sum(p.hasher.Stream(resHash, name, attrs), dp.StartTimestamp(), ts, value)
			counted = r == streams.Delta
		}
		if p.start == 0 {
			p.start = ts
		}
		if ts > p.now {
			p.now = ts
		}
		s := p.service(svcKey{ns, svcName}, ts)
		pd := p.pod(s, podName, ts)
		if node := streams.Attr(attrs, res, attrNode); node != "" && node != pd.node {
			pd.node = strings.Clone(node)
		}
		if counted && delta > 0 {
			p.add(pd, ts, sig, delta)
		}
	}
}

func (p *imbalance) epoch(ts pcommon.Timestamp) int64 { return int64(ts) / p.bucketNs }

// add attributes delta to the bucket of ts, unless that bucket has already
// left the window.
func (p *imbalance) add(pd *pod, ts pcommon.Timestamp, sig int, delta float64) {
	e := p.epoch(ts)
	if e <= p.epoch(p.now)-p.nBuckets {
		return
	}
	sl := &pd.slots[e%p.nBuckets]
	switch {
	case sl.epoch == e:
	case sl.epoch < e:
		*sl = slot{epoch: e}
	default:
		return // the ring already moved past this bucket
	}
	sl.v[sig] += delta
}

func (p *imbalance) service(k svcKey, ts pcommon.Timestamp) *service {
	s, ok := p.services[k]
	if !ok {
		if len(p.services) >= p.cfg.MaxServices {
			p.evicted[evictServiceLimit] += uint64(streams.EvictOldest(p.services, streams.EvictionBatch(p.cfg.MaxServices),
				func(s *service) pcommon.Timestamp { return s.lastSeen },
				// a service evicted mid-batch may already be in p.touched
				func(s *service) { s.evicted = true }))
		}
		s = &service{
			key:     svcKey{strings.Clone(k.namespace), strings.Clone(k.name)},
			created: ts,
			pods:    make(map[string]*pod),
		}
		p.services[s.key] = s
	}
	if ts > s.lastSeen {
		s.lastSeen = ts
	}
	if s.touchedGen != p.gen {
		s.touchedGen = p.gen
		p.touched = append(p.touched, s)
	}
	return s
}

func (p *imbalance) pod(s *service, name string, ts pcommon.Timestamp) *pod {
	pd, ok := s.pods[name]
	if !ok {
		if len(s.pods) >= p.cfg.MaxPodsPerService {
			p.evicted[evictPodLimit] += uint64(streams.EvictOldest(s.pods, streams.EvictionBatch(p.cfg.MaxPodsPerService),
				func(pd *pod) pcommon.Timestamp { return pd.lastSeen }, nil))
		}
		pd = &pod{name: strings.Clone(name), slots: make([]slot, p.nBuckets)}
		s.pods[pd.name] = pd
	}
	if ts > pd.lastSeen {
		pd.lastSeen = ts
	}
	return pd
}

// sweep drops streams, pods and services that stopped reporting.
func (p *imbalance) sweep() {
	p.lastSweep = p.now
	if p.now <= pcommon.Timestamp(p.cfg.StaleAfter) {
		return
	}
	cutoff := p.now - pcommon.Timestamp(p.cfg.StaleAfter)
	before := p.tracker.EvictedStale
	p.tracker.Sweep(cutoff)
	p.evicted[evictStaleStream] += p.tracker.EvictedStale - before
	for k, s := range p.services {
		for name, pd := range s.pods {
			if pd.lastSeen < cutoff {
				delete(s.pods, name)
				p.evicted[evictStalePod]++
			}
		}
		if len(s.pods) == 0 || s.lastSeen < cutoff {
			s.evicted = true
			delete(p.services, k)
			p.evicted[evictStaleService]++
		}
	}
	for k, rs := range p.ready {
		if rs.at < cutoff {
			delete(p.ready, k)
			p.evicted[evictStaleEndpoints]++
			continue
		}
		for name, rp := range rs.pods {
			if !p.current(rp) {
				delete(rs.pods, name) // no longer ready: not an eviction
			}
		}
	}
}

// stats are one Service's figures over the window for one signal.
type stats struct {
	total, max, mean, cv float64
}

func computeStats(sums []podSum, sig int) stats {
	var st stats
	n := float64(len(sums))
	for _, ps := range sums {
		x := ps.v[sig]
		st.total += x
		st.max = math.Max(st.max, x)
	}
	st.mean = st.total / n
	if st.mean == 0 {
		return st
	}
	var ss float64
	for _, ps := range sums {
		d := ps.v[sig] - st.mean
		ss += d * d
	}
	// Population stddev: the pods in the window are the whole population
	// the balancer chose from, not a sample of it.
	st.cv = math.Sqrt(ss/n) / st.mean
	return st
}

// windowSums fills p.podSums with the window totals of each pod that
// reported within the window, and returns them.
func (p *imbalance) windowSums(s *service) []podSum {
	nowE := p.epoch(p.now)
	lo := nowE - p.nBuckets // exclusive
	sums := p.podSums[:0]
	for _, pd := range s.pods {
		if p.epoch(pd.lastSeen) <= lo {
			continue
		}
		ps := podSum{p: pd}
		for _, sl := range pd.slots {
			if sl.epoch > lo && sl.epoch <= nowE {
				for i := range numSignals {
					ps.v[i] += sl.v[i]
				}
			}
		}
		sums = append(sums, ps)
	}
	p.podSums = sums
	return sums
}

// addIdle appends s's current ready endpoints that have no traffic in the
// window to sums, with zero traffic, and returns sums and how many it
// added. A ready endpoint is part of the population the balancer chooses
// from whether or not it got anything; pods with traffic that are not
// (or no longer) listed as ready are already in sums and stay.
func (p *imbalance) addIdle(s *service, sums []podSum, rs *readySet) ([]podSum, int) {
	lo := p.epoch(p.now) - p.nBuckets
	idle := 0
	for name, rp := range rs.pods {
		if !p.current(rp) {
			continue
		}
		if pd, ok := s.pods[name]; ok && p.epoch(pd.lastSeen) > lo {
			if pd.node == "" {
				pd.node = rp.pod.node
			}
			continue
		}
		sums = append(sums, podSum{p: &rp.pod})
		idle++
	}
	p.podSums = sums
	return sums, idle
}

type output struct {
	share, maxMean, cv, hot, nodeShare, pods, idle, transitions, evictions pmetric.NumberDataPointSlice
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

// emit appends one ResourceMetrics with the computed figures for every
// Service touched by this batch.
func (p *imbalance) emit(md pmetric.Metrics) {
	rm := md.ResourceMetrics().AppendEmpty()
	rm.Resource().Attributes().PutStr("service.name", selfService)
	sm := rm.ScopeMetrics().AppendEmpty()
	sm.Scope().SetName(scopeName)
	ms := sm.Metrics()
	out := output{
		share:       newGauge(ms, "lbpath.lb.share", "1", "Fraction of the Service's traffic in the window that went to this pod."),
		maxMean:     newGauge(ms, "lbpath.lb.max_mean_ratio", "1", "Busiest pod's traffic divided by the mean over the Service's pods."),
		cv:          newGauge(ms, "lbpath.lb.cv", "1", "Coefficient of variation (stddev/mean) of per-pod traffic."),
		hot:         newGauge(ms, "lbpath.lb.hot", "", "1 when the pod's connection share exceeds hot_factor times the fair share."),
		nodeShare:   newGauge(ms, "lbpath.lb.node_share", "1", "Fraction of the Service's traffic served by pods on this node."),
		pods:        newGauge(ms, "lbpath.lb.pods", "{pod}", "Pods of the Service in the window: those with traffic and the ready endpoints without."),
		idle:        newGauge(ms, "lbpath.lb.idle_pods", "{pod}", "Ready endpoints of the Service without traffic in the window; absent when lbpath.service.endpoint.ready does not report the Service."),
		transitions: newCounter(ms, "lbpath.lb.hot_transitions", "{transition}", "Times a pod of the Service turned hot."),
		evictions:   newCounter(ms, "lbpath.lb.evictions", "{entry}", "State entries dropped by the processor's bounds or staleness."),
	}
	now := p.now
	for _, s := range p.touched {
		if s.evicted {
			continue
		}
		p.emitService(&out, s, now)
	}
	streamLimit := p.tracker.EvictedCapacity
	for r := range numReasons {
		v := p.evicted[r]
		if r == evictStreamLimit {
			v = streamLimit
		}
		dp := out.evictions.AppendEmpty()
		dp.SetStartTimestamp(p.start)
		dp.SetTimestamp(now)
		dp.SetIntValue(int64(v))
		dp.Attributes().PutStr(attrReason, reasonNames[r])
	}
}

func putSvc(m pcommon.Map, s *service) {
	m.PutStr(attrNamespace, s.key.namespace)
	m.PutStr(attrService, s.key.name)
}

func (p *imbalance) emitService(out *output, s *service, now pcommon.Timestamp) {
	sums := p.windowSums(s)
	if len(sums) == 0 {
		return
	}
	traffic := len(sums)
	rs := p.readyFor(s)
	idle := 0
	if rs != nil {
		sums, idle = p.addIdle(s, sums, rs)
	}
	n := len(sums)
	var st [numSignals]stats
	for sig := range numSignals {
		st[sig] = computeStats(sums, sig)
	}
	point := func(dst pmetric.NumberDataPointSlice, v float64) pcommon.Map {
		dp := dst.AppendEmpty()
		dp.SetTimestamp(now)
		dp.SetDoubleValue(v)
		a := dp.Attributes()
		a.EnsureCapacity(5) // namespace, service, pod, node, signal: one allocation
		return a
	}

	a := point(out.pods, float64(n))
	putSvc(a, s)
	if rs != nil {
		a = point(out.idle, float64(idle))
		putSvc(a, s)
	}
	for sig := range numSignals {
		if st[sig].total <= 0 {
			continue // e.g. no HTTP on a TCP service: no share to speak of
		}
		a = point(out.maxMean, st[sig].max/st[sig].mean)
		putSvc(a, s)
		a.PutStr(attrSignal, signalNames[sig])
		a = point(out.cv, st[sig].cv)
		putSvc(a, s)
		a.PutStr(attrSignal, signalNames[sig])
	}

	clear(p.nodeSums)
	fair := 1 / float64(n)
	conns := st[sigConnections]
	enough := conns.total > 0 && conns.total >= float64(p.cfg.MinConnections)
	for _, ps := range sums {
		pd := ps.p
		for sig := range numSignals {
			if st[sig].total <= 0 {
				continue
			}
			a = point(out.share, ps.v[sig]/st[sig].total)
			putSvc(a, s)
			a.PutStr(attrPod, pd.name)
			a.PutStr(attrNode, pd.node)
			a.PutStr(attrSignal, signalNames[sig])
		}
		ns := p.nodeSums[pd.node]
		if ns == nil {
			ns = new([numSignals]float64)
			p.nodeSums[pd.node] = ns
		}
		for sig := range numSignals {
			ns[sig] += ps.v[sig]
		}

		share := 0.0
		if conns.total > 0 {
			share = ps.v[sigConnections] / conns.total
		}
		hot := enough && share > p.cfg.HotFactor*fair
		if hot && !pd.hot {
			s.hotTransitions++
			p.logger.Info("pod turned hot",
				zap.String(attrNamespace, s.key.namespace),
				zap.String(attrService, s.key.name),
				zap.String(attrPod, pd.name),
				zap.String(attrNode, pd.node),
				zap.Float64("share", share),
				zap.Float64("fair_share", fair),
				zap.Float64("connections", conns.total),
				zap.Int("pods", n))
		}
		pd.hot = hot
		v := 0.0
		if hot {
			v = 1
		}
		a = point(out.hot, v)
		putSvc(a, s)
		a.PutStr(attrPod, pd.name)
		a.PutStr(attrNode, pd.node)
	}
	for node, v := range p.nodeSums {
		for sig := range numSignals {
			if st[sig].total <= 0 {
				continue
			}
			a = point(out.nodeShare, v[sig]/st[sig].total)
			putSvc(a, s)
			a.PutStr(attrNode, node)
			a.PutStr(attrSignal, signalNames[sig])
		}
	}
	// Pods that left the window are no longer hot; reset so that their
	// return counts as a new transition.
	if len(s.pods) != traffic {
		lo := p.epoch(now) - p.nBuckets
		for _, pd := range s.pods {
			if p.epoch(pd.lastSeen) <= lo {
				pd.hot = false
			}
		}
	}

	dp := out.transitions.AppendEmpty()
	dp.SetStartTimestamp(s.created)
	dp.SetTimestamp(now)
	dp.SetIntValue(int64(s.hotTransitions))
	putSvc(dp.Attributes(), s)
}
