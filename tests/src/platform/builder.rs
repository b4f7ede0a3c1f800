//! [`PlatformBuilder`]: what a platform starts, in this order, and what
//! [`PlatformBuilder::start`] waits for before it returns.
//!
//! 1. etcd (also on a second address with [`PlatformBuilder::etcd_also_on`],
//!    or a cluster with [`PlatformBuilder::etcd_members`], whose endpoint
//!    list every part is given);
//! 2. the operator's routes and policies, written before anything reads them;
//! 3. app servers, each waited for until registered and ready;
//! 4. gateways, each waited for until it listens;
//! 5. `autoscaler run` controllers (ids `controller-0`, ...), not waited for,
//!    sharing one instance directory as controllers on one machine do (so a
//!    standby adopts a killed leader's instances);
//! 6. with gateways and app servers: each gateway lists every app server
//!    ready; with [`PlatformBuilder::pinned`]: the steady state.
//!
//! A platform whose controllers' instances crash or whose test watches the
//! first ones come up writes its policy with [`PlatformBuilder::policy`]
//! and waits itself.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use registry::Keys;

use super::{APP, Platform, http_client, pinned_policy};
use crate::autoscaler::instance_logs_dir;
use crate::binaries::{AppServer, AppServerOptions, wait_instances_ready};
use crate::{Autoscaler, Etcd, Gateway};

/// How long [`PlatformBuilder::start`] waits for the gateways to list the
/// app servers, and for the steady state.
const GATEWAY_LISTS: Duration = Duration::from_secs(10);
const STEADY: Duration = Duration::from_secs(60);

/// What to start; see the module doc for the order.
#[derive(Debug, Default, Clone)]
pub struct PlatformBuilder {
    etcd_also_on: Option<Ipv4Addr>,
    etcd_members: Option<usize>,
    routes: Vec<(String, String)>,
    policies: Vec<(String, String)>,
    app_servers: Vec<AppServerOptions>,
    gateways: Vec<Vec<String>>,
    autoscalers: usize,
    autoscaler_flags: Vec<String>,
    instance_env: Vec<(String, String)>,
    pinned: Option<usize>,
}

fn owned(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|s| s.to_string()).collect()
}

impl PlatformBuilder {
    /// etcd also serves clients on `ip` (the host end of a network namespace).
    pub fn etcd_also_on(mut self, ip: Ipv4Addr) -> Self {
        self.etcd_also_on = Some(ip);
        self
    }

    /// etcd is a cluster of `members` ([`Etcd::start_cluster`]): every
    /// part is given all their endpoints.
    pub fn etcd_members(mut self, members: usize) -> Self {
        self.etcd_members = Some(members);
        self
    }

    /// Write route `name` (Route JSON) before anything starts.
    pub fn route(mut self, name: &str, route: &str) -> Self {
        self.routes.push((name.to_owned(), route.to_owned()));
        self
    }

    /// Write `service`'s scaling policy (ScalingPolicy JSON) before anything starts.
    pub fn policy(mut self, service: &str, policy: &str) -> Self {
        self.policies.push((service.to_owned(), policy.to_owned()));
        self
    }

    /// Hold `app` at `instances` ([`pinned_policy`]) and have
    /// [`PlatformBuilder::start`] wait for the steady state with them.
    pub fn pinned(mut self, instances: usize) -> Self {
        self.pinned = Some(instances);
        self.policy(APP, &pinned_policy(APP, instances))
    }

    /// `n` app servers of `app` with the default options.
    pub fn app_servers(self, n: usize) -> Self {
        self.app_servers_with(n, AppServerOptions::default())
    }

    /// `n` app servers with `options` (another service, a lease TTL, flags).
    pub fn app_servers_with(mut self, n: usize, options: AppServerOptions) -> Self {
        self.app_servers.extend(std::iter::repeat_n(options, n));
        self
    }

    /// A gateway with `flags` after its listeners' (`--reuse-port`,
    /// `--default-policy round-robin`, ...); call again for another.
    pub fn gateway(mut self, flags: &[&str]) -> Self {
        self.gateways.push(owned(flags));
        self
    }

