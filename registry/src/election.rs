//! Leader election on etcd and transactions fenced on leadership.
//!
//! [`Election::campaign`] grants a lease, keeps it alive in a background task
//! and blocks until this candidate holds the election key. The returned
//! [`Leadership`] runs transactions only while its key is still the one it
//! won: [`Leadership::fence`] is what the store's fenced commit
//! ([`Store::commit`](crate::store::Store::commit)) compares, the key's create
//! revision, so a deposed leader can never act, even before it notices. Its
//! `lost()` token fires as soon as the lease cannot be kept, or when a
//! fenced write finds the leadership gone ([`Leadership::deposed`]).

use std::time::Duration;

use etcd_client::{Client, LeaderKey, ResignOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ETCD_CALL_TIMEOUT;
use crate::keys::Keys;
use crate::registration::backend::{BackendError, EtcdLeases, LeaseBackend, attempt};
use crate::store::Fence;

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("lease: {0}")]
    Lease(#[from] crate::registration::backend::BackendError),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("leadership lost")]
    Lost,
}

/// One election (by default the autoscaler's, at `{prefix}/autoscaler/leader`).
#[derive(Clone)]
pub struct Election {
    client: Client,
    name: String,
}

impl Election {
    pub fn new(client: Client, keys: &Keys) -> Self {
        Election {
            client,
            name: keys.leader(),
        }
    }

    /// Campaign with `value` (e.g. this controller's id) on a lease of `ttl`;
    /// returns once elected.
    pub async fn campaign(&self, value: &str, ttl: Duration) -> Result<Leadership, ElectionError> {
        let mut leases = EtcdLeases::new(self.client.clone());
        let lease = leases.grant(ttl).await?;
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_lease(leases, lease, ttl, lost.clone()));
        let mut client = self.client.clone();
        let won = tokio::select! {
            r = client.campaign(self.name.as_str(), value, lease) => r,
            _ = lost.cancelled() => Err(etcd_client::Error::ElectError("lease lost while campaigning".into())),
        };
        match won.map(|mut r| r.take_leader()) {
            Ok(Some(key)) => {
                info!(election = %self.name, lease, "elected leader");
                Ok(Leadership {
                    client: self.client.clone(),
                    key,
                    lease,
                    lost,
                    keeper,
                })
            }
            Ok(None) => {
                keeper.abort();
                Err(ElectionError::Etcd(etcd_client::Error::ElectError(
                    "campaign answered without a key".into(),
                )))
            }
            Err(e) => {
                keeper.abort();
                let mut client = self.client.clone();
                if let Err(revoke) = client.lease_revoke(lease).await {
                    warn!(lease, error = %revoke, "cannot revoke campaign lease; it will expire");
                }
                Err(e.into())
            }
        }
    }

    /// The current leader's value, if there is a leader.
    pub async fn leader(&self) -> Result<Option<String>, ElectionError> {
        let mut client = self.client.clone();
        match tokio::time::timeout(ETCD_CALL_TIMEOUT, client.leader(self.name.as_str())).await {
            Err(_) => Err(ElectionError::Timeout(ETCD_CALL_TIMEOUT)),
            Ok(Ok(resp)) => Ok(resp
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            Ok(Err(e)) if e.to_string().contains("no leader") => Ok(None),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Follow the leader's value as it changes.
    pub async fn observe(&self) -> Result<etcd_client::ObserveStream, ElectionError> {
        let mut client = self.client.clone();
        Ok(client.observe(self.name.as_str()).await?)
    }
}

/// Holding the election. Drop or [`Leadership::resign`] to give it up.
pub struct Leadership {
    client: Client,
    key: LeaderKey,
    lease: i64,
    lost: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
}

impl Leadership {
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Cancelled when the lease could not be kept alive or a fenced transaction failed.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// What a write fenced on this leadership compares: the election key
    /// and the revision that created it.
    pub fn fence(&self) -> Fence {
        Fence {
            key: String::from_utf8_lossy(self.key.key()).into_owned(),
            create_revision: self.key.rev(),
        }
    }

    /// A fenced write found the election key no longer ours: give up now.
    pub fn deposed(&self) {
        if !self.lost.is_cancelled() {
            warn!(
                lease = self.lease,
                "fenced transaction refused: no longer the leader"
            );
        }
        self.lost.cancel();
    }

    /// Give up leadership now (another candidate is elected at once).
    pub async fn resign(self) {
        let mut client = self.client.clone();
        let options = ResignOptions::new().with_leader(self.key.clone());
        if let Err(e) = client.resign(Some(options)).await {
            warn!(error = %e, "resign failed; the lease revoke below ends leadership anyway");
        }
        if let Err(e) = client.lease_revoke(self.lease).await {
            warn!(lease = self.lease, error = %e, "cannot revoke leader lease; it will expire");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
        self.lost.cancel();
    }
}

/// Keep `lease` alive every ttl/3; cancel `lost` when it is gone or a whole
/// TTL passes without a successful keep-alive (another candidate may then win).
/// An attempt that does not answer within a
/// [`crate::registration::backend::ATTEMPTS_PER_TTL`]th of the TTL
/// is given up and the next sent at once (an etcd member cut off hangs
/// calls rather than failing them).
async fn keep_lease(mut leases: EtcdLeases, lease: i64, ttl: Duration, lost: CancellationToken) {
    let mut last_ok = Instant::now();
    let mut wait = ttl / 3;
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = ttl / 3;
        match attempt(ttl, leases.keep_alive(lease)).await {
            Ok(t) if t > 0 => last_ok = Instant::now(),
            Ok(_) => {
                warn!(lease, "leader lease expired");
                lost.cancel();
                return;
            }
            Err(e) => {
                warn!(lease, error = %e, "leader keep-alive failed");
                if last_ok.elapsed() >= ttl {
                    lost.cancel();
                    return;
                }
                if matches!(e, BackendError::Timeout(_)) {
                    wait = Duration::ZERO;
                }
            }
        }
    }
}
