// Package deployregression implements the deployregression metrics
// processor: it detects rollouts of a Deployment from new pod-template
// hashes in the lbpath agents' lbpath.request.duration histograms and tests
// whether the new revision's latency is worse than the previous one's.
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
