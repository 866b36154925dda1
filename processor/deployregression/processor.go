package deployregression

import (
	"context"
	"math"
	"strings"
	"sync"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.uber.org/zap"

	"github.com/lbpath/lbpath/processor/internal/streams"
)

const (
	inputMetric   = "lbpath.request.duration"
	attrNamespace = "k8s.namespace.name"
	attrDeploy    = "k8s.deployment.name"
	attrHash      = "lbpath.pod_template_hash"
	attrRS        = "k8s.replicaset.name"
	attrRevision  = "lbpath.revision"
	attrQuantile  = "lbpath.quantile"
	attrReason    = "lbpath.reason"
	selfService   = "lbpath-collector"
)

// Eviction and rejection reasons, reported as lbpath.reason.
const (
	evictDeploymentLimit = iota
	evictRevisionLimit
	evictStreamLimit
	evictStaleDeployment
	evictStaleRevision
	evictStaleStream
	numReasons
)

var reasonNames = [numReasons]string{"deployment_limit", "revision_limit", "stream_limit", "stale_deployment", "stale_revision", "stale_stream"}

var quantiles = [...]struct {
	name string
	q    float64
}{{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}}

type depKey struct{ namespace, name string }

// hslot holds one resolution-long slice of a revision's latency histogram,
// in its deployment's layout.
type hslot struct {
	epoch int64
	used  bool
	h     streams.ExpBuckets
}

type revision struct {
	hash            string
	first, lastSeen pcommon.Timestamp
	slots           []hslot
}

// rollout is the latest deploy detected for a deployment and the state of
// its comparison.
type rollout struct {
	at         pcommon.Timestamp // first timestamp of the new revision
	to, from   string            // new revision; baseline revision (chosen at evaluation)
	final      bool              // the after window has closed
	regression bool
	eval       evaluation
}

type evaluation struct {
	before, after, current streams.ExpBuckets
	tested                 bool
	p                      float64
}

type deployment struct {
	key         depKey
	created     pcommon.Timestamp
	lastSeen    pcommon.Timestamp
	layout      layout
	revisions   map[string]*revision
	rollout     *rollout
	rollouts    uint64
	regressions uint64
	touchedGen  uint64
	evicted     bool
}

// regression is the deployregression processor.
//
// Per Deployment it keeps each revision's request-latency histogram as a
// ring of resolution-long slots of bucket-count deltas. A revision hash that
// appears after the deployment has been tracked for at least one resolution
// is a rollout, dated by the revision's earliest data point. The new
// revision's histogram over [deploy, deploy+after] is then compared with the
// dominant previous revision's over [deploy-before, deploy) using Pearson's
// chi-square test of homogeneity on the bucket counts (buckets merged until
// every expected count is ≥ 5). We chose it over Mann-Whitney U because it
// uses the buckets exactly as measured, with no midpoint assumption, and
// it is sensitive to tail-only regressions (a slow 10% of requests) that
// barely move a rank statistic. The test is not directional, so a rollout
// counts as a regression only if p < alpha AND p90 rose by more than
// min_increase (relative) and by more than min_increase_abs (absolute: fine
// exponential buckets make sub-millisecond shifts significant). The verdict
// is recomputed on every batch until the after window closes; early verdicts are provisional and may flip (the repeated
// looks raise the false-positive rate above alpha — min_samples and the
// p90 gate keep that in check), the verdict at window close is final.
//
// Rollouts and regressions are reported as edges through counters
// (lbpath.deploy.rollouts, lbpath.deploy.regressions) and as log records on
// the collector's logger, for the reason given on the lbimbalance
// processor: a metrics processor has no logs consumer, and the collector's
// own logs can be exported over OTLP.
//
// Time is the data's: "now" is the newest data-point timestamp seen.
type regression struct {
	cfg    *Config
	logger *zap.Logger
	resNs  int64
	nSlots int64

	mu          sync.Mutex
	hasher      streams.Hasher
	tracker     *streams.Tracker
	deployments map[depKey]*deployment
	now         pcommon.Timestamp
	start       pcommon.Timestamp
	lastSweep   pcommon.Timestamp
	evicted     [numReasons]uint64
	rejected    uint64 // points whose bucket bounds differ from the deployment's
	mismatched  uint64 // points of the other histogram kind than the deployment's
	gen         uint64
	touched     []*deployment
	scratch     []uint64
	delta       streams.ExpBuckets
}

