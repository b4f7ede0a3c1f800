//! `etcd unreachable`: etcd stopped (SIGKILL, then started again with its
//! data) or frozen (SIGSTOP, then SIGCONT) for [`FaultsConfig::outage`]
//! under load. Instances fence themselves once a lease TTL passes without a
//! keep-alive (`/readyz` 503 `fenced`) and keep serving; the gateway keeps
//! routing on its last table.
//!
//! Recovered ([`super::recovered`]), timed from etcd answering again. The notes give when every instance was fenced
//! and whether the gateway's table ever lost an instance during the outage.

use std::time::Instant;

use nix::sys::signal::Signal;

use shoal_tests::Platform;
use shoal_tests::binaries::{readyz, service_instances};
use shoal_tests::gateway::TableWatch;
use shoal_tests::platform::APP;
use shoal_tests::wait::hold_until;

use super::{FaultRow, FaultsConfig, Outcome, platform, recovered, secs, time_until, under_load};

/// How etcd becomes unreachable.
#[derive(Debug, Clone, Copy)]
pub enum How {
    /// Killed: connections are refused.
    Stopped,
    /// SIGSTOPped: connections hang.
    Frozen,
}

pub async fn run(config: &FaultsConfig, how: How) -> anyhow::Result<FaultRow> {
    let mut platform = platform(config, 1).try_start().await?;
    let name = match how {
        How::Stopped => format!("etcd stopped {} s", config.outage.as_secs()),
        How::Frozen => format!("etcd frozen (SIGSTOP) {} s", config.outage.as_secs()),
    };
    let outage = config.outage;
    under_load(&name, config, &mut platform, async |p: &mut Platform| {
        let addrs: Vec<String> = service_instances(&p.client, APP)
            .await
            .into_iter()
            .map(|i| i.addr)
            .collect();
        let table = TableWatch::start(&p.http, p.gateway(), APP);
        let started = Instant::now();
        match how {
            How::Stopped => p.etcd.stop().await,
            How::Frozen => p.etcd.signal(Signal::SIGSTOP),
        }
        let http = p.http.clone();
        let fenced = time_until(outage, || {
            let (http, addrs) = (http.clone(), addrs.clone());
            async move {
                for addr in &addrs {
                    match readyz(&http, addr).await {
                        Some((503, status)) if status == "fenced" => {}
                        _ => return false,
                    }
                }
                true
            }
        })
        .await;
        // The outage lasts OUTAGE_SECS: its end is a time, not a condition.
        hold_until(started, outage).await;
        match how {
            How::Stopped => p.etcd.start_again().await,
            How::Frozen => p.etcd.signal(Signal::SIGCONT),
        }
        let seen = table.stop().await;
        let recovered = recovered(p, config).await;
        Ok(Outcome {
            recovered,
            notes: format!(
                "all {} instances fenced after {}; gateway table never below {} ready during the outage",
                addrs.len(),
                secs(fenced),
                seen.min_ready
            ),
        })
    })
    .await
}
