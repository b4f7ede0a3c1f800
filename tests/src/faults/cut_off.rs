//! `cut off from etcd`: an app server in its own network namespace
//! ([`crate::netns::NetNs`]) that the gateway reaches but whose packets to
//! etcd are dropped (iptables inside the namespace), under load. Its lease
//! expires, it fences itself (`/readyz` 503 `fenced`), the gateway stops
//! routing to it; the cut is then healed and it must rejoin cleanly.
//!
//! The instance is started by the suite, not by the autoscaler (which only
//! counts the instances it started), so the steady state is `instances + 1`.
//! Timed from the cut: fenced, and out of rotation (the gateway no longer
//! routes to it: neither `ready` nor kept `unconfirmed` after its key went). Recovered: registered again and ready in etcd,
//! listed ready by the gateway, `/readyz` 200 and serving, timed from the
//! heal.

use std::time::{Duration, Instant};

use anyhow::Context;
use registry::InstanceState;

use crate::binaries::{AppServer, AppServerOptions, instance_in_registry};
use crate::netns::NetNs;

use super::{FaultRow, FaultsConfig, Outcome, Platform, readyz, secs, time_until, under_load};

/// What happened to the cut-off instance.
#[derive(Debug, Clone, Copy)]
pub struct CutTimes {
    /// From the cut until `/readyz` said `fenced`.
    pub fenced: Option<Duration>,
    /// From the cut until the gateway no longer routed to it (neither
    /// `ready` nor `unconfirmed`).
    pub out_of_rotation: Option<Duration>,
    /// From the heal until it was registered and ready in etcd again.
    pub registered_again: Option<Duration>,
    /// From the heal until the gateway listed it ready, `/readyz` said 200
    /// and it answered GET `/`.
    pub serving: Option<Duration>,
}

/// A platform whose etcd also listens on `netns`'s host address, and an
/// app server inside `netns`, registered, ready and routed to.
pub async fn platform_with_outsider(
    config: &FaultsConfig,
    netns: &NetNs,
) -> anyhow::Result<(Platform, AppServer)> {
    let mut platform = Platform::start(config, 1, Some(netns.host_ip)).await?;
    let outsider = AppServer::start_in_netns(
        netns,
        platform.etcd.endpoint_on(netns.host_ip),
        AppServerOptions {
            lease_ttl: config.lease_ttl,
            ..Default::default()
        },
    )
    .await;
    platform.instances += 1;
    platform
        .wait_recovered(Duration::from_secs(20))
        .await
        .context("the instance in the namespace did not join")?;
    Ok((platform, outsider))
}

/// Cut `outsider` off from etcd, wait until it is fenced and out of the
/// gateway's rotation, heal the cut and wait until it serves again.
pub async fn cut_and_heal(
    p: &Platform,
    netns: &mut NetNs,
    outsider: &AppServer,
) -> anyhow::Result<CutTimes> {
    let timeout = p.recover_timeout;
    let ready_in_gateway = async || {
        p.gateway_ready()
            .await
            .is_some_and(|ready| ready.contains(&outsider.id))
    };
    netns
        .cut_tcp_to(netns.host_ip, p.etcd.port())
        .map_err(anyhow::Error::msg)?;
    let cut = Instant::now();
    let fenced = time_until(timeout, || async {
        readyz(&p.http, &outsider.addr)
            .await
            .is_some_and(|(code, status)| code == 503 && status == "fenced")
    })
    .await;
    let out_of_rotation = time_until(timeout, || async {
        !p.gateway_routable()
            .await
            .is_some_and(|ids| ids.contains(&outsider.id))
    })
    .await
    .map(|_| cut.elapsed());
    netns.heal().map_err(anyhow::Error::msg)?;
    let healed = Instant::now();
    let registered_again = time_until(timeout, || async {
        instance_in_registry(&p.client, &outsider.key())
            .await
            .is_some_and(|i| i.state == InstanceState::Ready)
    })
    .await;
    let serving = time_until(timeout, || async {
        ready_in_gateway().await
            && readyz(&p.http, &outsider.addr)
                .await
                .is_some_and(|(code, _)| code == 200)
            && p.http
                .get(outsider.url("/"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
    })
    .await
    .map(|_| healed.elapsed());
    Ok(CutTimes {
        fenced,
        out_of_rotation,
        registered_again,
        serving,
    })
}

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut netns = NetNs::create().map_err(anyhow::Error::msg)?;
    let (mut platform, outsider) = platform_with_outsider(config, &netns).await?;
    under_load("cut off from etcd", config, &mut platform, async |p: &mut Platform| {
        let times = cut_and_heal(p, &mut netns, &outsider).await?;
        let steady = p.wait_steady().await;
        Ok(Outcome {
            recovered: steady.and(times.serving),
            notes: format!(
                "after the cut: fenced {}, out of rotation {} (lease TTL {} s); after the heal: registered {}, serving {}",
                secs(times.fenced),
                secs(times.out_of_rotation),
                p.lease_ttl.as_secs(),
                secs(times.registered_again),
                secs(times.serving)
            ),
        })
    })
    .await
}
