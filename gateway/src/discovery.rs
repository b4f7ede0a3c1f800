//! From the registry to the routing table: one task follows the instances and
//! routes prefixes (each through a `registry::Watcher`; the routes watcher is
//! given, since the gateway's other readers of `routes/` share it) and
//! publishes a new [`RoutingTable`](crate::table::RoutingTable) whenever
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
use tracing::{info, warn};

use crate::allowed::AllowedBackends;
use crate::grace::Grace;
use crate::table::{Defaults, LiveState, TableHandle};

/// Start following the registry's instances, and its routes through
/// `routes` (a watcher of `keys.routes()`); the returned handle always has a
/// table (empty until the first list succeeds). Instances outside `allowed`
/// are left out first; `grace` is how long an instance that left while
/// ready stays routable (zero: not at all).
pub fn start(
    store: &Store,
    routes: Watcher<NamedRoute>,
    defaults: Defaults,
    mut allowed: AllowedBackends,
    grace: Duration,
) -> TableHandle {
    let keys = store.keys();
    let instances = Watcher::<Instance>::start(store, keys.instances());
    let mut instance_changes = instances.snapshots();
    let mut route_changes = routes.snapshots();
    let mut live = LiveState::default();
    let mut grace = Grace::new(grace);
    let failures = grace.failures();
    let mut generation = 0;
    let mut build = move |live: &mut LiveState, grace: &mut Grace, generation: u64| {
        let (i, r) = (instances.snapshot(), routes.snapshot());
        let now = Instant::now();
        let allowed_entries = match allowed.filter(&i.entries) {
            Cow::Borrowed(_) => i.entries.clone(),
            Cow::Owned(only_allowed) => Arc::new(only_allowed),
        };
        let routable = grace.apply(&allowed_entries, now);
        live.build_routable(
            &routable,
            &r.entries,
            &defaults,
            i.connected && r.connected,
            generation,
            now,
        )
    };
    let (handle, publisher) = TableHandle::new(build(&mut live, &mut grace, generation));

    tokio::spawn(async move {
        let mut connected = false;
        loop {
            let grace_ends = grace.next_deadline();
            tokio::select! {
                changed = instance_changes.changed() => if changed.is_err() { return },
                changed = route_changes.changed() => if changed.is_err() { return },
                _ = failures.notified() => {}
                _ = tokio::time::sleep_until(grace_ends.unwrap_or_else(Instant::now).into()), if grace_ends.is_some() => {}
            }
            generation += 1;
            let table = build(&mut live, &mut grace, generation);
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