    /// `n` controllers, all with the flags of
    /// [`PlatformBuilder::autoscaler_flags`].
    pub fn autoscalers(mut self, n: usize) -> Self {
        self.autoscalers = n;
        self
    }

    /// The controllers' flags (`--interval 500ms`, `--lease-ttl 3s`, ...).
    pub fn autoscaler_flags(mut self, flags: &[&str]) -> Self {
        self.autoscaler_flags = owned(flags);
        self
    }

    /// An environment variable for the controllers, which their instances
    /// inherit (`SHOAL_KV_REPLICAS`, `SHOAL_CRASH_AFTER`).
    pub fn instance_env(mut self, key: &str, value: &str) -> Self {
        self.instance_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Start everything; panics with the reason if something does not come
    /// up (for tests).
    pub async fn start(self) -> Platform {
        self.try_start()
            .await
            .unwrap_or_else(|e| panic!("the platform did not start: {e:#}"))
    }

    /// Start everything; an error says what did not come up (for the
    /// benchmarks, which report it and go on).
    pub async fn try_start(self) -> anyhow::Result<Platform> {
        let etcd = match (self.etcd_also_on, self.etcd_members) {
            (Some(_), Some(_)) => anyhow::bail!("etcd_also_on is for a single etcd, not a cluster"),
            (Some(ip), None) => Etcd::start_also_on(ip).await,
            (None, Some(members)) => Etcd::start_cluster(members).await,
            (None, None) => Etcd::start().await,
        };
        let client = etcd.client().await;
        let keys = Keys::default();
        let config: Vec<(String, String)> = self
            .routes
            .iter()
            .map(|(name, route)| (keys.route(name), route.clone()))
            .chain(
                self.policies
                    .iter()
                    .map(|(service, policy)| (keys.policy(service), policy.clone())),
            )
            .collect();
        let mut app_servers = Vec::new();
        for options in &self.app_servers {
            app_servers.push(AppServer::start(&etcd, options.clone()).await);
        }
        let expected =
            self.pinned.unwrap_or(0) + app_servers.iter().filter(|s| s.service == APP).count();
        let mut platform = Platform {
            autoscalers: Vec::new(),
            gateways: Vec::new(),
            app_servers,
            client,
            http: http_client(Duration::from_secs(10)),
            expected,
            strays: Vec::new(),
            config,
            etcd,
        };
        platform
            .write_config()
            .await
            .context("writing routes and policies")?;
        wait_instances_ready(&platform.client, &platform.app_servers).await?;
        for flags in &self.gateways {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            platform
                .gateways
                .push(Gateway::start(&platform.etcd, &flags).await);
        }
        let env: Vec<(&str, &str)> = self
            .instance_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // One machine's controllers share its instance directory, so a
        // standby adopts what a killed leader started (pid files).
        let instance_logs = instance_logs_dir();
        for i in 0..self.autoscalers {
            let id = format!("controller-{i}");
            let mut flags: Vec<&str> = self.autoscaler_flags.iter().map(String::as_str).collect();
            flags.extend(["--id", &id]);
            platform.autoscalers.push(Autoscaler::start_sharing(
                &platform.etcd,
                &flags,
                &env,
                instance_logs.clone(),
            ));
        }
        for gateway in &platform.gateways {
            platform.wait_lists_app_servers(gateway).await?;
        }
        if self.pinned.is_some() {
            platform
                .wait_steady(STEADY)
                .await
                .context("the pinned instances did not come up")?;
        }
        Ok(platform)
    }
}

impl Platform {
    /// Wait until `gateway` lists every app server the builder started as
    /// ready, service by service.
    pub(super) async fn wait_lists_app_servers(&self, gateway: &Gateway) -> anyhow::Result<()> {
        let mut services: Vec<&str> = self
            .app_servers
            .iter()
            .map(|s| s.service.as_str())
            .collect();
        services.sort_unstable();
        services.dedup();
        for service in services {
            let ids: Vec<&str> = self
                .app_servers
                .iter()
                .filter(|s| s.service == service)
                .map(|s| s.id.as_str())
                .collect();
            gateway
                .admin()
                .wait_listed_ready(&self.http, service, &ids, GATEWAY_LISTS)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}
