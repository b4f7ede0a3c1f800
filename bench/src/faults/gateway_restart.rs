//! `gateway restart`: the gateway restarted on the same ports under load,
//! the way docs/architecture.md ("Replacing a gateway") says to: a new one
//! started with `--reuse-port` next to the old one, which is SIGTERMed once
//! the new one listens ([`Gateway::replace`](shoal_tests::gateway::Gateway::replace)).
//!
//! Recovered: the old gateway exited, a GET `/` through the new one answered
//! 200 and it has recovered ([`super::recovered`]), timed
//! from the new gateway's start. The notes say when it listened and when
//! the old one had exited.

use std::time::{Duration, Instant};

use shoal_tests::Platform;

use super::{FaultRow, FaultsConfig, Outcome, platform, recovered, secs, time_until, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut platform = platform(config, 1).try_start().await?;
    under_load("gateway restart", config, &mut platform, async |p: &mut Platform| {
        let sent = Instant::now();
        let status = p.gateway_mut().replace(Duration::from_secs(30)).await;
        let old_gone = sent.elapsed();
        let url = p.gateway().url("/");
        let serving = time_until(config.recover_timeout, || async {
            p.http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
        .map(|_| sent.elapsed());
        let steady = recovered(p, config).await.map(|_| sent.elapsed());
        Ok(Outcome {
            recovered: serving.and(steady),
            notes: format!(
                "replaced with --reuse-port: old gateway exited {status} {:.2} s after the new one started; serving GET / after {}, steady after {}",
                old_gone.as_secs_f64(),
                secs(serving),
                secs(steady)
            ),
        })
    })
    .await
}
