//! From the registry to the routing table: one task follows the instances and
//! routes prefixes (each through a `registry::Watcher`) and publishes a new
//! [`RoutingTable`](crate::table::RoutingTable) whenever either changes.
//!
//! Instances whose address `--allowed-backends` refuses are left out here,
//! before the table is built ([`AllowedBackends`]).
//!
//! Malformed entries never reach this module (the watcher skips them with a
//! warning naming the key). While etcd is unreachable the watchers keep their
//! last snapshots, so the table keeps serving; it only records that the
//! registry is disconnected, which `/healthz` reports.

use std::time::Instant;

use etcd_client::Client;
use registry::model::NamedRoute;
use registry::{Instance, Keys, Watcher};
use tracing::{info, warn};

use crate::allowed::AllowedBackends;
use crate::table::{Defaults, LiveState, TableHandle};

/// Start following the registry; the returned handle always has a table
/// (empty until the first list succeeds).
pub fn start(
    client: Client,
    keys: Keys,
    defaults: Defaults,
    mut allowed: AllowedBackends,
) -> TableHandle {
    let instances = Watcher::<Instance>::start(client.clone(), keys.clone(), keys.instances());
    let routes = Watcher::<NamedRoute>::start(client, keys.clone(), keys.routes());
    let mut instance_changes = instances.snapshots();
    let mut route_changes = routes.snapshots();
    let mut live = LiveState::default();
    let mut generation = 0;
    let mut build = move |live: &mut LiveState, generation: u64| {
        let (i, r) = (instances.snapshot(), routes.snapshot());
        let routable = allowed.filter(&i.entries);
        live.build(
            &routable,
            &r.entries,
            &defaults,
            i.connected && r.connected,
            generation,
            Instant::now(),
        )
    };
    let (handle, publisher) = TableHandle::new(build(&mut live, generation));

    tokio::spawn(async move {
        let mut connected = false;
        loop {
            tokio::select! {
                changed = instance_changes.changed() => if changed.is_err() { return },
                changed = route_changes.changed() => if changed.is_err() { return },
            }
            generation += 1;
            let table = build(&mut live, generation);
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
