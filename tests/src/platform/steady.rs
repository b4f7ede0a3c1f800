//! The steady state of a platform, what recovering from a fault means:
//!
//! - **steady** ([`Platform::is_steady`]): exactly [`Platform::expected`]
//!   instances of `app` are registered, all ready; and, if the platform has
//!   a gateway, it lists each of them as ready and says it is connected to
//!   etcd;
//! - **recovered** ([`Platform::wait_recovered`]): steady, and a change
//!   written to etcd now (a probe instance) reaches the gateway's table, so
//!   its watch is live again and not only its last table intact.

use std::time::{Duration, Instant};

use anyhow::bail;
use registry::{Instance, InstanceState, Keys};

use super::{APP, Platform};
use crate::binaries::service_instances;
use crate::wait::wait_until_async;

/// The service of the probe instance [`Platform::gateway_watch_live`]
/// writes (the name bench/README.md gives it, from the fault suite).
const PROBE_SERVICE: &str = "faults-probe";

/// The first 8 characters of an id.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

impl Platform {
    /// The steady state (see the module doc).
    pub async fn is_steady(&self) -> bool {
        let registered = service_instances(&self.client, APP).await;
        if registered.len() != self.expected
            || registered.iter().any(|i| i.state != InstanceState::Ready)
        {
            return false;
        }
        let Some(gateway) = self.gateways.first() else {
            return true;
        };
        let Some(routed) = gateway.admin().ready_ids(&self.http, APP).await else {
            return false;
        };
        registered.iter().all(|i| routed.contains(&i.id))
            && gateway.admin().registry_connected(&self.http).await
    }

    /// Poll [`Platform::is_steady`]; how long it took, or an error saying
    /// what the registry and the gateway hold.
    pub async fn wait_steady(&self, timeout: Duration) -> anyhow::Result<Duration> {
        match wait_until_async(timeout, "the steady state", || self.is_steady()).await {
            Ok(took) => Ok(took),
            Err(e) => bail!("{e}: {}", self.describe().await),
        }
    }

    /// Whether a change written to etcd now reaches the gateway's table: a
    /// probe instance of service `faults-probe` (no lease, an address
    /// nothing listens on, never sent a request) is put, waited for in the
    /// gateway's `/api/v1/services/faults-probe` for up to `timeout`, and
    /// deleted.
    pub async fn gateway_watch_live(&self, timeout: Duration) -> bool {
        let gateway = self.gateway();
        let mut probe = Instance::new(PROBE_SERVICE, "127.0.0.1:9".to_owned());
        probe.state = InstanceState::Ready;
        let key = Keys::default().instance(PROBE_SERVICE, &probe.id);
        let mut client = self.client.clone();
        let put = tokio::time::timeout(
            Duration::from_secs(2),
            client.put(key.as_str(), probe.to_json(), None),
        )
        .await;
        if !matches!(put, Ok(Ok(_))) {
            return false;
        }
        let seen = wait_until_async(timeout, "the probe in the gateway", || async {
            gateway
                .admin()
                .instances(&self.http, PROBE_SERVICE)
                .await
                .is_some_and(|all| all.iter().any(|i| i["id"] == probe.id.as_str()))
        })
        .await
        .is_ok();
        let deleted =
            tokio::time::timeout(Duration::from_secs(2), client.delete(key.as_str(), None)).await;
        if !matches!(deleted, Ok(Ok(_))) {
            tracing::warn!(%key, "could not delete the probe instance; it has no lease and stays");
        }
        seen
    }

    /// Wait until recovered (see the module doc): steady, then a registry
    /// change reaches the gateway, retrying both until `timeout`; how long
    /// it took in all, or `None`.
    pub async fn wait_recovered(&self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let left = timeout.checked_sub(started.elapsed())?;
            wait_until_async(left, "the steady state", || self.is_steady())
                .await
                .ok()?;
            let left = timeout.checked_sub(started.elapsed())?;
            if self
                .gateway_watch_live(left.min(Duration::from_secs(5)))
                .await
            {
                return Some(started.elapsed());
            }
        }
    }

    /// What the registry and the gateway hold, for an error message.
    pub async fn describe(&self) -> String {
        let registered: Vec<String> = service_instances(&self.client, APP)
            .await
            .iter()
            .map(|i| format!("{} {:?}", short(&i.id), i.state))
            .collect();
        let Some(gateway) = self.gateways.first() else {
            return format!("registered {registered:?} (expected {})", self.expected);
        };
        let routed: Vec<String> = gateway
            .admin()
            .instances(&self.http, APP)
            .await
            .unwrap_or_default()
            .iter()
            .map(|i| format!("{} {}", short(i["id"].as_str().unwrap_or("?")), i["state"]))
            .collect();
        format!(
            "registered {registered:?} (expected {}), gateway lists {routed:?}, gateway connected {}",
            self.expected,
            gateway.admin().registry_connected(&self.http).await
        )
    }
}
