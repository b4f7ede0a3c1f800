//! Client-side load balancing over a service's ready instances: the
//! peer-to-peer balancing of the source notes, with no gateway in between.
//!
//! [`PeerBalancer`] follows the service through a [`Watcher`] and picks an
//! instance by the power of two choices on in-flight requests: sample two
//! ready instances at random and take the one with fewer calls in flight.
//! The returned [`PeerGuard`] counts the call as in flight until dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use crate::model::{Instance, InstanceState};
use crate::store::Store;
use crate::watcher::Watcher;

/// Picks instances of one service for direct calls.
#[derive(Clone)]
pub struct PeerBalancer {
    service: String,
    watcher: Watcher<Instance>,
    in_flight: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
}

/// One call in flight to `instance`; dropping it ends the call.
pub struct PeerGuard {
    pub instance: Instance,
    counter: Arc<AtomicUsize>,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PeerBalancer {
    pub fn new(store: &Store, service: impl Into<String>) -> Self {
        let service = service.into();
        let prefix = store.keys().service_instances(&service);
        PeerBalancer {
            service,
            watcher: Watcher::start(store, prefix),
            in_flight: Arc::default(),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The ready instances as currently known.
    pub fn ready(&self) -> Vec<Instance> {
        self.watcher
            .snapshot()
            .entries
            .values()
            .filter(|i| i.state == InstanceState::Ready)
            .cloned()
            .collect()
    }

    /// Wait until at least `n` instances are ready, up to `timeout`.
    pub async fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        self.watcher
            .wait_for(timeout, |s| {
                s.entries
                    .values()
                    .filter(|i| i.state == InstanceState::Ready)
                    .count()
                    >= n
            })
            .await
    }

    /// Pick a ready instance, or `None` when there is none.
    pub fn pick(&self) -> Option<PeerGuard> {
        let snapshot = self.watcher.snapshot();
        let ready: Vec<&Instance> = snapshot
            .entries
            .values()
            .filter(|i| i.state == InstanceState::Ready)
            .collect();
        let mut in_flight = self.in_flight.lock().expect("in-flight map poisoned");
        if in_flight.len() > 2 * snapshot.entries.len() + 16 {
            in_flight.retain(|id, _| snapshot.entries.values().any(|i| &i.id == id));
        }
        let mut counter = |i: &Instance| in_flight.entry(i.id.clone()).or_default().clone();
        let chosen = match ready.len() {
            0 => return None,
            1 => ready[0],
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (ca, cb) = (
                    counter(ready[a]).load(Ordering::Relaxed),
                    counter(ready[b]).load(Ordering::Relaxed),
                );
                if cb < ca { ready[b] } else { ready[a] }
            }
        };
        let counter = counter(chosen);
        counter.fetch_add(1, Ordering::Relaxed);
        Some(PeerGuard {
            instance: chosen.clone(),
            counter,
        })
    }
}
