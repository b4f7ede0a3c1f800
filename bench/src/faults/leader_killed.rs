//! `autoscaler leader killed`: two `autoscaler run` processes on one
//! machine (one instance directory); the leader is killed with SIGKILL under
//! load. Its instances keep running and serving; the standby must take over
//! and adopt them (the process driver's pid files) rather than start others.
//!
//! Recovered: the standby leads, and the instances the killed leader started
//! are still the ready ones, with nothing started or stopped, timed from
//! the kill; then the platform must be steady ([`super::recovered`]).

use std::time::Instant;

use anyhow::{Context, bail};
use registry::election::Election;
use registry::{InstanceState, Keys};

use shoal_tests::Platform;
use shoal_tests::binaries::service_instances;
use shoal_tests::platform::APP;

use super::{FaultRow, FaultsConfig, Outcome, platform, recovered, secs, time_until, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut platform = platform(config, 2).try_start().await?;
    under_load("autoscaler leader killed", config, &mut platform, async |p: &mut Platform| {
        let election = Election::new(p.client.clone(), &Keys::default());
        let leader = election.leader().await?.context("no autoscaler leads")?;
        let index: usize = match leader.as_str() {
            "controller-0" => 0,
            "controller-1" => 1,
            other => bail!("unexpected leader `{other}`"),
        };
        let standby = format!("controller-{}", 1 - index);
        let before = ready_ids(p).await;
        p.autoscalers[index].proc.kill9().await;
        let killed = Instant::now();
        let leads = time_until(config.recover_timeout, || async {
            election.leader().await.ok().flatten().as_deref() == Some(standby.as_str())
        })
        .await;
        // Adopted: the standby leads and the same instances are the ready ones.
        let after = ready_ids(p).await;
        let adopted = leads.filter(|_| after == before).map(|_| killed.elapsed());
        let steady = recovered(p, config).await.map(|_| killed.elapsed());
        Ok(Outcome {
            recovered: adopted,
            notes: format!(
                "{standby} leads after {}; ready instances {before:?} before, {after:?} after; steady after {}",
                secs(leads),
                secs(steady)
            ),
        })
    })
    .await
}

/// The ids of `app`'s ready instances, sorted.
async fn ready_ids(p: &Platform) -> Vec<String> {
    let mut ids: Vec<String> = service_instances(&p.client, APP)
        .await
        .into_iter()
        .filter(|i| i.state == InstanceState::Ready)
        .map(|i| i.id)
        .collect();
    ids.sort();
    ids
}
