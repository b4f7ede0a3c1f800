//! The scaling decision: a pure function from observed load to a desired
//! replica count, with the reason and the rule that bounded it. No I/O, no
//! clock reads: the controller passes `now` and the history in, so every rule
//! is table-tested below.
//!
//! The rules, in order (Kubernetes HPA's, with its treatment of missing
//! metrics and not-ready instances):
//! 0. **Pin.** A policy pinned by an operator (`autoscaler scale`) gets its
//!    pinned count at once; the metric's answer is only reported.
//! 1. **Raw recommendation.** For per-instance metrics (`inflight`, `rps`,
//!    `cpu`), ratio = mean over ready, warm instances with a metric ÷ target;
//!    for `p95-latency`, ratio = the service's p95 ÷ target. Inside the
//!    tolerance band (|ratio − 1| ≤ tolerance) nothing changes. Otherwise
//!    desired = ⌈ratio × counted instances⌉.
//! 2. **Missing metrics and not-ready instances** (per-instance metrics): if the
//!    first estimate scales up, instances without a metric and instances that
//!    are starting or warming up count as using 0; if it scales down,
//!    instances without a metric count as exactly on target (not-ready ones
//!    are left out). The ratio is recomputed; if that reverses the direction or
//!    lands in the tolerance band, nothing changes.
//! 3. **Scale from zero.** With no instance, a request the gateways hold asks
//!    for `max(min, 1)`. The recent request rate does not: after a scale-in
//!    to zero it still counts the requests served before, and would start an
//!    instance again at once (flapping until the rate window drains).
//! 4. **Stabilization.** Scale-up takes the *lowest* recommendation of the
//!    scale-up window; scale-down the *highest* of the scale-down window; so a
//!    brief spike or dip does not move the count.
//! 5. **Step limits.** At most `max_scale_up_step` added (and
//!    `max_scale_down_step` removed) per `step_period_secs`, counting the
//!    changes already made in that period.
//! 6. **Bounds.** `min` ≤ desired ≤ `max`.

use registry::model::{ScalingMetric, ScalingPolicy};

/// One instance as the controller observed it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceLoad {
    pub id: String,
    /// Ready for traffic (registered `ready`, not ejected by every gateway).
    pub ready: bool,
    /// Started less than `warmup_secs` ago: its capacity counts, its metric does not.
    pub warming_up: bool,
    /// Its value of the policy's per-instance metric, if known.
    pub metric: Option<f64>,
}

/// Everything the decision looks at, observed at `now` (seconds on the
/// controller's monotonic clock).
///
/// Stabilization only looks at `recommendations`: with an empty history a
/// scale-down happens at once. A caller that has just started (or just became
/// leader) must seed the history with the current count, so the first
/// scale-down waits a whole window.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub policy: &'a ScalingPolicy,
    pub now: f64,
    /// Instances the controller counts as the current size (ready or starting).
    pub instances: &'a [InstanceLoad],
    /// The service's p95 latency in ms across gateways (for `p95-latency`).
    pub service_p95_ms: Option<f64>,
    /// Requests gateways are holding for lack of an instance.
    pub held_requests: u64,
    /// Past raw recommendations: (time, replicas), oldest first.
    pub recommendations: &'a [(f64, u32)],
    /// Past changes made: (time, +added / −removed), oldest first.
    pub changes: &'a [(f64, i64)],
}

/// Which rule had the last word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Tolerance,
    MissingMetrics,
    ScaleUpStabilization,
    ScaleDownStabilization,
    ScaleUpStep,
    ScaleDownStep,
    Min,
    Max,
    Pinned,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Tolerance => "tolerance",
            Bound::MissingMetrics => "missing-metrics",
            Bound::ScaleUpStabilization => "scale-up-stabilization",
            Bound::ScaleDownStabilization => "scale-down-stabilization",
            Bound::ScaleUpStep => "scale-up-step",
            Bound::ScaleDownStep => "scale-down-step",
            Bound::Min => "min",
            Bound::Max => "max",
            Bound::Pinned => "pinned",
        }
    }
}

