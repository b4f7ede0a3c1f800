//! `autoscaler scale SERVICE N`: pin a service at N instances (the policy's
//! `pinned` field overrides the metric; `min` and `max` are kept), and
//! `autoscaler scale SERVICE --unpin` to hand it back to the metric. The write
//! is a transaction on the policy's revision, so a concurrent `policy set` is
//! not silently undone.

use anyhow::anyhow;
use clap::Args;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use registry::EtcdArgs;
use registry::cli::exit::{Failure, OK};
use registry::cli::{etcd, out};

use super::policy::{no_policy, read_with_revision};
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
    let mut client = etcd::connect(etcd_args).await?;
    let (mut policy, revision) = read_with_revision(&mut client, etcd_args, &args.service)
        .await?
        .ok_or_else(|| Failure::Runtime(no_policy(&args.service)))?;
    let was = policy.pinned;
    if args.unpin && was.is_none() {
        out::finish([format!("{} was not pinned; nothing changed", args.service)])?;
        return Ok(OK);
    }
    policy.pinned = args.replicas;
    if let Some(n) = args.replicas {
        policy
            .validate()
            .map_err(|e| Failure::Usage(anyhow!("cannot scale to {n}: {e}")))?;
    }
    let key = etcd_args.prefix.policy(&args.service);
    let json = serde_json::to_string(&policy)
        .map_err(|e| Failure::Runtime(anyhow!("cannot encode the policy: {e}")))?;
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::put(key.as_str(), json, None)]);
    let response = etcd::bounded(etcd_args, client.txn(txn)).await?;
    if !response.succeeded() {
        return Err(Failure::Runtime(anyhow!(
            "the policy for {} changed while it was being pinned; run the command again",
            args.service
        )));
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
