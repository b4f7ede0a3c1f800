//! `gateway restart`: the gateway SIGTERMed and started again on the same
//! ports, under load.
//!
//! Recovered: a GET `/` through the restarted gateway answered 200 and the
//! steady state holds ([`super::Platform::wait_steady`]), timed from
//! SIGTERM. The notes give when it exited and when it listened again.

use std::time::{Duration, Instant};

use super::{FaultRow, FaultsConfig, Outcome, Platform, secs, time_until, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut platform = Platform::start(config, 1, None).await?;
    under_load("gateway restart", config, &mut platform, async |p: &mut Platform| {
        let sent = Instant::now();
        let status = p.gateway.restart(Duration::from_secs(30)).await;
        let listening = sent.elapsed();
        let url = p.gateway.url("/");
        let serving = time_until(p.recover_timeout, || async {
            p.http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
        .map(|_| sent.elapsed());
        let steady = p.wait_steady()
            .await
            .map(|_| sent.elapsed());
        Ok(Outcome {
            recovered: serving.and(steady),
            notes: format!(
                "old gateway exited {status}; new one listening {:.2} s after SIGTERM, serving GET / after {}, steady after {}",
                listening.as_secs_f64(),
                secs(serving),
                secs(steady)
            ),
        })
    })
    .await
}