/// The outcome: how many replicas, the raw recommendation before
/// stabilization/steps/bounds, why, and what bounded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub current: u32,
    pub desired: u32,
    /// What the metric alone asked for (rule 1–3).
    pub recommended: u32,
    pub reason: String,
    pub bounded_by: Option<Bound>,
}

/// Decide. Pure: same inputs, same decision.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let policy = inputs.policy;
    let current = inputs.instances.len() as u32;
    let (recommended, mut reason, mut bounded_by) = recommend(inputs, current);

    // 0. A pin is an operator's order: no window, step or bound applies.
    if let Some(pinned) = policy.pinned {
        return Decision {
            current,
            desired: pinned,
            recommended,
            reason: format!(
                "{current} → {pinned}: pinned at {pinned} (the metric alone: {reason})"
            ),
            bounded_by: Some(Bound::Pinned),
        };
    }

    // 4. Stabilization over past recommendations, this one included.
    let mut desired = recommended;
    if recommended > current {
        let window = policy.scale_up_stabilization_secs as f64;
        let lowest = within(inputs.recommendations, inputs.now, window)
            .chain([recommended])
            .min()
            .unwrap_or(recommended);
        if lowest < desired {
            desired = lowest.max(current);
            bounded_by = Some(Bound::ScaleUpStabilization);
        }
    } else if recommended < current {
        let window = policy.scale_down_stabilization_secs as f64;
        let highest = within(inputs.recommendations, inputs.now, window)
            .chain([recommended])
            .max()
            .unwrap_or(recommended);
        if highest > desired {
            desired = highest.min(current);
            bounded_by = Some(Bound::ScaleDownStabilization);
        }
    }

    // 5. Step limits per period, counting changes already made in it.
    let period = policy.step_period_secs as f64;
    let recent: Vec<i64> = inputs
        .changes
        .iter()
        .filter(|(t, _)| inputs.now - t < period)
        .map(|&(_, d)| d)
        .collect();
    if desired > current {
        if let Some(step) = policy.max_scale_up_step {
            let added: i64 = recent.iter().filter(|d| **d > 0).sum();
            let allowed = (step as i64 - added).max(0) as u32;
            if desired - current > allowed {
                desired = current + allowed;
                bounded_by = Some(Bound::ScaleUpStep);
            }
        }
    } else if desired < current
        && let Some(step) = policy.max_scale_down_step
    {
        let removed: i64 = -recent.iter().filter(|d| **d < 0).sum::<i64>();
        let allowed = (step as i64 - removed).max(0) as u32;
        if current - desired > allowed {
            desired = current - allowed;
            bounded_by = Some(Bound::ScaleDownStep);
        }
    }

    // 6. Bounds.
    if desired < policy.min {
        desired = policy.min;
        bounded_by = Some(Bound::Min);
    } else if desired > policy.max {
        desired = policy.max;
        bounded_by = Some(Bound::Max);
    }

    if desired != recommended
        && let Some(bound) = bounded_by
    {
        reason = format!("{reason}; bounded by {} to {desired}", bound.name());
    }
    Decision {
        current,
        desired,
        recommended,
        reason: format!("{current} → {desired}: {reason}"),
        bounded_by,
    }
}

fn within(history: &[(f64, u32)], now: f64, window: f64) -> impl Iterator<Item = u32> + '_ {
    history
        .iter()
        .filter(move |(t, _)| now - t < window)
        .map(|&(_, r)| r)
}

