//! Recent history for the dashboard's charts: one [`Sample`] per service per
//! second (ready and desired replicas, request rate, p95 latency), kept in a
//! ring of [`CAPACITY`] samples (10 minutes) so that a page opened now already
//! has its charts filled.
//!
//! One background task samples; readers copy the rings under a mutex that is
//! held for microseconds and never touched by the proxy's request path.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::admin::control::Control;
use crate::table::{RoutingTable, TableHandle};

/// Samples kept per service: 10 minutes at one a second.
pub const CAPACITY: usize = 600;

/// How often the sampler runs.
pub const EVERY: Duration = Duration::from_secs(1);

/// One service at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// Ready instances in the routing table.
    pub ready: u32,
    /// Registered instances, whatever their state.
    pub total: u32,
    /// The autoscaler's newest `desired` for the service, if it has spoken.
    pub desired: Option<u32>,
    /// Client requests per second (10 s window).
    pub rate: f64,
    /// 95th percentile latency in ms (10 s window); `null` without requests.
    pub p95_ms: Option<f64>,
}

/// The rings, shared between the sampler and the readers.
#[derive(Clone, Default)]
pub struct History {
    rings: Arc<Mutex<BTreeMap<String, VecDeque<Sample>>>>,
}

impl History {
    /// Take one sample of every service in `table`; services the table no
    /// longer knows are forgotten.
    pub fn record(
        &self,
        table: &RoutingTable,
        desired: impl Fn(&str) -> Option<u32>,
        now: Instant,
        wall: DateTime<Utc>,
    ) {
        let mut rings = self.rings.lock().expect("history lock poisoned");
        rings.retain(|service, _| table.pools.contains_key(service));
        for (service, pool) in &table.pools {
            let stats = pool.counters.requests.snapshot(now);
            let ring = rings.entry(service.clone()).or_default();
            if ring.len() == CAPACITY {
                ring.pop_front();
            }
            ring.push_back(Sample {
                at_ms: wall.timestamp_millis(),
                ready: pool.ready.len() as u32,
                total: pool.all.len() as u32,
                desired: desired(service),
                rate: stats.rate,
                p95_ms: stats.p95_ms,
            });
        }
    }

    /// Every service's samples, oldest first.
    pub fn all(&self) -> BTreeMap<String, Vec<Sample>> {
        let rings = self.rings.lock().expect("history lock poisoned");
        rings
            .iter()
            .map(|(service, ring)| (service.clone(), ring.iter().cloned().collect()))
            .collect()
    }

    /// The newest sample of every service.
    pub fn latest(&self) -> BTreeMap<String, Sample> {
        let rings = self.rings.lock().expect("history lock poisoned");
        rings
            .iter()
            .filter_map(|(service, ring)| Some((service.clone(), ring.back()?.clone())))
            .collect()
    }

    /// Sample every [`EVERY`] until `stop`.
    pub fn spawn_sampler(
        &self,
        table: TableHandle,
        control: Control,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let history = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                history.record(
                    &table.load(),
                    |s| control.desired(s),
                    Instant::now(),
                    Utc::now(),
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use registry::model::BalancePolicy;
    use registry::{Instance, InstanceState};

    use super::*;
    use crate::table::{Defaults, LiveState};

    fn table(services: &[&str]) -> RoutingTable {
        let instances = services
            .iter()
            .map(|s| {
                let mut i = Instance::new(*s, "127.0.0.1:1000");
                i.state = InstanceState::Ready;
                (format!("/shoal/instances/{s}/{}", i.id), i)
            })
            .collect();
        LiveState::default().build(
            &instances,
            &BTreeMap::new(),
            &Defaults {
                service: services[0].into(),
                policy: BalancePolicy::RoundRobin,
            },
            true,
            1,
            Instant::now(),
        )
    }

    #[test]
    fn rings_keep_ten_minutes_and_forget_gone_services() {
        let history = History::default();
        let t = table(&["a", "b"]);
        let start = Utc::now();
        for s in 0..(CAPACITY as i64 + 5) {
            history.record(
                &t,
                |svc| (svc == "a").then_some(3),
                Instant::now(),
                start + chrono::Duration::seconds(s),
            );
        }
        let all = history.all();
        assert_eq!(all["a"].len(), CAPACITY);
        assert_eq!(
            all["a"][0].at_ms,
            (start + chrono::Duration::seconds(5)).timestamp_millis(),
            "the oldest samples were dropped"
        );
        assert_eq!(all["a"][0].desired, Some(3));
        assert_eq!(all["b"][0].desired, None);
        assert_eq!((all["a"][0].ready, all["a"][0].total), (1, 1));

        history.record(&table(&["a"]), |_| None, Instant::now(), Utc::now());
        let latest = history.latest();
        assert_eq!(latest.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(latest["a"].desired, None);
    }
}
