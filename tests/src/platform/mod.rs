//! The test platform: one builder that starts a fresh etcd and, on it,
//! whatever a test, an experiment or a fault needs of Shoal: the operator's
//! routes and policies, app servers, gateways and `autoscaler run`
//! controllers (process driver), and hands back a [`Platform`] holding them.
//!
//! ```ignore
//! let platform = Platform::builder()
//!     .route("kv", KV_ROUTE)
//!     .pinned(3)
//!     .gateway(&["--reuse-port"])
//!     .autoscalers(1)
//!     .start()
//!     .await;
//! ```
//!
//! - [`builder`]: [`PlatformBuilder`], what to start and what to wait for.
//! - [`steady`]: the steady state (`app`'s instances all registered, ready
//!   and routed to) and waits on it, what the fault suite calls recovered.
//!
//! Everything is killed on drop, in an order that lets each part leave
//! cleanly: the controllers first (they stop their instances while etcd
//! still answers), then the gateways, the app servers, and etcd.

mod builder;
mod steady;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use builder::PlatformBuilder;
pub use steady::short;

use crate::binaries::{AppServer, AppServerOptions, wait_instances_ready};
use crate::{Autoscaler, Etcd, Gateway};

/// The service every platform's policies, steady state and app servers
/// default to.
pub const APP: &str = "app";

/// The `/kv/` route: service `app` by consistent hash on the key (the first
/// path segment), as the key-value store wants its clients routed.
pub const KV_ROUTE: &str = r#"{"path_prefix":"/kv/","service":"app","policy":"consistent-hash","hash_key":{"from":"path-segment","name":0}}"#;

/// A policy that holds `service` at `instances` whatever the load (the
/// target is out of reach), for experiments and faults that need a fixed
/// count the autoscaler keeps and replaces.
pub fn pinned_policy(service: &str, instances: usize) -> String {
    format!(
        r#"{{"service":"{service}","min":1,"max":16,"metric":"inflight","target":1000,"pinned":{instances}}}"#
    )
}

/// An HTTP client that never goes through a proxy from the environment,
/// with a whole-request `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("a reqwest client")
}

/// A running platform. Its fields are public so that a test can take what
/// it needs apart (kill an app server, replace the gateway, restart etcd).
pub struct Platform {
    // Dropped in this order (see the module doc).
    pub autoscalers: Vec<Autoscaler>,
    pub gateways: Vec<Gateway>,
    /// The app servers the builder started (not the autoscalers' instances).
    pub app_servers: Vec<AppServer>,
    pub client: etcd_client::Client,
    /// No proxy, 10 s per request.
    pub http: reqwest::Client,
    /// Ready instances of `app` the steady state has ([`steady`]).
    pub expected: usize,
    /// Pids of processes the platform did not start and that must not
    /// outlive it (instances orphaned by a killed controller): SIGKILLed on
    /// drop.
    pub strays: Vec<u32>,
    /// The operator's configuration the builder wrote: (key, value).
    config: Vec<(String, String)>,
    pub etcd: Etcd,
}

impl Platform {
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::default()
    }

    /// The first gateway; panics if the platform was built without one.
    pub fn gateway(&self) -> &Gateway {
        self.gateways
            .first()
            .expect("this platform was built without .gateway(...)")
    }

    /// The first gateway, to replace it in place.
    pub fn gateway_mut(&mut self) -> &mut Gateway {
        self.gateways
            .first_mut()
            .expect("this platform was built without .gateway(...)")
    }

    /// The first controller; panics if the platform was built without one.
    pub fn autoscaler(&self) -> &Autoscaler {
        self.autoscalers
            .first()
            .expect("this platform was built without .autoscalers(...)")
    }

    /// Start one more gateway with `flags` (for a test that writes to etcd
    /// before the gateway reads it) and wait until it lists the builder's app
    /// servers ready; it is the last of [`Platform::gateways`].
    pub async fn start_gateway(&mut self, flags: &[&str]) -> &Gateway {
        let gateway = Gateway::start(&self.etcd, flags).await;
        self.wait_lists_app_servers(&gateway)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.gateways.push(gateway);
        self.gateways.last().expect("just pushed")
    }

    /// Write the routes and policies the builder wrote again, as an
    /// operator restoring a backup would after etcd lost everything.
    pub async fn write_config(&self) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        for (key, value) in &self.config {
            client.put(key.as_str(), value.as_str(), None).await?;
        }
        Ok(())
    }

    /// Start one more app server against this platform's etcd and wait
    /// until it is registered and ready; the caller owns it.
    pub async fn start_app_server(&self, options: AppServerOptions) -> AppServer {
        let server = AppServer::start(&self.etcd, options).await;
        wait_instances_ready(&self.client, std::slice::from_ref(&server))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        server
    }

    /// Start `n` more app servers of `service` with default options (see
    /// [`Platform::start_app_server`]).
    pub async fn start_app_servers(&self, n: usize, service: &str) -> Vec<AppServer> {
        let mut servers = Vec::new();
        for _ in 0..n {
            let options = AppServerOptions::for_service(service);
            servers.push(AppServer::start(&self.etcd, options).await);
        }
        wait_instances_ready(&self.client, &servers)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        servers
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for pid in &self.strays {
            // Already gone is fine: it drained or was killed by the test.
            let _gone = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}
