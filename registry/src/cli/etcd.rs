//! Reaching etcd from a command: a bounded first call, and one message that
//! tells the operator what to do when etcd is not there.

use crate::EtcdArgs;
use crate::config::{ConnectError, ETCD_CALL_TIMEOUT};
use crate::store::{Store, StoreError};
use anyhow::anyhow;
use etcd_client::{Client, GetOptions, GetResponse};

use super::exit::Failure;

/// A client for `args`. The connection itself is made by the first call.
pub async fn connect(args: &EtcdArgs) -> Result<Client, Failure> {
    args.connect().await.map_err(|e| match e {
        ConnectError::Config(e) => Failure::Usage(anyhow!("{e}")),
        ConnectError::Etcd { source, .. } => unreachable(args, describe(&source)),
    })
}

/// The registry store for `args` (the connection is made by the first call).
pub async fn store(args: &EtcdArgs) -> Result<Store, Failure> {
    Ok(Store::etcd(connect(args).await?, args.prefix.clone()))
}

/// A store error as a command's failure: etcd missing is the "cannot reach
/// etcd" failure (exit 2, with advice), bad input or a user without the
/// rights exit 2, anything else (the command adds its own advice first
/// where it has some) exit 1.
pub fn store_failure(args: &EtcdArgs, error: StoreError) -> Failure {
    match error {
        StoreError::Unavailable { detail, .. } => unreachable(args, detail),
        StoreError::Invalid(_) | StoreError::Denied { .. } => Failure::Usage(anyhow!("{error}")),
        other => Failure::Runtime(anyhow!("{other}")),
    }
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

/// The failure (exit code 2) for an etcd that does not answer, or refuses
/// our credentials: the advice depends on which.
pub fn unreachable(args: &EtcdArgs, error: impl std::fmt::Display) -> Failure {
    let error = error.to_string();
    let endpoints = args.endpoints.join(",");
    Failure::Usage(match security_hint(args, &error) {
        Some(hint) => anyhow!("etcd at {endpoints} refused the connection: {error}. {hint}"),
        None => anyhow!(
            "cannot reach etcd at {endpoints}: {error}. Is etcd running? Start the platform with ./scripts/up, or pass --etcd URL."
        ),
    })
}

/// What to check when `error` is about TLS or authentication rather than a
/// missing etcd.
pub fn security_hint(args: &EtcdArgs, error: &str) -> Option<&'static str> {
    let lower = error.to_ascii_lowercase();
    // With TLS 1.3 a server that wants a client certificate refuses it after
    // the client's side of the handshake is done: depending on timing the
    // client sees its alert (BadCertificate, CertificateRequired), only the
    // connection close, or a broken pipe when its first write meets the close.
    if args.tls_without_client_cert()
        && [
            "connection closed",
            "broken pipe",
            "badcertificate",
            "certificaterequired",
        ]
        .iter()
        .any(|sign| lower.contains(sign))
    {
        return Some(
            "etcd refused the TLS connection without a client certificate, which it does when it requires them (--client-cert-auth): pass --etcd-cert and --etcd-key.",
        );
    }
    if lower.contains("authentication failed") || lower.contains("invalid user id or password") {
        Some("Check --etcd-user and --etcd-password (SHOAL_ETCD_USER, SHOAL_ETCD_PASSWORD).")
    } else if lower.contains("user name is empty")
        || lower.contains("permission denied")
        || lower.contains("invalid auth token")
    {
        Some(
            "etcd has authentication enabled: pass --etcd-user and --etcd-password for a user whose role may read and write the prefix.",
        )
    } else if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("tls")
        || lower.contains("handshake")
    {
        Some(
            "The TLS handshake failed: check that --etcd-ca is the CA that signed etcd's certificate, and pass --etcd-cert/--etcd-key if etcd requires client certificates.",
        )
    } else {
        None
    }
}

/// The useful part of an etcd client error: for a gRPC status, its message and
/// root cause (`tcp connect error: Connection refused (os error 111)`) rather
/// than the whole debug chain.
pub fn describe(error: &etcd_client::Error) -> String {
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
