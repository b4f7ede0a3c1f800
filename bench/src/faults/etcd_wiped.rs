//! `etcd wiped`: etcd replaced by an empty one on the same port under load
//! (every key and lease lost at once, [`Etcd::wipe`](shoal_tests::etcd::Etcd::wipe)). The operator's
//! configuration (the `/kv/` route and `app`'s policy) is written again
//! right after, as a restore from backup would; the instances must register
//! again by themselves, and the gateway must keep routing to the instances
//! it knew (shown as unconfirmed) rather than empty its table.
//!
//! Recovered ([`super::recovered`]), timed from the empty etcd answering. The notes give the fewest ready instances
//! the gateway's table held meanwhile.

use std::time::Instant;

use shoal_tests::Platform;
use shoal_tests::gateway::TableWatch;
use shoal_tests::platform::APP;

use super::{FaultRow, FaultsConfig, Outcome, platform, recovered, secs, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut platform = platform(config, 1).try_start().await?;
    under_load("etcd wiped", config, &mut platform, async |p: &mut Platform| {
        let table = TableWatch::start(&p.http, p.gateway(), APP);
        p.etcd.wipe().await;
        let answering = Instant::now();
        p.write_config().await?;
        let rewritten = answering.elapsed();
        let recovered = recovered(p, config).await.map(|_| answering.elapsed());
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
