//! The registry's control data as the admin API and the dashboard see it:
//! routes, scaling policies, scaling events, rollouts and service specs, each followed by a
//! `registry::Watcher` (list-then-watch) in its own background task, plus
//! the registry store the admin API writes with.
//!
//! The routes watcher is the one [`crate::discovery`] builds the routing
//! table from (a clone of its handle); the other four are started here.
//! None of this is on the proxy's request path: handlers read the latest
//! snapshots (an `Arc` clone each) and never wait for etcd to answer a read.

use std::sync::Arc;

use registry::model::{NamedRoute, Rollout, ScalingEvent, ScalingPolicy};
use registry::spec::Service;
use registry::{Keys, Snapshot, Store, Watcher};
use tokio::sync::watch;

/// Cheap to clone; the watchers stop when the last clone is dropped.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    routes: Watcher<NamedRoute>,
    policies: Watcher<ScalingPolicy>,
    events: Watcher<ScalingEvent>,
    rollouts: Watcher<Rollout>,
    specs: Watcher<Service>,
}

impl Control {
    /// Start the policies, events and rollouts watchers; `routes` is the
    /// gateway's watcher of `store.keys().routes()`.
    pub fn start(store: Store, routes: Watcher<NamedRoute>) -> Control {
        let keys = store.keys();
        let inner = Inner {
            routes,
            policies: Watcher::start(&store, keys.policies()),
            events: Watcher::start(&store, keys.events()),
            rollouts: Watcher::start(&store, keys.rollouts()),
            specs: Watcher::start(&store, keys.services()),
            store,
        };
        Control {
            inner: Arc::new(inner),
        }
    }

    /// The registry store writes go through.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn keys(&self) -> &Keys {
        self.inner.store.keys()
    }

    pub fn routes(&self) -> Snapshot<NamedRoute> {
        self.inner.routes.snapshot()
    }

    pub fn policies(&self) -> Snapshot<ScalingPolicy> {
        self.inner.policies.snapshot()
    }

    pub fn events(&self) -> Snapshot<ScalingEvent> {
        self.inner.events.snapshot()
    }

    pub fn rollouts(&self) -> Snapshot<Rollout> {
        self.inner.rollouts.snapshot()
    }

    pub fn specs(&self) -> Snapshot<Service> {
        self.inner.specs.snapshot()
    }

    /// The spec of `service`, if any.
    pub fn spec(&self, service: &str) -> Option<Service> {
        self.specs()
            .entries
            .get(&self.keys().service(service))
            .cloned()
    }

    /// The policy of `service`, if any.
    pub fn policy(&self, service: &str) -> Option<ScalingPolicy> {
        self.policies()
            .entries
            .get(&self.keys().policy(service))
            .cloned()
    }

    /// The rollout in progress for `service`, if any.
    pub fn rollout(&self, service: &str) -> Option<Rollout> {
        self.rollouts()
            .entries
            .get(&self.keys().rollout(service))
            .cloned()
    }

    /// The newest `limit` events of `service`, newest first.
    pub fn events_of(&self, service: &str, limit: usize) -> Vec<ScalingEvent> {
        newest_events(&self.events(), &self.keys().service_events(service), limit)
    }

    /// The replica count the autoscaler last wanted for `service` (the newest
    /// event's `desired`).
    pub fn desired(&self, service: &str) -> Option<u32> {
        self.events_of(service, 1).first().map(|e| e.desired)
    }

    /// Every watcher has listed at least once.
    pub fn synced(&self) -> bool {
        self.routes().synced
            && self.policies().synced
            && self.events().synced
            && self.rollouts().synced
            && self.specs().synced
    }

    /// Every watcher's stream is up.
    pub fn connected(&self) -> bool {
        self.routes().connected
            && self.policies().connected
            && self.events().connected
            && self.rollouts().connected
            && self.specs().connected
    }

    /// Notifications of any change to any of the five snapshots.
    pub fn changes(&self) -> ControlChanges {
        ControlChanges {
            routes: self.inner.routes.snapshots(),
            policies: self.inner.policies.snapshots(),
            events: self.inner.events.snapshots(),
            rollouts: self.inner.rollouts.snapshots(),
            specs: self.inner.specs.snapshots(),
        }
    }
}

/// Waits for the next change of any control snapshot.
pub struct ControlChanges {
    routes: watch::Receiver<Snapshot<NamedRoute>>,
    policies: watch::Receiver<Snapshot<ScalingPolicy>>,
    events: watch::Receiver<Snapshot<ScalingEvent>>,
    rollouts: watch::Receiver<Snapshot<Rollout>>,
    specs: watch::Receiver<Snapshot<Service>>,
}

impl ControlChanges {
    /// Resolves on the next change; never resolves once the watchers are gone.
    pub async fn changed(&mut self) {
        let closed = tokio::select! {
            r = self.routes.changed() => r.is_err(),
            r = self.policies.changed() => r.is_err(),
            r = self.events.changed() => r.is_err(),
            r = self.rollouts.changed() => r.is_err(),
            r = self.specs.changed() => r.is_err(),
        };
        if closed {
            std::future::pending::<()>().await;
        }
    }
}

/// The newest `limit` entries under `prefix` (event keys sort by sequence).
fn newest_events(events: &Snapshot<ScalingEvent>, prefix: &str, limit: usize) -> Vec<ScalingEvent> {
    events
        .entries
        .range(prefix.to_owned()..)
        .take_while(|(key, _)| key.starts_with(prefix))
        .map(|(_, event)| event.clone())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;

    fn event(service: &str, desired: u32) -> ScalingEvent {
        ScalingEvent {
            service: service.into(),
            at: Utc::now(),
            kind: "decision".into(),
            current: 1,
            desired,
            reason: format!("to {desired}"),
            bounded_by: None,
            inputs: BTreeMap::new(),
            instance: None,
        }
    }

    #[test]
    fn newest_events_are_per_service_and_newest_first() {
        let keys = Keys::default();
        let entries = BTreeMap::from([
            (keys.event("app", 1), event("app", 1)),
            (keys.event("app", 2), event("app", 2)),
            (keys.event("app", 10), event("app", 10)),
            (keys.event("app2", 3), event("app2", 3)),
        ]);
        let snapshot = Snapshot {
            entries: Arc::new(entries),
            ..Snapshot::default()
        };
        let got: Vec<u32> = newest_events(&snapshot, &keys.service_events("app"), 2)
            .iter()
            .map(|e| e.desired)
            .collect();
        assert_eq!(got, [10, 2]);
        let got = newest_events(&snapshot, &keys.service_events("app2"), 50);
        assert_eq!(got.len(), 1);
        assert!(newest_events(&snapshot, &keys.service_events("ap"), 50).is_empty());
    }
}
