//! `instance frozen`: one instance SIGSTOPped under load for
//! [`FaultsConfig::freeze`], then SIGCONT.
//!
//! Out of rotation: the gateway no longer routes to it (neither `ready` nor
//! `unconfirmed`: ejected by passive health after failed attempts, or
//! dropped after its lease expired), timed from SIGSTOP and watched for the
//! length of the freeze. Recovered ([`super::recovered`]), timed from
//! SIGCONT; the notes say
//! whether the frozen instance itself came back into rotation or the
//! autoscaler replaced it (its lease expired while it was frozen).

use std::time::Instant;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use shoal_tests::Platform;
use shoal_tests::binaries::{instance_pid, service_instances};
use shoal_tests::platform::{APP, short};
use shoal_tests::wait::hold_until;

use super::{FaultRow, FaultsConfig, Outcome, platform, recovered, secs, time_until, under_load};

pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultRow> {
    let mut platform = platform(config, 1).try_start().await?;
    let freeze = config.freeze;
    let name = format!("instance frozen {} s", freeze.as_secs());
    under_load(&name, config, &mut platform, async |p: &mut Platform| {
        let victim = service_instances(&p.client, APP)
            .await
            .into_iter()
            .next()
            .context("no instance to freeze")?;
        let pid = Pid::from_raw(instance_pid(&p.http, &victim.addr).await? as i32);
        kill(pid, Signal::SIGSTOP).context("SIGSTOP")?;
        let frozen = Instant::now();
        let routable = async |p: &Platform| {
            p.gateway()
                .admin()
                .routable_ids(&p.http, APP)
                .await
                .is_some_and(|ids| ids.contains(&victim.id))
        };
        let in_rotation = async |p: &Platform| {
            p.gateway()
                .admin()
                .ready_ids(&p.http, APP)
                .await
                .is_some_and(|ready| ready.contains(&victim.id))
        };
        let out = time_until(freeze, || async { !routable(p).await }).await;
        let state_out = p
            .gateway()
            .admin()
            .instances(&p.http, APP)
            .await
            .unwrap_or_default()
            .iter()
            .find(|i| i["id"] == victim.id.as_str())
            .map_or("gone".to_owned(), |i| i["state"].to_string());
        // Frozen for FREEZE_SECS: its end is a time, not a condition.
        hold_until(frozen, freeze).await;
        kill(pid, Signal::SIGCONT).context("SIGCONT")?;
        let resumed = Instant::now();
        let steady = recovered(p, config).await.map(|_| resumed.elapsed());
        let came_back = in_rotation(p).await;
        let fate = if came_back {
            "it is back in rotation".to_owned()
        } else {
            let alive = kill(pid, None).is_ok();
            format!("it was replaced (process still running: {alive})")
        };
        let left = if steady.is_none() {
            format!("; not steady: {}", p.describe().await)
        } else {
            String::new()
        };
        Ok(Outcome {
            recovered: steady,
            notes: format!(
                "{} {} ({state_out} in the gateway then); steady {} after SIGCONT, and {fate}{left}",
                short(&victim.id),
                out.map_or(
                    format!("still routed at the end of the {} s freeze", freeze.as_secs()),
                    |d| format!("out of rotation after {:.2} s", d.as_secs_f64())
                ),
                secs(steady)
            ),
        })
    })
    .await
}