func newRegression(cfg *Config, logger *zap.Logger) *regression {
	return &regression{
		cfg:    cfg,
		logger: logger,
		resNs:  int64(cfg.Resolution),
		// the old revision's baseline must survive until the new one's
		// after window closes: before+after, plus the partial slots at
		// either end
		nSlots:      int64((cfg.Before+cfg.After)/cfg.Resolution) + 2,
		tracker:     streams.NewTracker(cfg.MaxStreams, pcommon.Timestamp(cfg.After)),
		deployments: make(map[depKey]*deployment),
	}
}

func (p *regression) epoch(ts pcommon.Timestamp) int64 { return int64(ts) / p.resNs }

func (p *regression) processMetrics(_ context.Context, md pmetric.Metrics) (pmetric.Metrics, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.touched = p.touched[:0]

	rms := md.ResourceMetrics()
	for i := 0; i < rms.Len(); i++ {
		rm := rms.At(i)
		res := rm.Resource().Attributes()
		if v, ok := res.Get("service.name"); ok && v.Str() == selfService {
			continue
		}
		var resHash uint64
		hashed := false
		sms := rm.ScopeMetrics()
		for j := 0; j < sms.Len(); j++ {
			ms := sms.At(j).Metrics()
			for k := 0; k < ms.Len(); k++ {
				m := ms.At(k)
				if m.Name() != inputMetric || (m.Type() != pmetric.MetricTypeHistogram && m.Type() != pmetric.MetricTypeExponentialHistogram) {
					continue
				}
				if !hashed {
					resHash, hashed = p.hasher.Attributes(res), true
					p.tracker.Source(resHash)
				}
				if m.Type() == pmetric.MetricTypeHistogram {
					p.observe(m.Histogram(), res, resHash)
				} else {
					p.observeExp(m.ExponentialHistogram(), res, resHash)
				}
			}
		}
	}
	if p.now-p.lastSweep >= pcommon.Timestamp(p.resNs) {
		p.sweep()
	}
	if len(p.touched) > 0 {
		p.emit(md)
	}
	return md, nil
}

// identity names the deployment and revision a point belongs to; ok is
// false for points that cannot be attributed (or are not the pod's side).
func identity(attrs, res pcommon.Map) (k depKey, hash string, ok bool) {
	if !streams.ServerSide(attrs, res) {
		return k, "", false
	}
	k = depKey{streams.Attr(attrs, res, attrNamespace), streams.Attr(attrs, res, attrDeploy)}
	hash = streams.Attr(attrs, res, attrHash)
	if hash == "" {
		hash = streams.Attr(attrs, res, attrRS)
	}
	return k, hash, k.namespace != "" && k.name != "" && hash != ""
}

