//! Experiment 3, `rolling restart`: three instances replaced one at a time
//! by `autoscaler rollout restart app` (the CLI waits until it is done)
//! while clients send `GET /` through the gateway. Zero failed requests is
//! the goal; the row also gives the time the restart took.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_tests::Load;
use shoal_tests::autoscaler::autoscaler_cli;
use shoal_tests::binaries::service_instances;
use shoal_tests::platform::APP;

use super::{Config, Row, failure_lines, measure_for, platform, verdict};

pub const NAME: &str = "rolling restart";
pub const SOURCE: &str = "zero-downtime restart on SIGUSR2, one worker at a time (no figure)";
const INSTANCES: usize = 3;

pub async fn run(config: &Config) -> anyhow::Result<Row> {
    let platform = platform().pinned(INSTANCES).try_start().await?;
    let ids = || async {
        service_instances(&platform.client, APP)
            .await
            .into_iter()
            .map(|i| i.id)
            .collect::<BTreeSet<_>>()
    };
    let before = ids().await;
    let load = Load::start(&platform.http, &platform.gateway().url("/"), config.clients);
    measure_for(config.phase / 2).await;
    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        autoscaler_cli(&platform.etcd, &["rollout", "restart", APP]),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the rolling restart did not finish in 180 s"))?;
    let took = started.elapsed().as_secs_f64();
    measure_for(config.phase / 2).await;
    let report = load.stop().await;
    if !output.status.success() {
        anyhow::bail!(
            "autoscaler rollout restart app failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let after = ids().await;
    let replaced = before.is_disjoint(&after) && after.len() == INSTANCES;
    let failed = report.failures.len();
    let mut details = vec![format!(
        "{} clients; instances before {before:?}, after {after:?}",
        config.clients
    )];
    details.extend(failure_lines(&report));
    Ok(Row {
        experiment: NAME,
        shoal: format!(
            "{INSTANCES} instances replaced in {took:.1} s{}; {failed} of {} requests failed",
            if replaced { "" } else { " (NOT all replaced)" },
            report.served as usize + failed
        ),
        source: SOURCE,
        goal: "0 failed, every instance replaced".into(),
        verdict: verdict(replaced && failed == 0 && report.served > 0),
        details,
    })
}
