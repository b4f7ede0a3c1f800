//! `autoscaler leader killed`: two `autoscaler run` processes; the leader
//! is killed with SIGKILL under load. Its instances keep running (the
//! process driver cannot adopt them, so they are no longer managed); the
//! standby must take over and bring `app` back to its pinned count of
//! instances it manages itself.
//!
//! Recovered: the standby leads and `instances` instances it started are
//! registered and ready, timed from the kill. The old leader's instances
//! are then stopped with SIGTERM (they drain) and the platform must recover
//! ([`super::recovered`]).

use std::time::Instant;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use registry::election::Election;
use registry::{InstanceState, Keys};

use shoal_tests::Platform;
use shoal_tests::binaries::{instance_pid, service_instances};
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
        let orphans = service_instances(&p.client, APP).await;
        for orphan in &orphans {
            p.strays.push(instance_pid(&p.http, &orphan.addr).await?);
        }
        p.autoscalers[index].proc.kill9().await;
        let killed = Instant::now();
        let leads = time_until(config.recover_timeout, || async {
            election.leader().await.ok().flatten().as_deref() == Some(standby.as_str())
        })
        .await;
        let reconciled = time_until(config.recover_timeout, || async {
            let own = service_instances(&p.client, APP)
                .await
                .into_iter()
                .filter(|i| !orphans.iter().any(|o| o.id == i.id))
                .filter(|i| i.state == InstanceState::Ready)
                .count();
            own == p.expected
        })
        .await
        .map(|_| killed.elapsed());
        // The old leader's instances are nobody's now: drain them.
        for pid in &p.strays {
            if let Err(e) = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM) {
                eprintln!("faults: SIGTERM to orphaned instance {pid}: {e}");
            }
        }
        let cleaned = Instant::now();
        let steady = recovered(p, config).await.map(|_| cleaned.elapsed());
        Ok(Outcome {
            recovered: reconciled,
            notes: format!(
                "{standby} leads after {}; {} instances of its own ready after {}; the {} orphaned instances drained (SIGTERM), steady {} later",
                secs(leads),
                p.expected,
                secs(reconciled),
                orphans.len(),
                secs(steady)
            ),
        })
    })
    .await
}
