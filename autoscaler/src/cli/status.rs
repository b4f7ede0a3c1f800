//! `autoscaler status [SERVICE]`: per service with a policy, its bounds and
//! target, its registered instances by state, and the last decision with why.
//! One bounded read of policies and instances, and one of the newest events
//! per service.

use std::collections::BTreeMap;

use clap::Args;
use registry::cli::exit::OK;
use registry::cli::{etcd, out};
use registry::model::{ScalingEvent, ScalingPolicy};
use registry::{EtcdArgs, Instance, InstanceState};
use serde::Serialize;

use super::policy::metric_name;
use super::{Outcome, OutputFormat, pretty_json, service_name};

/// How many of the newest events are read to find one that decodes.
const NEWEST_EVENTS: u32 = 5;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// `--etcd`, `--prefix`, ...: parsed at the top level (before or after the
    /// subcommand) and filled in by `main`.
    #[arg(skip)]
    pub etcd: EtcdArgs,
    /// Only this service.
    #[arg(value_parser = service_name)]
    pub service: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Registered instances of a service, by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstanceCounts {
    pub starting: u32,
    pub ready: u32,
    pub draining: u32,
}

/// What `status` shows for one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus {
    pub policy: ScalingPolicy,
    pub instances: InstanceCounts,
    /// The newest scaling event, if any.
    pub last_event: Option<ScalingEvent>,
}

pub async fn run(args: StatusArgs) -> Outcome {
    let etcd_args = &args.etcd;
    let keys = &etcd_args.prefix;
    let store = etcd::store(etcd_args).await?;
    let failure = |e| etcd::store_failure(etcd_args, e);
    let policies: Vec<ScalingPolicy> = store
        .policies()
        .await
        .map_err(failure)?
        .into_iter()
        .filter(|p| args.service.as_ref().is_none_or(|s| *s == p.service))
        .collect();
    let instances: Vec<Instance> = store
        .list(&keys.instances())
        .await
        .map_err(failure)?
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let counts = count(&instances);

    let mut statuses = Vec::with_capacity(policies.len());
    for policy in policies {
        let last_event = store
            .events(&policy.service, NEWEST_EVENTS)
            .await
            .map_err(failure)?
            .into_iter()
            .next()
            .map(|(_, e)| e);
        statuses.push(ServiceStatus {
            instances: counts.get(&policy.service).cloned().unwrap_or_default(),
            policy,
            last_event,
        });
    }

    let lines = match args.output {
        OutputFormat::Table => {
            if statuses.is_empty() {
                match &args.service {
                    Some(service) => eprintln!("no policy for {service}"),
                    None => eprintln!("no policies under {}", keys.policies()),
                }
            }
            table(&statuses)
        }
        OutputFormat::Json => vec![pretty_json(&statuses)?],
    };
    out::finish(lines)?;
    Ok(OK)
}

/// Instances per service, by state.
pub fn count(instances: &[Instance]) -> BTreeMap<String, InstanceCounts> {
    let mut counts: BTreeMap<String, InstanceCounts> = BTreeMap::new();
    for instance in instances {
        let c = counts.entry(instance.service.clone()).or_default();
        match instance.state {
            InstanceState::Starting => c.starting += 1,
            InstanceState::Ready => c.ready += 1,
            InstanceState::Draining => c.draining += 1,
        }
    }
    counts
}

/// One row per service.
pub fn table(statuses: &[ServiceStatus]) -> Vec<String> {
    let rows: Vec<[String; 9]> = statuses
        .iter()
        .map(|s| {
            let p = &s.policy;
            let (desired, reason) = match &s.last_event {
                Some(e) => (e.desired.to_string(), e.reason.clone()),
                None => ("-".to_owned(), "-".to_owned()),
            };
            [
                p.service.clone(),
                s.instances.ready.to_string(),
                s.instances.starting.to_string(),
                s.instances.draining.to_string(),
                desired,
                match p.pinned {
                    Some(n) => format!("pinned={n}"),
                    None => format!("{}..{}", p.min, p.max),
                },
                metric_name(p.metric).to_owned(),
                p.target.to_string(),
                reason,
            ]
        })
        .collect();
    out::table(
        [
            "SERVICE",
            "READY",
            "STARTING",
            "DRAINING",
            "DESIRED",
            "MIN..MAX",
            "METRIC",
            "TARGET",
            "LAST DECISION",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use registry::model::ScalingMetric;

    use super::*;

    fn policy(service: &str) -> ScalingPolicy {
        ScalingPolicy {
            service: service.into(),
            min: 1,
            max: 4,
            metric: ScalingMetric::Inflight,
            target: 8.0,
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

    #[test]
    fn instances_are_counted_per_service_and_state() {
        let mut a = Instance::new("app", "127.0.0.1:1");
        a.state = InstanceState::Ready;
        let b = Instance::new("app", "127.0.0.1:2");
        let mut c = Instance::new("web", "127.0.0.1:3");
        c.state = InstanceState::Draining;
        let counts = count(&[a.clone(), a, b, c]);
        assert_eq!(
            counts["app"],
            InstanceCounts {
                starting: 1,
                ready: 2,
                draining: 0
            }
        );
        assert_eq!(counts["web"].draining, 1);
    }

    #[test]
    fn the_table_shows_the_last_decision_or_a_dash() {
        let event = ScalingEvent {
            service: "app".into(),
            at: Utc::now(),
            kind: "decision".into(),
            current: 1,
            desired: 3,
            reason: "1 → 3: in-flight 20 over target 8".into(),
            bounded_by: None,
            inputs: Default::default(),
            instance: None,
        };
        let statuses = [
            ServiceStatus {
                policy: policy("app"),
                instances: InstanceCounts {
                    starting: 2,
                    ready: 1,
                    draining: 0,
                },
                last_event: Some(event),
            },
            ServiceStatus {
                policy: policy("checkout"),
                instances: InstanceCounts::default(),
                last_event: None,
            },
        ];
        assert_eq!(
            table(&statuses),
            [
                "SERVICE   READY  STARTING  DRAINING  DESIRED  MIN..MAX  METRIC    TARGET  LAST DECISION",
                "app       1      2         0         3        1..4      inflight  8       1 → 3: in-flight 20 over target 8",
                "checkout  0      0         0         -        1..4      inflight  8       -",
            ]
        );
    }
}
