//! `autoscaler policy set|get|delete`: the scaling policies at
//! `{prefix}/policies/{service}`. `set` builds a [`ScalingPolicy`] from flags
//! and refuses one that does not validate (exit 2) before writing it.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use registry::EtcdArgs;
use registry::cli::exit::{Failure, OK};
use registry::cli::{etcd, out};
use registry::model::{ScalingMetric, ScalingPolicy};

use super::{Outcome, OutputFormat, pretty_json, service_name, whole_seconds};

/// `autoscaler policy ...`.
#[derive(Debug, Args)]
pub struct PolicyCommand {
    /// `--etcd`, `--prefix`, ...: parsed at the top level (before or after the
    /// subcommand) and filled in by `main`.
    #[arg(skip)]
    pub etcd: EtcdArgs,
    #[command(subcommand)]
    pub action: PolicyAction,
}

#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Create or replace a service's policy, and print it as JSON.
    Set(SetArgs),
    /// Print every policy as a table, or one service's.
    Get(GetArgs),
    /// Delete a service's policy; the controller stops scaling it.
    Delete(DeleteArgs),
}

/// Flags of `policy set`; the defaults are the policy's own.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The service to scale.
    #[arg(value_parser = service_name)]
    pub service: String,
    /// Fewest instances (0: scale to zero).
    #[arg(long)]
    pub min: u32,
    /// Most instances (1..=1000).
    #[arg(long)]
    pub max: u32,
    /// The load signal to track: inflight, rps, p95-latency or cpu.
    #[arg(long, value_parser = parse_metric)]
    pub metric: ScalingMetric,
    /// Target value of the metric (per instance for inflight, rps and cpu; ms for p95-latency).
    #[arg(long)]
    pub target: f64,
    /// Band around the target inside which nothing changes, as a ratio.
    #[arg(long, default_value_t = 0.1)]
    pub tolerance: f64,
    /// Scale-up stabilization window.
    #[arg(long, default_value = "0s", value_parser = whole_seconds)]
    pub scale_up_window: u64,
    /// Scale-down stabilization window.
    #[arg(long, default_value = "30s", value_parser = whole_seconds)]
    pub scale_down_window: u64,
    /// Most instances added per step period [default: no limit].
    #[arg(long)]
    pub max_up_step: Option<u32>,
    /// Most instances removed per step period [default: no limit].
    #[arg(long)]
    pub max_down_step: Option<u32>,
    /// The period the step limits apply to.
    #[arg(long, default_value = "15s", value_parser = whole_seconds)]
    pub step_period: u64,
    /// How long a new instance's metrics are ignored.
    #[arg(long, default_value = "0s", value_parser = whole_seconds)]
    pub warmup: u64,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Only this service's policy.
    #[arg(value_parser = service_name)]
    pub service: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(value_parser = service_name)]
    pub service: String,
}

/// `inflight`, `rps`, `p95-latency` or `cpu`.
pub fn parse_metric(s: &str) -> Result<ScalingMetric, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown metric `{s}`; use inflight, rps, p95-latency or cpu"))
}

/// A metric as its flag value.
pub fn metric_name(metric: ScalingMetric) -> &'static str {
    match metric {
        ScalingMetric::Inflight => "inflight",
        ScalingMetric::Rps => "rps",
        ScalingMetric::P95Latency => "p95-latency",
        ScalingMetric::Cpu => "cpu",
    }
}

impl SetArgs {
    /// The policy these flags describe, validated.
    pub fn policy(&self) -> Result<ScalingPolicy, Failure> {
        let policy = ScalingPolicy {
            service: self.service.clone(),
            min: self.min,
            max: self.max,
            metric: self.metric,
            target: self.target,
            tolerance: self.tolerance,
            scale_up_stabilization_secs: self.scale_up_window,
            scale_down_stabilization_secs: self.scale_down_window,
            max_scale_up_step: self.max_up_step,
            max_scale_down_step: self.max_down_step,
            step_period_secs: self.step_period,
            warmup_secs: self.warmup,
            // A new policy replaces the old one whole, pin included.
            pinned: None,
        };
        policy
            .validate()
            .map_err(|e| Failure::Usage(anyhow!("invalid policy: {e}")))?;
        Ok(policy)
    }
}

