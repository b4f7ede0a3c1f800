//! The gateway's own entry in the registry: `{prefix}/gateways/{id}` with its
//! admin address, kept on a lease (the same keeper instances use, see
//! `registry::registration`), so the autoscaler finds every live gateway's
//! stats and a crashed gateway disappears within a TTL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// The admin address to announce: `--admin-advertise`, else the bound
/// address with an unspecified IP (0.0.0.0, ::) replaced by loopback.
pub fn admin_advertise(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(addr) = configured {
        return addr.to_owned();
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let loopback = match bound.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(loopback, bound.port()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_admin_address() {
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert_eq!(admin_advertise(None, any), "127.0.0.1:9090");
        let any6: SocketAddr = "[::]:9090".parse().unwrap();
        assert_eq!(admin_advertise(None, any6), "[::1]:9090");
        let bound: SocketAddr = "10.0.0.7:9090".parse().unwrap();
        assert_eq!(admin_advertise(None, bound), "10.0.0.7:9090");
        assert_eq!(admin_advertise(Some("gw-1:9090"), any), "gw-1:9090");
    }
}