func (p *regression) observe(h pmetric.Histogram, res pcommon.Map, resHash uint64) {
	cumulative := h.AggregationTemporality() == pmetric.AggregationTemporalityCumulative
	dps := h.DataPoints()
	for i := 0; i < dps.Len(); i++ {
		dp := dps.At(i)
		attrs := dp.Attributes()
		ts := dp.Timestamp()
		if ts == 0 || !explicitPoint(dp) {
			continue
		}
		k, hash, ok := identity(attrs, res)
		if !ok {
			continue
		}
		d := p.deployments[k]
		if d != nil && d.layout.exp {
			p.mismatched++
			continue
		}
		if d != nil && !sameBounds(d.layout.bounds, dp.ExplicitBounds()) {
			// Mixed bucket layouts cannot be merged. The deployment keeps
			// its first layout; if the agents' layout changed for good, the
			// deployment expires after retention (rejected points do not
			// refresh it) and restarts with the new one.
			p.rejected++
			continue
		}
		counts := dp.BucketCounts()
		counted := true
		if cumulative {
			var r streams.Result
			p.scratch, r = p.tracker.Histogram(p.hasher.Stream(resHash, inputMetric, attrs), dp.StartTimestamp(), ts, dp.Count(), counts, p.scratch)
			counted = r == streams.Delta
		} else {
			p.scratch = append(p.scratch[:0], counts.AsRaw()...)
		}
		p.delta = streams.ExpBuckets{Counts: p.scratch}
		if d == nil {
			d = p.newDeployment(k, layout{bounds: dp.ExplicitBounds().AsRaw()}, ts)
		}
		p.record(d, hash, ts, counted)
	}
}

// observeExp takes base-2 exponential histogram points (the agents'
// default). Only the positive side and the zero bucket are kept: latencies
// are never negative.
func (p *regression) observeExp(h pmetric.ExponentialHistogram, res pcommon.Map, resHash uint64) {
	cumulative := h.AggregationTemporality() == pmetric.AggregationTemporalityCumulative
	dps := h.DataPoints()
	for i := 0; i < dps.Len(); i++ {
		dp := dps.At(i)
		attrs := dp.Attributes()
		ts := dp.Timestamp()
		if ts == 0 {
			continue
		}
		k, hash, ok := identity(attrs, res)
		if !ok {
			continue
		}
		d := p.deployments[k]
		if d != nil && !d.layout.exp {
			p.mismatched++
			continue
		}
		counted := true
		if cumulative {
			counted = p.tracker.ExpHistogram(p.hasher.Stream(resHash, inputMetric, attrs), dp.StartTimestamp(), ts, dp, &p.delta) == streams.Delta
		} else {
			p.delta.CopyFrom(dp)
		}
		if d == nil {
			d = p.newDeployment(k, layout{exp: true, scale: p.delta.Scale}, ts)
		}
		if p.delta.Scale < d.layout.scale {
			d.downscale(p.delta.Scale)
		}
		p.delta.Downscale(d.layout.scale)
		p.record(d, hash, ts, counted)
	}
}

// downscale lowers every stored histogram of d to scale.
func (d *deployment) downscale(scale int32) {
	d.layout.scale = scale
	for _, rev := range d.revisions {
		for i := range rev.slots {
			rev.slots[i].h.Downscale(scale)
		}
	}
}

// record adds p.delta, the point's increase in d's layout, to the revision
// hash at ts (when counted: a baseline point only creates the revision).
func (p *regression) record(d *deployment, hash string, ts pcommon.Timestamp, counted bool) {
	if p.start == 0 {
		p.start = ts
	}
	if ts > p.now {
		p.now = ts
	}
	if ts > d.lastSeen {
		d.lastSeen = ts
	}
	if d.touchedGen != p.gen {
		d.touchedGen = p.gen
		p.touched = append(p.touched, d)
	}
	rev := p.revision(d, hash, ts)
	if counted {
		p.add(rev, ts, &p.delta)
	}
}

func sameBounds(have []float64, got pcommon.Float64Slice) bool {
	if len(have) != got.Len() {
		return false
	}
	for i, b := range have {
		if got.At(i) != b {
			return false
		}
	}
	return true
}

func (p *regression) newDeployment(k depKey, l layout, ts pcommon.Timestamp) *deployment {
	if len(p.deployments) >= p.cfg.MaxDeployments {
		p.evicted[evictDeploymentLimit] += uint64(streams.EvictOldest(p.deployments, streams.EvictionBatch(p.cfg.MaxDeployments),
			func(d *deployment) pcommon.Timestamp { return d.lastSeen },
			func(d *deployment) { d.evicted = true }))
	}
	d := &deployment{
		key:       depKey{strings.Clone(k.namespace), strings.Clone(k.name)},
		created:   ts,
		layout:    l,
		revisions: make(map[string]*revision),
	}
	p.deployments[d.key] = d
	return d
}

