//! An app server cut off from etcd but not from the gateway: it runs in its
//! own network namespace ([`crate::netns::NetNs`]) and reaches etcd on the
//! namespace's host address, where iptables can drop its packets. Its lease
//! expires, it fences itself (`/readyz` 503 `fenced`), the gateway stops
//! routing to it; the cut is then healed and it must rejoin cleanly. Used by
//! the partition test and the fault suite's `cut-off`.
//!
//! The instance is started by the test, not by an autoscaler (which only
//! counts the instances it started), so it adds one to the platform's
//! expected steady state.

use std::time::{Duration, Instant};

use anyhow::Context;
use registry::InstanceState;

use crate::binaries::{AppServer, AppServerOptions, instance_in_registry, readyz};
use crate::netns::NetNs;
use crate::platform::{APP, Platform, PlatformBuilder};
use crate::wait::wait_until_async;

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

/// Start `builder`'s platform with etcd and the autoscaler's instances
/// listening on `netns`'s host address, and an app server of `app` (lease
/// `lease_ttl`) inside `netns`;
/// returns once it is registered, ready and listed by the gateway.
pub async fn platform_with_outsider(
    builder: PlatformBuilder,
    netns: &NetNs,
    lease_ttl: Duration,
) -> anyhow::Result<(Platform, AppServer)> {
    // The autoscaler's instances listen on the namespace's host address too,
    // so the instance inside (whose 127.0.0.1 is its own) reaches its peers:
    // cut off from etcd, not from them.
    let mut platform = builder
        .etcd_also_on(netns.host_ip)
        .instance_env("SHOAL_LISTEN", &format!("{}:0", netns.host_ip))
        .try_start()
        .await?;
    let outsider = AppServer::start_in_netns(
        netns,
        platform.etcd.endpoint_on(netns.host_ip),
        AppServerOptions {
            service: APP.to_owned(),
            lease_ttl,
            ..Default::default()
        },
    )
    .await;
    platform.expected += 1;
    platform
        .wait_steady(Duration::from_secs(20))
        .await
        .context("the instance in the namespace did not join")?;
    Ok((platform, outsider))
}

/// Cut `outsider` off from etcd, wait (each wait up to `timeout`) until it
/// is fenced and out of the gateway's rotation, heal the cut and wait until
/// it serves again.
pub async fn cut_and_heal(
    p: &Platform,
    netns: &mut NetNs,
    outsider: &AppServer,
    timeout: Duration,
) -> anyhow::Result<CutTimes> {
    let gateway = p.gateway();
    netns
        .cut_tcp_to(netns.host_ip, p.etcd.port())
        .map_err(anyhow::Error::msg)?;
    let cut = Instant::now();
    let fenced = wait_until_async(timeout, "fenced", || async {
        readyz(&p.http, &outsider.addr)
            .await
            .is_some_and(|(code, status)| code == 503 && status == "fenced")
    })
    .await
    .ok();
    let out_of_rotation = wait_until_async(timeout, "out of rotation", || async {
        !gateway
            .admin()
            .routable_ids(&p.http, APP)
            .await
            .is_some_and(|ids| ids.contains(&outsider.id))
    })
    .await
    .ok()
    .map(|_| cut.elapsed());
    netns.heal().map_err(anyhow::Error::msg)?;
    let healed = Instant::now();
    let registered_again = wait_until_async(timeout, "registered again", || async {
        instance_in_registry(&p.client, &outsider.key())
            .await
            .is_some_and(|i| i.state == InstanceState::Ready)
    })
    .await
    .ok();
    let serving = wait_until_async(timeout, "serving", || async {
        gateway
            .admin()
            .ready_ids(&p.http, APP)
            .await
            .is_some_and(|ready| ready.contains(&outsider.id))
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
    .ok()
    .map(|_| healed.elapsed());
    Ok(CutTimes {
        fenced,
        out_of_rotation,
        registered_again,
        serving,
    })
}
