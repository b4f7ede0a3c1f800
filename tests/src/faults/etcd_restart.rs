//! `etcd restart`: etcd killed (SIGKILL) and started again on the same port
//! with its data, under load.
//!
//! Recovered: the steady state ([`super::Platform::wait_steady`]: the
//! gateway connected to etcd again, every instance registered and ready,
//! and listed ready by the gateway), timed from etcd answering again.

use std::time::Instant;

use super::{FaultRow, FaultsConfig, Outcome, Platform, secs, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut platform = Platform::start(config, 1, None).await?;
    under_load("etcd restart", config, &mut platform, async |p: &mut Platform| {
        let stopped = Instant::now();
        p.etcd.restart().await;
        let down = stopped.elapsed();
        let disconnected = !p.gateway_connected().await;
        let recovered = p.wait_steady().await;
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
