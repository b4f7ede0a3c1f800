//! `autoscaler scale SERVICE N`: pin a service at N instances by setting
//! `min = max = N` on its existing policy. The write is a transaction on the
//! policy's revision, so a concurrent `policy set` is not silently undone.

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
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The service to pin.
    #[arg(value_parser = service_name)]
    pub service: String,
    /// The replica count (1..=1000).
    pub replicas: u32,
}

pub async fn run(args: ScaleArgs) -> Outcome {
    let etcd_args = &args.etcd;
    let mut client = etcd::connect(etcd_args).await?;
    let (mut policy, revision) = read_with_revision(&mut client, etcd_args, &args.service)
        .await?
        .ok_or_else(|| Failure::Runtime(no_policy(&args.service)))?;
    policy.min = args.replicas;
    policy.max = args.replicas;
    policy
        .validate()
        .map_err(|e| Failure::Usage(anyhow!("cannot scale to {}: {e}", args.replicas)))?;
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
    out::finish([format!(
        "pinned {} at {} (min = max = {})",
        args.service, args.replicas, args.replicas
    )])?;
    Ok(OK)
}
