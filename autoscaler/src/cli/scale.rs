//! `autoscaler scale SERVICE N`: pin a service at N instances (the policy's
//! `pinned` field overrides the metric; `min` and `max` are kept), and
//! `autoscaler scale SERVICE --unpin` to hand it back to the metric. The
//! store's pin is a compare-and-set on the policy's revision, so a concurrent
//! `policy set` is not silently undone.

use anyhow::anyhow;
use clap::Args;
use registry::EtcdArgs;
use registry::StoreError;
use registry::cli::exit::{Failure, OK};
use registry::cli::{etcd, out};

use super::policy::no_policy;
use super::{Outcome, service_name};

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// `--etcd`, `--prefix`, ...: parsed at the top level (before or after the
    /// subcommand) and filled in by `main`.
    #[arg(skip)]
    pub etcd: EtcdArgs,
    /// The service to pin.
    #[arg(value_parser = service_name)]
    pub service: String,
    /// The replica count to pin (0..=1000; 0 stops every instance).
    #[arg(
        required_unless_present = "unpin",
        conflicts_with = "unpin",
        value_parser = clap::value_parser!(u32).range(0..=1000)
    )]
    pub replicas: Option<u32>,
    /// Remove the pin: the metric decides again, within min and max.
    #[arg(long)]
    pub unpin: bool,
}

pub async fn run(args: ScaleArgs) -> Outcome {
    let etcd_args = &args.etcd;
    let store = etcd::store(etcd_args).await?;
    let service = args.service.as_str();
    let change = store
        .set_pin(service, args.replicas)
        .await
        .map_err(|e| match e {
            StoreError::NoPolicy { .. } => Failure::Runtime(no_policy(service)),
            StoreError::Invalid(e) => Failure::Usage(anyhow!(
                "cannot scale to {}: {e}",
                args.replicas.unwrap_or_default()
            )),
            StoreError::Malformed(e) => Failure::Runtime(anyhow!(
                "the stored policy is malformed: {e}; replace it with autoscaler policy set {service} ..."
            )),
            StoreError::Conflict { .. } => Failure::Runtime(anyhow!(
                "the policy for {service} changed while it was being pinned; run the command again"
            )),
            other => etcd::store_failure(etcd_args, other),
        })?;
    let (policy, was) = (change.policy, change.was);
    if args.unpin && was.is_none() {
        out::finish([format!("{service} was not pinned; nothing changed")])?;
        return Ok(OK);
    }
    let message = match (args.replicas, was) {
        (Some(n), _) => format!(
            "pinned {} at {n}; `autoscaler scale {} --unpin` hands it back to the metric",
            args.service, args.service
        ),
        (None, Some(n)) => format!(
            "unpinned {} (was {n}); the {} metric decides again, within {}..={}",
            args.service,
            super::policy::metric_name(policy.metric),
            policy.min,
            policy.max
        ),
        (None, None) => unreachable!("returned above"),
    };
    out::finish([message])?;
    Ok(OK)
}
