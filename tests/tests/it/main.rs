//! End-to-end tests: a real etcd and Shoal's real binaries, one module per area.
//!
//! Timings the issues ask for are printed with `measured:` so a run's output
//! (`cargo nextest run --no-capture` or `cargo test -- --nocapture`) shows them.

mod autoscaler;
mod dashboard;
mod election;
mod etcd_cluster;
mod gateway;
mod kv;
mod lifecycle;
mod outages;
mod partition;
mod peer;
mod registry_cli;
mod rollout;
mod scale_edges;
mod security;
mod services;
mod store;
mod swarm;
mod two_gateways;
mod watcher;
mod watcher_props;

use std::time::Duration;

use shoal_tests::binaries::instance_in_registry;
use shoal_tests::wait_until_async;

/// Wait until `key` holds an instance for which `cond` holds; returns how long it took.
pub async fn wait_instance(
    client: &etcd_client::Client,
    key: &str,
    timeout: Duration,
    what: &str,
    cond: impl Fn(Option<&registry::Instance>) -> bool,
) -> Duration {
    let cond = &cond;
    wait_until_async(timeout, what, || async move {
        cond(instance_in_registry(client, key).await.as_ref())
    })
    .await
    .unwrap_or_else(|e| panic!("{e} (key {key})"))
}

pub fn is_ready(i: Option<&registry::Instance>) -> bool {
    i.is_some_and(|i| i.state == registry::InstanceState::Ready)
}

pub fn is_gone(i: Option<&registry::Instance>) -> bool {
    i.is_none()
}
