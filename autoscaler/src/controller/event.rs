//! Building [`ScalingEvent`]s: one shape for decisions and actions, with the
//! inputs the decision saw.

use std::collections::BTreeMap;

use chrono::Utc;
use registry::model::{ScalingEvent, plain_text};

use crate::collect::ServiceLoad;
use crate::decide::Decision;

/// Event kinds.
pub const DECISION: &str = "decision";
pub const START: &str = "start";
pub const RETIRE: &str = "retire";
pub const REPLACE: &str = "replace";
pub const STOP: &str = "stop";
/// A start the driver refused (program or image missing, spec unusable).
pub const START_FAILED: &str = "start-failed";
/// The spec changed: instances on other versions are rolled onto it.
pub const SPEC: &str = "spec";

/// The numbers a decision was computed from.
pub fn inputs(
    decision: &Decision,
    load: &ServiceLoad,
    metric_mean: Option<f64>,
    target: f64,
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    m.insert("current".into(), decision.current as f64);
    m.insert("recommended".into(), decision.recommended as f64);
    m.insert("desired".into(), decision.desired as f64);
    m.insert("target".into(), target);
    if let Some(mean) = metric_mean {
        m.insert("metric_mean".into(), mean);
    }
    m.insert("rate".into(), load.rate);
    if let Some(p95) = load.p95_ms {
        m.insert("p95_ms".into(), p95);
    }
    m.insert("held".into(), load.held as f64);
    m.insert("gateways_answered".into(), load.gateways_answered as f64);
    m.insert("gateways_silent".into(), load.silent.len() as f64);
    m
}

/// An event about `service` as of now. The reason is made plain text (it
/// may quote what an instance printed), so the event is always writable.
pub fn new(
    service: &str,
    kind: &str,
    (current, desired): (u32, u32),
    reason: String,
    instance: Option<&str>,
) -> ScalingEvent {
    ScalingEvent {
        service: service.to_owned(),
        at: Utc::now(),
        kind: kind.to_owned(),
        current,
        desired,
        reason: plain_text(&reason, ScalingEvent::MAX_REASON),
        bounded_by: None,
        inputs: BTreeMap::new(),
        instance: instance.map(str::to_owned),
    }
}
