//! The gateway's own entry in the registry: `{prefix}/gateways/{id}` with its
//! admin address, kept on a lease (the same keeper instances use, see
//! `registry::registration`), so the autoscaler finds every live gateway's
//! stats and a crashed gateway disappears within a TTL.

use std::time::Duration;

use etcd_client::Client;
use registry::Registration;
use registry::keys::Keys;
use registry::model::{GatewayInfo, ValidationError};
use tracing::info;

/// The gateway's registration; withdraw it on shutdown.
pub struct Announcement {
    registration: Registration<GatewayInfo>,
}

#[derive(Debug, thiserror::Error)]
#[error("the gateway cannot announce itself: {0}")]
pub struct AnnounceError(#[from] ValidationError);

impl Announcement {
    /// Start keeping `{id, admin_addr}` in the registry on a lease of `ttl`.
    /// Returns at once; the keeper registers as soon as etcd answers.
    pub fn start(
        client: Client,
        keys: &Keys,
        id: &str,
        admin_addr: &str,
        ttl: Duration,
    ) -> Result<Self, AnnounceError> {
        let info = GatewayInfo {
            id: id.to_owned(),
            admin_addr: admin_addr.to_owned(),
            started_at: chrono::Utc::now(),
        };
        let registration = Registration::start(client, keys, info, ttl)?;
        info!(
            key = registration.key(),
            admin_addr, "announcing the gateway"
        );
        Ok(Announcement { registration })
    }

    pub fn key(&self) -> &str {
        self.registration.key()
    }

    /// Whether the entry is in etcd on a live lease, as far as the keeper knows.
    pub fn is_registered(&self) -> bool {
        self.registration.status().registered
    }

    /// Revoke the lease, deleting the entry.
    pub async fn withdraw(self) {
        let key = self.registration.key().to_owned();
        self.registration.deregister().await;
        info!(%key, "gateway entry withdrawn");
    }
}
