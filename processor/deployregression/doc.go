// Package deployregression implements the deployregression metrics
// processor: it detects rollouts of a Deployment from new pod-template
// hashes in the lbpath agents' lbpath.request.duration histograms and tests
// whether the new revision's latency is worse than the previous one's.
//
// Input: lbpath.request.duration as a base-2 exponential histogram (the
// agents' default, --latency-histogram=exponential) or an explicit-bucket
// histogram (--latency-histogram=explicit), in cumulative or delta
// temporality (--metrics-temporality). A Deployment keeps the kind of its
// first point; points of the other kind are rejected and counted
// (lbpath.reason=layout_mismatch), explicit points with other bounds too
// (bounds_mismatch). Exponential histograms of different scales (each
// pod's series picks its own, and lowers it as its range widens) are
// downscaled exactly to the lowest scale seen before they are added or
// compared. Quantiles of exponential histograms are the logarithmic
// midpoint of the bucket holding the rank: relative error at most
// 2^(2^-(scale+1)) − 1 (2.2 % at scale 4, 1.1 % at scale 5); of explicit
// histograms, linear interpolation inside the bucket (no bound: a 25 ms
// slowdown of an 8 ms service read 29 ms with the old default buckets).
//
// Delta points are added as they come (nothing is kept per stream), which
// makes any collector replica correct from the first point it receives.
// Cumulative points are differenced per stream (processor/internal/streams):
// a stream's first point counts in full only if it began recently (within
// `after`), after the collector started, or after an earlier export of the
// same agent (same resource and start time) that did not carry it;
// otherwise it is a baseline and that stream's first interval is lost.
// Behind a load-balancing gateway a replica that takes over a stream from a
// dead one may thus count the stream's whole history once: run the agents
// with --metrics-temporality=delta there.
//
// The input passes through unchanged; the results are appended as one
// ResourceMetrics with service.name=lbpath-collector, for Deployments
// touched by the batch whose latest rollout is within retention:
//
//	lbpath.deploy.latency.{p50,p90,p99}  gauge  namespace, deployment, lbpath.revision, lbpath.pod_template_hash
//	lbpath.deploy.latency.delta          gauge  namespace, deployment, lbpath.quantile (after/before)
//	lbpath.deploy.samples                gauge  namespace, deployment, lbpath.revision
//	lbpath.deploy.regression             gauge  namespace, deployment (1/0, once both sides have min_samples)
//	lbpath.deploy.p_value                gauge  namespace, deployment
//	lbpath.deploy.time_since             gauge  namespace, deployment (seconds since the deploy)
//	lbpath.deploy.rollouts               sum    namespace, deployment
//	lbpath.deploy.regressions            sum    namespace, deployment
//	lbpath.deploy.evictions              sum    lbpath.reason
//
// lbpath.revision is before (baseline revision over the before window),
// after (new revision since the deploy, up to the after window) or current
// (new revision over the trailing current_window), so that
// lbpath.deploy.latency.p90{lbpath.revision="current"} plotted against
// lbpath.deploy.time_since shows latency drifting minutes after a deploy.
package deployregression
