//! From the registry to the routing table: one task follows the instances and
//! routes prefixes (each through a `registry::Watcher`; the routes watcher is
//! given, since the gateway's other readers of `routes/` share it) and
//! publishes a new [`RoutingTable`] whenever
//! either changes.
//!
//! Instances whose address `--allowed-backends` refuses are left out here,
//! before the table is built ([`AllowedBackends`]).
//!
//! Malformed entries never reach this module (the watcher skips them with a
//! warning naming the key). While etcd is unreachable the watchers keep their
//! last snapshots, so the table keeps serving; it only records that the
//! registry is disconnected, which `/healthz` reports. Instances that leave
//! the registry while ready stay routable, unconfirmed, for a grace period
//! ([`crate::grace`]); the task also rebuilds when one of them fails or its
//! grace ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::model::NamedRoute;
use registry::{Instance, Store, Watcher};
use tracing::{debug, error, info, warn};

use crate::allowed::AllowedBackends;
use crate::grace::Grace;
use crate::table::{Defaults, LiveState, RoutingTable, TableHandle};

/// Start following the registry's instances, and its routes through
/// `routes` (a watcher of `keys.routes()`); the returned handle always has a
/// table (empty until the first list succeeds). Instances outside `allowed`
/// are left out first; `grace` is how long an instance that left while
/// ready stays routable (zero: not at all).
///
/// Tables are built on tokio's blocking pool, not on a worker: with
/// thousands of instances a build takes tens of milliseconds (mostly the
/// consistent-hash ring of the changed service), and requests on a worker
/// would wait behind it (`--workers 1` has one worker).
pub fn start(
    store: &Store,
    routes: Watcher<NamedRoute>,
    defaults: Defaults,
    allowed: AllowedBackends,
    grace: Duration,
) -> TableHandle {
    let keys = store.keys();
    let instances = Watcher::<Instance>::start(store, keys.instances());
    let mut instance_changes = instances.snapshots();
    let mut route_changes = routes.snapshots();
    let mut builder = Builder {
        instances,
        routes,
        defaults,
        allowed,
        live: LiveState::default(),
        grace: Grace::new(grace),
    };
    let failures = builder.grace.failures();
    let mut generation = 0;
    let (handle, publisher) = TableHandle::new(builder.build(generation));

    tokio::spawn(async move {
        let mut connected = false;
        loop {
            let grace_ends = builder.grace.next_deadline();
            let cause = tokio::select! {
                changed = instance_changes.changed() => if changed.is_err() { return } else { "instances" },
                changed = route_changes.changed() => if changed.is_err() { return } else { "routes" },
                _ = failures.notified() => "an unconfirmed instance failed",
                _ = tokio::time::sleep_until(grace_ends.unwrap_or_else(Instant::now).into()), if grace_ends.is_some() => "a grace period ended",
            };
            generation += 1;
            let table;
            (builder, table) = match tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let table = builder.build(generation);
                debug!(
                    generation,
                    cause,
                    routes = table.routes.len(),
                    build_us = started.elapsed().as_micros() as u64,
                    "routing table built"
                );
                (builder, table)
            })
            .await
            {
                Ok(built) => built,
                Err(e) => {
                    // A panic in a build: the table stops following the
                    // registry; say so loudly rather than serve silently.
                    error!(error = %e, "building the routing table failed; it no longer follows the registry");
                    return;
                }
            };
            if table.registry_connected != connected {
                connected = table.registry_connected;
                if connected {
                    info!(
                        routes = table.routes.len(),
                        "registry connected; routing table up to date"
                    );
                } else {
                    warn!("registry unreachable; serving from the last routing table");
                }
            }
            publisher.publish(table);
        }
    });
    handle
}

/// Everything a table is built from, and the state kept between builds;
/// owned by the discovery task, lent to the blocking pool for each build.
struct Builder {
    instances: Watcher<Instance>,
    routes: Watcher<NamedRoute>,
    defaults: Defaults,
    allowed: AllowedBackends,
    live: LiveState,
    grace: Grace,
}

impl Builder {
    /// A table from the watchers' latest snapshots.
    fn build(&mut self, generation: u64) -> RoutingTable {
        let (i, r) = (self.instances.snapshot(), self.routes.snapshot());
        let now = Instant::now();
        let allowed_entries = match self.allowed.filter(&i.entries) {
            Cow::Borrowed(_) => i.entries.clone(),
            Cow::Owned(only_allowed) => Arc::new(only_allowed),
        };
        let routable = self.grace.apply(&allowed_entries, now);
        self.live.build_routable(
            &routable,
            &r.entries,
            &self.defaults,
            i.connected && r.connected,
            generation,
            now,
        )
    }
}
