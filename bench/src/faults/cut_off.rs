//! `cut off from etcd`: an app server in its own network namespace that the
//! gateway reaches but whose packets to etcd are dropped, under load
//! (`shoal_tests::cut_off`). Its lease expires, it fences itself (`/readyz`
//! 503 `fenced`), the gateway stops routing to it; the cut is then healed
//! and it must rejoin cleanly.
//!
//! The instance is started by the suite, not by the autoscaler (which only
//! counts the instances it started), so the steady state is `instances + 1`.
//! Timed from the cut: fenced, and out of rotation (the gateway no longer
//! routes to it: neither `ready` nor kept `unconfirmed` after its key went).
//! Recovered: registered again and ready in etcd, listed ready by the
//! gateway, `/readyz` 200 and serving, timed from the heal; and the
//! platform recovered ([`super::recovered`]).

use shoal_tests::Platform;
use shoal_tests::cut_off::{cut_and_heal, platform_with_outsider};
use shoal_tests::netns::NetNs;

use super::{FaultRow, FaultsConfig, Outcome, platform, recovered, secs, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut netns = NetNs::create().map_err(anyhow::Error::msg)?;
    let (mut platform, outsider) =
        platform_with_outsider(platform(config, 1), &netns, config.lease_ttl).await?;
    under_load("cut off from etcd", config, &mut platform, async |p: &mut Platform| {
        let times = cut_and_heal(p, &mut netns, &outsider, config.recover_timeout).await?;
        let steady = recovered(p, config).await;
        Ok(Outcome {
            recovered: steady.and(times.serving),
            notes: format!(
                "after the cut: fenced {}, out of rotation {} (lease TTL {} s); after the heal: registered {}, serving {}",
                secs(times.fenced),
                secs(times.out_of_rotation),
                config.lease_ttl.as_secs(),
                secs(times.registered_again),
                secs(times.serving)
            ),
        })
    })
    .await
}
