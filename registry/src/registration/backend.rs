//! The lease operations the keeper needs (and the one read that tells it its
//! key is still there), behind a trait so the keeper's timing can be
//! unit-tested on paused tokio time with an in-memory backend.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions};

use crate::config::ETCD_CALL_TIMEOUT;

/// A failed lease or put operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// etcd answered that the lease does not exist (expired, revoked, or etcd wiped).
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd: {0}")]
    Etcd(String),
}

/// A keep-alive attempt may take this part of the lease TTL. The first is
/// sent a third of the way in, so three more fit before the lease could
/// expire; on an etcd cluster a call that went to a member cut off hangs
/// rather than fails, and the next attempt, on a new stream, may go to
/// another member.
pub const ATTEMPTS_PER_TTL: u32 = 6;

/// `call` (a keep-alive, or the check after it, on a lease of `ttl`), given
/// up with [`BackendError::Timeout`] after `ttl / ATTEMPTS_PER_TTL`.
pub async fn attempt<T>(
    ttl: Duration,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let deadline = ttl / ATTEMPTS_PER_TTL;
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or(Err(BackendError::Timeout(deadline)))
}

/// What a lease keeper needs from etcd.
pub trait LeaseBackend: Send + 'static {
    /// Grant a lease of `ttl` and return its id.
    fn grant(&mut self, ttl: Duration) -> impl Future<Output = Result<i64, BackendError>> + Send;
    /// Put `value` at `key` attached to `lease`.
    fn put(
        &mut self,
        key: &str,
        value: String,
        lease: i64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Refresh `lease`; returns the TTL etcd granted, 0 when the lease is gone.
    fn keep_alive(&mut self, lease: i64) -> impl Future<Output = Result<i64, BackendError>> + Send;
    /// Revoke `lease`, deleting every key attached to it.
    fn revoke(&mut self, lease: i64) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Whether `key` exists on `lease` (false when it was deleted, e.g. by
    /// an operator's `etcdctl del --prefix`, while the lease lives on).
    fn holds(
        &mut self,
        key: &str,
        lease: i64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;
}

/// The real backend. Keeps one keep-alive stream open per lease and opens a
/// new one whenever the old one fails.
pub struct EtcdLeases {
    client: Client,
    stream: Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>,
}

impl EtcdLeases {
    pub fn new(client: Client) -> Self {
        EtcdLeases {
            client,
            stream: None,
        }
    }
}

async fn bounded<T>(
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
    lease: i64,
) -> Result<T, BackendError> {
    match tokio::time::timeout(ETCD_CALL_TIMEOUT, fut).await {
        Err(_) => Err(BackendError::Timeout(ETCD_CALL_TIMEOUT)),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(e, lease)),
    }
}

fn classify(e: etcd_client::Error, lease: i64) -> BackendError {
    let text = e.to_string();
    if text.contains("lease not found") {
        BackendError::LeaseNotFound(lease)
    } else {
        BackendError::Etcd(text)
    }
}

impl LeaseBackend for EtcdLeases {
    async fn grant(&mut self, ttl: Duration) -> Result<i64, BackendError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = bounded(self.client.lease_grant(secs, None), 0).await?;
        Ok(resp.id())
    }

    async fn put(&mut self, key: &str, value: String, lease: i64) -> Result<(), BackendError> {
        let options = PutOptions::new().with_lease(lease);
        bounded(self.client.put(key, value, Some(options)), lease).await?;
        Ok(())
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<i64, BackendError> {
        // Taken out while in use and put back only after an answer: a call
        // its caller gave up on (a member cut off, the connection hung)
        // leaves no stream behind, and the next call opens a new one, which
        // may go to another member.
        let (keeper, stream) = match self.stream.take() {
            Some((id, keeper, stream)) if id == lease => (keeper, stream),
            _ => {
                // etcd-client reports a lease that is gone when the stream
                // opens as an error, and on an open stream as TTL 0: the
                // trait says 0.
                match bounded(self.client.lease_keep_alive(lease), lease).await {
                    Err(BackendError::LeaseNotFound(_)) => return Ok(0),
                    opened => opened?,
                }
            }
        };
        let (mut keeper, mut stream) = (keeper, stream);
        let result = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match bounded(result, lease).await {
            Ok(Some(resp)) => {
                self.stream = Some((lease, keeper, stream));
                Ok(resp.ttl())
            }
            Ok(None) => Err(BackendError::Etcd("keep-alive stream closed".into())),
            Err(e) => Err(e),
        }
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), BackendError> {
        self.stream = None;
        match bounded(self.client.lease_revoke(lease), lease).await {
            Err(BackendError::LeaseNotFound(_)) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn holds(&mut self, key: &str, lease: i64) -> Result<bool, BackendError> {
        let options = GetOptions::new().with_keys_only();
        let resp = bounded(self.client.get(key, Some(options)), lease).await?;
        Ok(resp.kvs().first().is_some_and(|kv| kv.lease() == lease))
    }
}