// revision returns the deployment's revision for hash, creating it and
// recording a rollout if it is new.
func (p *regression) revision(d *deployment, hash string, ts pcommon.Timestamp) *revision {
	rev, ok := d.revisions[hash]
	if ok {
		if ts < rev.first {
			// an agent's earlier point arrived late: the deploy began sooner
			rev.first = ts
			if d.rollout != nil && d.rollout.to == hash && ts < d.rollout.at {
				d.rollout.at = ts
			}
		}
		if ts > rev.lastSeen {
			rev.lastSeen = ts
		}
		return rev
	}
	if len(d.revisions) >= p.cfg.MaxRevisions {
		p.evicted[evictRevisionLimit] += uint64(streams.EvictOldest(d.revisions, 1,
			func(r *revision) pcommon.Timestamp { return r.lastSeen }, nil))
	}
	rev = &revision{hash: strings.Clone(hash), first: ts, lastSeen: ts, slots: make([]hslot, p.nSlots)}
	// Revisions that show up in the deployment's first resolution are what
	// was already running when the collector started (agents report within
	// one export interval of each other), not a rollout.
	if len(d.revisions) > 0 && ts >= d.created+pcommon.Timestamp(p.resNs) {
		d.rollout = &rollout{at: ts, to: rev.hash}
		d.rollouts++
		p.logger.Info("rollout detected",
			zap.String(attrNamespace, d.key.namespace),
			zap.String(attrDeploy, d.key.name),
			zap.String(attrHash, rev.hash),
			zap.Time("deploy_time", ts.AsTime()))
	}
	d.revisions[rev.hash] = rev
	return rev
}

func (p *regression) add(rev *revision, ts pcommon.Timestamp, delta *streams.ExpBuckets) {
	e := p.epoch(ts)
	if e <= p.epoch(p.now)-p.nSlots {
		return
	}
	sl := &rev.slots[e%p.nSlots]
	switch {
	case sl.epoch == e && sl.used:
	case sl.epoch <= e:
		sl.epoch, sl.used = e, true
		sl.h.Reset(delta.Scale)
	default:
		return // the ring already moved past this slot
	}
	addInto(&sl.h, delta)
}

// merge sums rev's slots with lo ≤ epoch ≤ hi into dst.
func merge(dst *streams.ExpBuckets, rev *revision, lo, hi int64) {
	for i := range rev.slots {
		sl := &rev.slots[i]
		if !sl.used || sl.epoch < lo || sl.epoch > hi {
			continue
		}
		addInto(dst, &sl.h)
	}
}

