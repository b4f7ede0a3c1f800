//! Reaching etcd from a command: a bounded first call, and one message that
//! tells the operator what to do when etcd is not there.

use crate::EtcdArgs;
use crate::config::ETCD_CALL_TIMEOUT;
use anyhow::anyhow;
use etcd_client::{Client, GetOptions, GetResponse};

use super::exit::Failure;

/// A client for `args`. The connection itself is made by the first call.
pub async fn connect(args: &EtcdArgs) -> Result<Client, Failure> {
    args.connect()
        .await
        .map_err(|e| unreachable(args, describe(&e)))
}

/// Every key under `prefix`, or the "cannot reach etcd" failure.
pub async fn get_prefix(
    client: &mut Client,
    args: &EtcdArgs,
    prefix: &str,
) -> Result<GetResponse, Failure> {
    let options = GetOptions::new().with_prefix();
    bounded(args, client.get(prefix, Some(options))).await
}

/// Answer whether etcd is there at all.
pub async fn check(client: &mut Client, args: &EtcdArgs) -> Result<(), Failure> {
    let options = GetOptions::new().with_prefix().with_count_only();
    bounded(args, client.get(args.prefix.root(), Some(options))).await?;
    Ok(())
}

/// One etcd call, given up after [`ETCD_CALL_TIMEOUT`]; a failure or a
/// timeout is the "cannot reach etcd" failure (exit code 2).
pub async fn bounded<T>(
    args: &EtcdArgs,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(ETCD_CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(unreachable(args, describe(&e))),
        Err(_) => Err(unreachable(
            args,
            format!("no answer within {ETCD_CALL_TIMEOUT:?}"),
        )),
    }
}

/// The failure (exit code 2) for an etcd that does not answer.
pub fn unreachable(args: &EtcdArgs, error: impl std::fmt::Display) -> Failure {
    Failure::Usage(anyhow!(
        "cannot reach etcd at {}: {error}. Is etcd running? Start the platform with ./scripts/up, or pass --etcd URL.",
        args.endpoints.join(",")
    ))
}

/// The useful part of an etcd client error: for a gRPC status, its message and
/// root cause (`tcp connect error: Connection refused (os error 111)`) rather
/// than the whole debug chain.
fn describe(error: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return error.to_string();
    };
    let mut root = None;
    let mut next = std::error::Error::source(status);
    while let Some(cause) = next {
        root = Some(cause);
        next = cause.source();
    }
    match (status.message(), root) {
        ("", None) => format!("{:?}", status.code()),
        ("", Some(root)) => root.to_string(),
        (message, None) => message.to_owned(),
        (message, Some(root)) => format!("{message}: {root}"),
    }
}