/// Rules 1–3: the raw recommendation, why, and whether tolerance or missing
/// metrics held it at the current count.
fn recommend(inputs: &Inputs<'_>, current: u32) -> (u32, String, Option<Bound>) {
    let policy = inputs.policy;
    if current == 0 {
        return if inputs.held_requests > 0 {
            let want = policy.min.max(1);
            (
                want,
                format!(
                    "no instance and {} held request(s): scale from zero",
                    inputs.held_requests
                ),
                None,
            )
        } else {
            // Nothing to serve: the metric asks for none; `min` may bound it.
            (0, "no instance and no held request".to_owned(), None)
        };
    }
    let name = metric_name(policy.metric);
    if policy.metric == ScalingMetric::P95Latency {
        let Some(p95) = inputs.service_p95_ms else {
            return (
                current,
                "no p95 latency observed; holding".to_owned(),
                Some(Bound::MissingMetrics),
            );
        };
        let ratio = p95 / policy.target;
        if (ratio - 1.0).abs() <= policy.tolerance {
            return (
                current,
                format!(
                    "{name} {p95:.1} ms within tolerance of target {}",
                    policy.target
                ),
                Some(Bound::Tolerance),
            );
        }
        let want = (ratio * current as f64).ceil() as u32;
        let side = if ratio > 1.0 { "over" } else { "under" };
        return (
            want,
            format!("{name} {p95:.1} ms {side} target {}", policy.target),
            None,
        );
    }

    let counted: Vec<&InstanceLoad> = inputs.instances.iter().collect();
    let measured: Vec<f64> = counted
        .iter()
        .filter(|i| i.ready && !i.warming_up)
        .filter_map(|i| i.metric)
        .collect();
    if measured.is_empty() {
        return (
            current,
            format!("no {name} observed from any ready instance; holding"),
            Some(Bound::MissingMetrics),
        );
    }
    let mean = measured.iter().sum::<f64>() / measured.len() as f64;
    let ratio = mean / policy.target;
    let in_band = |r: f64| (r - 1.0).abs() <= policy.tolerance;
    if in_band(ratio) {
        return (
            current,
            format!(
                "{name} {mean:.1} per instance within tolerance of target {}",
                policy.target
            ),
            Some(Bound::Tolerance),
        );
    }
    let scaling_up = ratio > 1.0;
    let not_ready = counted.iter().filter(|i| !i.ready || i.warming_up).count();
    let missing = counted
        .iter()
        .filter(|i| i.ready && !i.warming_up && i.metric.is_none())
        .count();
    let total: f64 = measured.iter().sum();
    let (adjusted_total, adjusted_count) = if scaling_up {
        // Unmeasured and not-ready instances count as idle: they dampen scale-up.
        (total, measured.len() + missing + not_ready)
    } else {
        // Unmeasured instances count as on target: they dampen scale-down.
        (
            total + missing as f64 * policy.target,
            measured.len() + missing,
        )
    };
    let adjusted_ratio = adjusted_total / adjusted_count as f64 / policy.target;
    if (missing > 0 || (scaling_up && not_ready > 0))
        && (in_band(adjusted_ratio) || (adjusted_ratio > 1.0) != scaling_up)
    {
        return (
            current,
            format!(
                "{name} {mean:.1} per measured instance, but {missing} without a metric and {not_ready} not ready make it {:.1}; holding",
                adjusted_ratio * policy.target
            ),
            Some(Bound::MissingMetrics),
        );
    }
    let want = (adjusted_ratio * adjusted_count as f64).ceil() as u32;
    let side = if scaling_up { "over" } else { "under" };
    (
        want,
        format!(
            "{name} {mean:.1} per instance {side} target {}",
            policy.target
        ),
        None,
    )
}