// evaluate recomputes the comparison of d's latest rollout.
func (p *regression) evaluate(d *deployment) {
	r := d.rollout
	newRev := d.revisions[r.to]
	if newRev == nil {
		r.final = true // the new revision was evicted; keep the last verdict
		return
	}
	atE := p.epoch(r.at)
	beforeLo := p.epoch(r.at - pcommon.Timestamp(p.cfg.Before))
	afterHi := p.epoch(r.at + pcommon.Timestamp(p.cfg.After))
	nowE := p.epoch(p.now)
	curLo := nowE - int64(p.cfg.CurrentWindow/p.cfg.Resolution) + 1

	var current streams.ExpBuckets
	merge(&current, newRev, curLo, nowE)
	if r.final {
		// The comparison is frozen (its slots may since have been reused);
		// only the current window moves.
		r.eval.current = current
		return
	}
	ev := evaluation{current: current}
	merge(&ev.after, newRev, atE, afterHi)
	// The baseline is whichever other revision served most in the before
	// window: with several old ReplicaSets around, the one that was live.
	var best uint64
	for _, rev := range d.revisions {
		if rev == newRev {
			continue
		}
		var h streams.ExpBuckets
		merge(&h, rev, beforeLo, atE-1)
		if n := h.Total(); n > best {
			best, ev.before, r.from = n, h, rev.hash
		}
	}
	r.eval = ev
	if ev.before.Total() >= uint64(p.cfg.MinSamples) && ev.after.Total() >= uint64(p.cfg.MinSamples) {
		_, _, pv := chiSquareHomogeneity(d.layout.aligned(&ev.before, &ev.after))
		p90b := d.layout.quantile(0.9, &ev.before)
		p90a := d.layout.quantile(0.9, &ev.after)
		reg := pv < p.cfg.Alpha && p90b > 0 && p90a/p90b-1 > p.cfg.MinIncrease && p90a-p90b > p.cfg.MinIncreaseAbs.Seconds()
		r.eval.tested, r.eval.p = true, pv
		if reg && !r.regression {
			d.regressions++
			p.logger.Warn("latency regression after rollout",
				zap.String(attrNamespace, d.key.namespace),
				zap.String(attrDeploy, d.key.name),
				zap.String("from", r.from),
				zap.String("to", r.to),
				zap.Float64("p90_before", p90b),
				zap.Float64("p90_after", p90a),
				zap.Float64("p_value", pv),
				zap.Duration("since_deploy", p.now.AsTime().Sub(r.at.AsTime())))
		}
		r.regression = reg
	}
	if nowE > afterHi {
		r.final = true
	}
}

func (p *regression) sweep() {
	p.lastSweep = p.now
	if p.now <= pcommon.Timestamp(p.cfg.Retention) {
		return
	}
	cutoff := p.now - pcommon.Timestamp(p.cfg.Retention)
	before := p.tracker.EvictedStale
	p.tracker.Sweep(cutoff)
	p.evicted[evictStaleStream] += p.tracker.EvictedStale - before
	for k, d := range p.deployments {
		for h, rev := range d.revisions {
			if rev.lastSeen < cutoff {
				delete(d.revisions, h)
				p.evicted[evictStaleRevision]++
			}
		}
		if d.rollout != nil && d.rollout.at < cutoff {
			d.rollout = nil
		}
		if len(d.revisions) == 0 || d.lastSeen < cutoff {
			d.evicted = true
			delete(p.deployments, k)
			p.evicted[evictStaleDeployment]++
		}
	}
}

type output struct {
	q                                    [len(quantiles)]pmetric.NumberDataPointSlice
	delta, samples, regression, pValue   pmetric.NumberDataPointSlice
	timeSince, rollouts, regressions, ev pmetric.NumberDataPointSlice
}

func newMetric(ms pmetric.MetricSlice, name, unit, desc string, counter bool) pmetric.NumberDataPointSlice {
	m := ms.AppendEmpty()
	m.SetName(name)
	m.SetUnit(unit)
	m.SetDescription(desc)
	if !counter {
		return m.SetEmptyGauge().DataPoints()
	}
	s := m.SetEmptySum()
	s.SetIsMonotonic(true)
	s.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	return s.DataPoints()
}

