//! Experiment 5, `dynamic`: instances join and leave through the registry
//! alone. Two instances serve `GET /` through the gateway under load; the
//! service is scaled to four (`autoscaler scale app 4`) and back to two.
//! A poller watches the registry every 10 ms: for each new instance, the
//! time from when it was first listed `ready` to the first request it
//! served through the gateway (`x-shoal-instance`); for each one that left,
//! the time from when it stopped being listed `ready` (draining or gone) to
//! the last request it served. No gateway setting changes at any point.
//!
//! Goal: both at most 1 s (the gateway follows the registry with a watch,
//! so it should take milliseconds, not a polling period), and no request
//! failed while instances came and went.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry::InstanceState;

use shoal_tests::Load;
use shoal_tests::autoscaler::scale;
use shoal_tests::binaries::{service_instances, wait_ready};
use shoal_tests::platform::APP;
use shoal_tests::wait::POLL;
use shoal_tests::wait_until_async;

use super::{Config, Row, failure_lines, measure_for, platform, verdict};

pub const NAME: &str = "dynamic";
pub const SOURCE: &str = "a service registry so the balancer needs no fixed list (no figure)";
const GOAL: Duration = Duration::from_secs(1);

/// When each instance was first listed ready, and first not listed ready after.
#[derive(Debug, Default)]
struct Seen {
    ready_at: BTreeMap<String, Instant>,
    left_at: BTreeMap<String, Instant>,
}

impl Seen {
    /// `ready` is the set listed ready at `now`.
    fn note(&mut self, ready: &BTreeSet<String>, now: Instant) {
        for id in ready {
            self.ready_at.entry(id.clone()).or_insert(now);
        }
        let gone: Vec<String> = self
            .ready_at
            .keys()
            .filter(|id| !ready.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.left_at.entry(id).or_insert(now);
        }
    }
}

pub async fn run(config: &Config) -> anyhow::Result<Row> {
    let platform = platform().pinned(2).try_start().await?;
    let http = platform.http.clone();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (client, seen, polling) = (platform.client.clone(), seen.clone(), polling.clone());
        tokio::spawn(async move {
            while polling.load(Ordering::Acquire) {
                let ready: BTreeSet<String> = service_instances(&client, APP)
                    .await
                    .into_iter()
                    .filter(|i| i.state == InstanceState::Ready)
                    .map(|i| i.id)
                    .collect();
                seen.lock().expect("seen lock").note(&ready, Instant::now());
                // A sampling pace: the poller runs until stopped.
                tokio::time::sleep(POLL).await;
            }
        })
    };
    let first: BTreeSet<String> = service_instances(&platform.client, APP)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    let load = Load::start(&http, &platform.gateway().url("/"), config.clients);
    measure_for(config.phase / 2).await;

    scale(&platform.etcd, APP, 4).await?;
    wait_ready(&platform.client, APP, 4, Duration::from_secs(60)).await?;
    let joined: BTreeSet<String> = service_instances(&platform.client, APP)
        .await
        .into_iter()
        .map(|i| i.id)
        .filter(|id| !first.contains(id))
        .collect();
    // Each new instance gets its first request within the goal, or never:
    // one that does not is measured below as `never`.
    let every_new_served = wait_until_async(GOAL * 2, "every new instance served", || {
        let served: BTreeSet<String> = load.first_served().into_iter().map(|(id, _)| id).collect();
        std::future::ready(joined.iter().all(|id| served.contains(id)))
    })
    .await;
    measure_for(config.phase / 2).await;

    let before_leaving: BTreeSet<String> = service_instances(&platform.client, APP)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    scale(&platform.etcd, APP, 2).await?;
    wait_until_async(Duration::from_secs(60), "2 instances", || async {
        service_instances(&platform.client, APP).await.len() == 2
    })
    .await
    .map_err(anyhow::Error::msg)?;
    measure_for(config.phase / 2).await;
    let first_served: BTreeMap<String, Instant> = load.first_served().into_iter().collect();
    let last_served: BTreeMap<String, Instant> = before_leaving
        .iter()
        .filter_map(|id| load.last_served(id).map(|at| (id.clone(), at)))
        .collect();
    let report = load.stop().await;
    let remaining: BTreeSet<String> = service_instances(&platform.client, APP)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    polling.store(false, Ordering::Release);
    poller.await?;
    let left: BTreeSet<String> = before_leaving.difference(&remaining).cloned().collect();

    let seen = seen.lock().expect("seen lock");
    let mut details = Vec::new();
    if let Err(e) = every_new_served {
        details.push(e);
    }
    let mut join_max: Option<f64> = Some(0.0);
    for id in &joined {
        let registered = seen.ready_at.get(id).copied();
        let served = first_served.get(id).copied();
        let secs = match (registered, served) {
            (Some(r), Some(s)) => Some(s.saturating_duration_since(r).as_secs_f64()),
            _ => None,
        };
        details.push(format!(
            "joined {id}: first served {secs:?} s after listed ready"
        ));
        join_max = match (join_max, secs) {
            (Some(m), Some(s)) => Some(m.max(s)),
            _ => None,
        };
    }
    let mut leave_max: Option<f64> = Some(0.0);
    for id in &left {
        let gone = seen.left_at.get(id).copied();
        let last = last_served.get(id).copied();
        // Negative: its last request was served before it left the ready set.
        let secs = match (gone, last) {
            (Some(g), Some(l)) if l >= g => Some(l.duration_since(g).as_secs_f64()),
            (Some(g), Some(l)) => Some(-g.duration_since(l).as_secs_f64()),
            _ => None,
        };
        details.push(format!(
            "left {id}: last served {secs:?} s after it stopped being listed ready"
        ));
        leave_max = match (leave_max, secs) {
            (Some(m), Some(s)) => Some(m.max(s)),
            _ => None,
        };
    }
    details.extend(failure_lines(&report));
    let show = |v: Option<f64>| v.map_or("never".to_owned(), |s| format!("{s:.3} s"));
    let failed = report.failures.len();
    let met = join_max.is_some_and(|s| s <= GOAL.as_secs_f64())
        && leave_max.is_some_and(|s| s <= GOAL.as_secs_f64())
        && joined.len() == 2
        && left.len() == 2
        && failed == 0;
    Ok(Row {
        experiment: NAME,
        shoal: format!(
            "2 → 4 → 2: join max {} ({} joined), leave max {} ({} left), {failed} of {} requests failed",
            show(join_max),
            joined.len(),
            show(leave_max),
            left.len(),
            report.served as usize + failed
        ),
        source: SOURCE,
        goal: format!("join and leave ≤ {} s, 0 failed", GOAL.as_secs()),
        verdict: verdict(met),
        details,
    })
}