fn metric_name(metric: ScalingMetric) -> &'static str {
    match metric {
        ScalingMetric::Inflight => "in-flight",
        ScalingMetric::Rps => "req/s",
        ScalingMetric::P95Latency => "p95 latency",
        ScalingMetric::Cpu => "cpu",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalingPolicy {
        ScalingPolicy {
            service: "app".into(),
            min: 1,
            max: 10,
            metric: ScalingMetric::Inflight,
            target: 4.0,
            tolerance: 0.1,
            scale_up_stabilization_secs: 0,
            scale_down_stabilization_secs: 30,
            max_scale_up_step: None,
            max_scale_down_step: None,
            step_period_secs: 15,
            warmup_secs: 0,
            pinned: None,
        }
    }

    fn ready(metrics: &[f64]) -> Vec<InstanceLoad> {
        metrics
            .iter()
            .enumerate()
            .map(|(i, &m)| InstanceLoad {
                id: format!("i{i}"),
                ready: true,
                warming_up: false,
                metric: Some(m),
            })
            .collect()
    }

    fn inputs<'a>(policy: &'a ScalingPolicy, instances: &'a [InstanceLoad]) -> Inputs<'a> {
        Inputs {
            policy,
            now: 1000.0,
            instances,
            service_p95_ms: None,
            held_requests: 0,
            recommendations: &[],
            changes: &[],
        }
    }

    #[test]
    fn proportional_rule_and_tolerance() {
        let p = policy();
        // (metrics per instance, expected desired, expected bound)
        let cases: &[(&[f64], u32, Option<Bound>)] = &[
            (&[9.1], 3, None),                        // ceil(1 × 9.1/4)
            (&[8.0, 8.0, 8.0], 6, None),              // ratio 2 → double
            (&[4.3, 4.3], 2, Some(Bound::Tolerance)), // 7.5% over: inside 10%
            (&[3.7, 3.7], 2, Some(Bound::Tolerance)), // 7.5% under
            (&[1.0, 1.0, 1.0, 1.0], 1, None),         // no earlier recommendation in the window
        ];
        for (metrics, want, bound) in cases {
            let instances = ready(metrics);
            let d = decide(&inputs(&p, &instances));
            assert_eq!(
                (d.desired, d.bounded_by),
                (*want, *bound),
                "{metrics:?}: {d:?}"
            );
        }
    }

    #[test]
    fn the_reason_reads_like_an_operator_would_say_it() {
        let p = policy();
        let instances = ready(&[9.1, 9.1, 9.1]);
        let d = decide(&inputs(&p, &instances));
        assert_eq!(d.reason, "3 → 7: in-flight 9.1 per instance over target 4");
    }

    #[test]
    fn scale_down_waits_for_the_window_then_follows_its_highest_recommendation() {
        let p = policy();
        let instances = ready(&[1.0, 1.0, 1.0, 1.0]);
        let mut i = inputs(&p, &instances);
        // Recommendations over the last 30 s: 3, then 2; now 1.
        let history = [(975.0, 3), (990.0, 2)];
        i.recommendations = &history;
        let d = decide(&i);
        assert_eq!(
            (d.recommended, d.desired, d.bounded_by),
            (1, 3, Some(Bound::ScaleDownStabilization))
        );
        // Once they age out, the count follows the metric.
        let old = [(960.0, 3), (965.0, 2)];
        i.recommendations = &old;
        assert_eq!(decide(&i).desired, 1);
    }

    #[test]
    fn scale_up_stabilization_takes_the_lowest_recent_recommendation() {
        let mut p = policy();
        p.scale_up_stabilization_secs = 10;
        let instances = ready(&[16.0]);
        let mut i = inputs(&p, &instances);
        let history = [(995.0, 2)];
        i.recommendations = &history;
        let d = decide(&i);
        assert_eq!(
            (d.recommended, d.desired, d.bounded_by),
            (4, 2, Some(Bound::ScaleUpStabilization))
        );
    }

    #[test]
    fn missing_metrics_and_not_ready_instances_follow_the_hpa() {
        let p = policy();
        // Scale-up: an instance without a metric counts as idle. 12+12+0 over 3 = 8 → 6.
        let mut instances = ready(&[12.0, 12.0, 0.0]);
        instances[2].metric = None;
        assert_eq!(decide(&inputs(&p, &instances)).desired, 6);

        // Scale-up damped into the band: 4.8 measured, but two starting instances at 0 → 1.6: hold.
        let mut instances = ready(&[4.8, 0.0, 0.0]);
        instances[1].ready = false;
        instances[2].warming_up = true;
        let d = decide(&inputs(&p, &instances));
        assert_eq!(
            (d.desired, d.bounded_by),
            (3, Some(Bound::MissingMetrics)),
            "{d:?}"
        );

        // Scale-down: a missing metric counts as on target. (1 + 4) / 2 = 2.5 → ratio 0.625 → 2 × 0.625 → 2 (ceil 1.25).
        let mut p2 = policy();
        p2.scale_down_stabilization_secs = 0;
        let mut instances = ready(&[1.0, 0.0]);
        instances[1].metric = None;
        let d = decide(&inputs(&p2, &instances));
        assert_eq!(d.desired, 2, "{d:?}");

        // No metric at all: hold.
        let mut instances = ready(&[0.0]);
        instances[0].metric = None;
        let d = decide(&inputs(&p, &instances));
        assert_eq!((d.desired, d.bounded_by), (1, Some(Bound::MissingMetrics)));
    }

    #[test]
    fn warming_up_instances_count_for_capacity_not_for_load() {
        let mut p = policy();
        p.warmup_secs = 30;
        // One warm instance at 12, one warming up: scale-up counts the new one as idle: (12 + 0) / 2 = 6 → 3.
        let mut instances = ready(&[12.0, 50.0]);
        instances[1].warming_up = true;
        assert_eq!(decide(&inputs(&p, &instances)).desired, 3);
    }

    #[test]
    fn steps_and_bounds() {
        let mut p = policy();
        p.max_scale_up_step = Some(2);
        let instances = ready(&[40.0]);
        let d = decide(&inputs(&p, &instances));
        assert_eq!(
            (d.recommended, d.desired, d.bounded_by),
            (10, 3, Some(Bound::ScaleUpStep))
        );
        // One already added in this period: one more allowed.
        let mut i = inputs(&p, &instances);
        let changes = [(995.0, 1)];
        i.changes = &changes;
        assert_eq!(decide(&i).desired, 2);

        let mut p = policy();
        p.max = 5;
        let d = decide(&inputs(&p, &ready(&[40.0])));
        assert_eq!((d.desired, d.bounded_by), (5, Some(Bound::Max)));
        assert_eq!(
            d.reason,
            "1 → 5: in-flight 40.0 per instance over target 4; bounded by max to 5"
        );

        let mut p = policy();
        p.min = 2;
        p.scale_down_stabilization_secs = 0;
        let d = decide(&inputs(&p, &ready(&[0.5, 0.5, 0.5])));
        assert_eq!((d.desired, d.bounded_by), (2, Some(Bound::Min)));

        let mut p = policy();
        p.scale_down_stabilization_secs = 0;
        p.max_scale_down_step = Some(1);
        let d = decide(&inputs(&p, &ready(&[0.5, 0.5, 0.5, 0.5])));
        assert_eq!((d.desired, d.bounded_by), (3, Some(Bound::ScaleDownStep)));
    }

    #[test]
    fn a_pin_overrides_windows_steps_and_bounds() {
        let mut p = policy();
        p.max = 3;
        p.max_scale_up_step = Some(1);
        p.scale_up_stabilization_secs = 60;
        p.pinned = Some(6);
        let instances = ready(&[0.0, 0.0]);
        let d = decide(&inputs(&p, &instances));
        assert_eq!((d.desired, d.bounded_by), (6, Some(Bound::Pinned)));
        assert!(
            d.reason
                .starts_with("2 → 6: pinned at 6 (the metric alone:"),
            "{}",
            d.reason
        );
        p.pinned = Some(0);
        assert_eq!(decide(&inputs(&p, &instances)).desired, 0);
    }

    #[test]
    fn scale_from_and_to_zero() {
        let mut p = policy();
        p.min = 0;
        let none: Vec<InstanceLoad> = Vec::new();
        let mut i = inputs(&p, &none);
        assert_eq!(decide(&i).desired, 0);
        let mut p1 = p.clone();
        p1.min = 1;
        let i1 = inputs(&p1, &none);
        let d = decide(&i1);
        assert_eq!((d.desired, d.bounded_by), (1, Some(Bound::Min)));
        assert_eq!(
            d.reason,
            "0 → 1: no instance and no held request; bounded by min to 1"
        );
        i.held_requests = 3;
        let d = decide(&i);
        assert_eq!(d.desired, 1);
        assert!(d.reason.contains("scale from zero"), "{}", d.reason);

        p.scale_down_stabilization_secs = 0;
        let idle = ready(&[0.0, 0.0]);
        let i = inputs(&p, &idle);
        assert_eq!(decide(&i).desired, 0);
    }

    #[test]
    fn latency_target() {
        let mut p = policy();
        p.metric = ScalingMetric::P95Latency;
        p.target = 100.0;
        let instances = ready(&[0.0, 0.0]);
        let mut i = inputs(&p, &instances);
        i.service_p95_ms = Some(250.0);
        assert_eq!(decide(&i).desired, 5);
        i.service_p95_ms = Some(105.0);
        assert_eq!(decide(&i).bounded_by, Some(Bound::Tolerance));
        i.service_p95_ms = None;
        assert_eq!(decide(&i).bounded_by, Some(Bound::MissingMetrics));
    }
}
