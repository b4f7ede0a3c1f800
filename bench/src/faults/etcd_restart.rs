//! `etcd restart`: etcd killed (SIGKILL) and started again on the same port
//! with its data, under load.
//!
//! Recovered ([`super::recovered`]: the gateway connected to etcd again,
//! every instance registered and ready, listed ready by the gateway, and a
//! registry change reaching it), timed from etcd answering again.

use std::time::Instant;

use shoal_tests::Platform;

use super::{FaultRow, FaultsConfig, Outcome, platform, recovered, secs, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut platform = platform(config, 1).try_start().await?;
    under_load("etcd restart", config, &mut platform, async |p: &mut Platform| {
        let stopped = Instant::now();
        p.etcd.restart().await;
        let down = stopped.elapsed();
        let disconnected = !p.gateway().admin().registry_connected(&p.http).await;
        let recovered = recovered(p, config).await;
        Ok(Outcome {
            recovered,
            notes: format!(
                "etcd down {:.2} s; gateway saw it disconnected: {disconnected}; steady again {} after etcd answered",
                down.as_secs_f64(),
                secs(recovered)
            ),
        })
    })
    .await
}