func (p *regression) emit(md pmetric.Metrics) {
	rm := md.ResourceMetrics().AppendEmpty()
	rm.Resource().Attributes().PutStr("service.name", selfService)
	sm := rm.ScopeMetrics().AppendEmpty()
	sm.Scope().SetName(scopeName)
	ms := sm.Metrics()
	var out output
	for i, q := range quantiles {
		out.q[i] = newMetric(ms, "lbpath.deploy.latency."+q.name, "s",
			"Request latency quantile of a revision: before (baseline), after (since the deploy) or current (trailing window).", false)
	}
	out.delta = newMetric(ms, "lbpath.deploy.latency.delta", "1", "After/before ratio of a latency quantile across the latest rollout.", false)
	out.samples = newMetric(ms, "lbpath.deploy.samples", "{request}", "Requests in each side of the rollout comparison.", false)
	out.regression = newMetric(ms, "lbpath.deploy.regression", "", "1 when the rollout's latency is significantly worse (p < alpha and p90 up by more than min_increase and min_increase_abs).", false)
	out.pValue = newMetric(ms, "lbpath.deploy.p_value", "", "Chi-square homogeneity test p-value, before vs after.", false)
	out.timeSince = newMetric(ms, "lbpath.deploy.time_since", "s", "Seconds since the latest rollout began.", false)
	out.rollouts = newMetric(ms, "lbpath.deploy.rollouts", "{rollout}", "Rollouts detected.", true)
	out.regressions = newMetric(ms, "lbpath.deploy.regressions", "{rollout}", "Rollouts that turned into regressions.", true)
	out.ev = newMetric(ms, "lbpath.deploy.evictions", "{entry}", "State entries dropped by the processor's bounds or staleness, and points rejected.", true)

	for _, d := range p.touched {
		if d.evicted {
			continue
		}
		p.emitDeployment(&out, d)
	}
	put := func(reason string, v uint64) {
		dp := out.ev.AppendEmpty()
		dp.SetStartTimestamp(p.start)
		dp.SetTimestamp(p.now)
		dp.SetIntValue(int64(v))
		dp.Attributes().PutStr(attrReason, reason)
	}
	for r := range numReasons {
		v := p.evicted[r]
		if r == evictStreamLimit {
			v = p.tracker.EvictedCapacity
		}
		put(reasonNames[r], v)
	}
	put("bounds_mismatch", p.rejected)
	put("layout_mismatch", p.mismatched)
}

func (p *regression) emitDeployment(out *output, d *deployment) {
	now := p.now
	attrs := func(dst pmetric.NumberDataPointSlice, v float64) pcommon.Map {
		dp := dst.AppendEmpty()
		dp.SetTimestamp(now)
		dp.SetDoubleValue(v)
		a := dp.Attributes()
		a.EnsureCapacity(4)
		a.PutStr(attrNamespace, d.key.namespace)
		a.PutStr(attrDeploy, d.key.name)
		return a
	}
	counter := func(dst pmetric.NumberDataPointSlice, v uint64) {
		dp := dst.AppendEmpty()
		dp.SetStartTimestamp(d.created)
		dp.SetTimestamp(now)
		dp.SetIntValue(int64(v))
		dp.Attributes().PutStr(attrNamespace, d.key.namespace)
		dp.Attributes().PutStr(attrDeploy, d.key.name)
	}
	counter(out.rollouts, d.rollouts)
	counter(out.regressions, d.regressions)
	r := d.rollout
	if r == nil {
		return
	}
	p.evaluate(d)
	ev := &r.eval

	attrs(out.timeSince, now.AsTime().Sub(r.at.AsTime()).Seconds())
	sides := [...]struct {
		name, hash string
		h          *streams.ExpBuckets
	}{{"before", r.from, &ev.before}, {"after", r.to, &ev.after}, {"current", r.to, &ev.current}}
	for _, side := range sides {
		n := side.h.Total()
		a := attrs(out.samples, float64(n))
		a.PutStr(attrRevision, side.name)
		if n == 0 {
			continue
		}
		for i, q := range quantiles {
			a = attrs(out.q[i], d.layout.quantile(q.q, side.h))
			a.PutStr(attrRevision, side.name)
			a.PutStr(attrHash, side.hash)
		}
	}
	if ev.before.Total() > 0 && ev.after.Total() > 0 {
		for _, q := range quantiles {
			b, a := d.layout.quantile(q.q, &ev.before), d.layout.quantile(q.q, &ev.after)
			if b > 0 && !math.IsNaN(a) {
				attrs(out.delta, a/b).PutStr(attrQuantile, q.name)
			}
		}
	}
	if ev.tested {
		v := 0.0
		if r.regression {
			v = 1
		}
		attrs(out.regression, v)
		attrs(out.pValue, ev.p)
	}
}
