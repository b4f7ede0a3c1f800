//! `etcd wiped`: etcd replaced by an empty one on the same port under load
//! (every key and lease lost at once, [`crate::Etcd::wipe`]). The operator's
//! configuration (the `/kv/` route and `app`'s policy) is written again
//! right after, as a restore from backup would; the instances must register
//! again by themselves, and the gateway must keep routing to the instances
//! it knew (shown as unconfirmed) rather than empty its table.
//!
//! Recovered: the steady state ([`super::Platform::wait_steady`]), timed
//! from the empty etcd answering. The notes give the fewest ready instances
//! the gateway's table held meanwhile.

use std::time::Instant;

use crate::gateway::TableWatch;

use super::{FaultRow, FaultsConfig, Outcome, Platform, secs, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut platform = Platform::start(config, 1, None).await?;
    under_load("etcd wiped", config, &mut platform, async |p: &mut Platform| {
        let table = TableWatch::start(&p.http, &p.gateway, "app");
        p.etcd.wipe().await;
        let answering = Instant::now();
        p.write_config().await?;
        let rewritten = answering.elapsed();
        let recovered = p.wait_steady()
            .await
            .map(|_| answering.elapsed());
        let seen = table.stop().await;
        Ok(Outcome {
            recovered,
            notes: format!(
                "config rewritten {} ms after; steady again {}; gateway table never below {} ready ({} polls, up to {} unconfirmed)",
                rewritten.as_millis(),
                secs(recovered),
                seen.min_ready,
                seen.polls,
                seen.max_unconfirmed
            ),
        })
    })
    .await
}