pub async fn run(command: PolicyCommand) -> Outcome {
    let args = command.etcd;
    let store = etcd::store(&args).await?;
    let failure = |e| etcd::store_failure(&args, e);
    match command.action {
        PolicyAction::Set(set) => {
            let policy = set.policy()?;
            store.put_policy(&policy).await.map_err(failure)?;
            out::finish([pretty_json(&policy)?])?;
        }
        PolicyAction::Get(get) => {
            let lines = match &get.service {
                Some(service) => {
                    let policy = store
                        .policy(service)
                        .await
                        .map_err(failure)?
                        .ok_or_else(|| Failure::Runtime(no_policy(service)))?
                        .value;
                    match get.output {
                        OutputFormat::Table => table(&[policy]),
                        OutputFormat::Json => vec![pretty_json(&policy)?],
                    }
                }
                None => {
                    let policies = store.policies().await.map_err(failure)?;
                    match get.output {
                        OutputFormat::Table => {
                            if policies.is_empty() {
                                eprintln!("no policies under {}", args.prefix.policies());
                            }
                            table(&policies)
                        }
                        OutputFormat::Json => vec![pretty_json(&policies)?],
                    }
                }
            };
            out::finish(lines)?;
        }
        PolicyAction::Delete(delete) => {
            let deleted = store
                .delete_policy(&delete.service)
                .await
                .map_err(failure)?;
            let line = if deleted {
                format!("deleted the policy for {}", delete.service)
            } else {
                format!(
                    "there was no policy for {}; nothing deleted",
                    delete.service
                )
            };
            out::finish([line])?;
        }
    }
    Ok(OK)
}

/// "no policy for SERVICE", with the command that makes one.
pub fn no_policy(service: &str) -> anyhow::Error {
    anyhow!(
        "no policy for {service}; create one with autoscaler policy set {service} --min N --max N --metric inflight|rps|p95-latency|cpu --target X"
    )
}

/// `30s`, or `-` for zero.
fn secs(s: u64) -> String {
    if s == 0 {
        "-".to_owned()
    } else {
        format!("{s}s")
    }
}

fn step(step: Option<u32>, period: u64) -> String {
    match step {
        Some(n) => format!("{n}/{period}s"),
        None => "-".to_owned(),
    }
}

/// One row per policy.
pub fn table(policies: &[ScalingPolicy]) -> Vec<String> {
    let rows: Vec<[String; 11]> = policies
        .iter()
        .map(|p| {
            [
                p.service.clone(),
                p.min.to_string(),
                p.max.to_string(),
                metric_name(p.metric).to_owned(),
                p.target.to_string(),
                format!("{}%", (p.tolerance * 1000.0).round() / 10.0),
                secs(p.scale_up_stabilization_secs),
                secs(p.scale_down_stabilization_secs),
                step(p.max_scale_up_step, p.step_period_secs),
                step(p.max_scale_down_step, p.step_period_secs),
                secs(p.warmup_secs),
            ]
        })
        .collect();
    out::table(
        [
            "SERVICE",
            "MIN",
            "MAX",
            "METRIC",
            "TARGET",
            "TOLERANCE",
            "UP-WINDOW",
            "DOWN-WINDOW",
            "UP-STEP",
            "DOWN-STEP",
            "WARMUP",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_windows_steps_and_tolerance() {
        let policy = ScalingPolicy {
            service: "app".into(),
            min: 0,
            max: 4,
            metric: ScalingMetric::P95Latency,
            target: 250.0,
            tolerance: 0.1,
            scale_up_stabilization_secs: 0,
            scale_down_stabilization_secs: 30,
            max_scale_up_step: Some(2),
            max_scale_down_step: None,
            step_period_secs: 15,
            warmup_secs: 5,
            pinned: None,
        };
        assert_eq!(
            table(&[policy]),
            [
                "SERVICE  MIN  MAX  METRIC       TARGET  TOLERANCE  UP-WINDOW  DOWN-WINDOW  UP-STEP  DOWN-STEP  WARMUP",
                "app      0    4    p95-latency  250     10%        -          30s          2/15s    -          5s",
            ]
        );
    }

    #[test]
    fn every_metric_round_trips_through_its_flag_value() {
        for metric in [
            ScalingMetric::Inflight,
            ScalingMetric::Rps,
            ScalingMetric::P95Latency,
            ScalingMetric::Cpu,
        ] {
            assert_eq!(parse_metric(metric_name(metric)), Ok(metric));
        }
    }

    #[test]
    fn the_missing_policy_message_says_how_to_make_one() {
        assert!(
            no_policy("app").to_string().starts_with(
                "no policy for app; create one with autoscaler policy set app --min N"
            )
        );
    }
}
