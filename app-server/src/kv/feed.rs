//! Keeps a [`Kv`]'s membership equal to the service's ready instances in the
//! registry, through a `registry::Watcher` on the service's instance prefix.
//! While etcd is unreachable the watcher keeps its last snapshot, and so does
//! the membership.

use std::sync::Arc;
use std::time::Duration;

use registry::{Instance, InstanceState, Snapshot, Store, Watcher};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::cluster::Kv;
use super::membership::Member;

/// Follow `service`'s instances until `stop`. Waits up to `first_sync` for
/// the first listing so the instance does not start with a view of itself only.
pub async fn start(
    store: &Store,
    service: &str,
    kv: Arc<Kv>,
    stop: CancellationToken,
    first_sync: Duration,
) {
    let watcher: Watcher<Instance> = Watcher::start(store, store.keys().service_instances(service));
    if !watcher.wait_synced(first_sync).await {
        warn!(
            service,
            "the registry has not listed the service's instances yet; the key-value store starts with this instance only and catches up when etcd answers"
        );
    }
    let mut snapshots = watcher.snapshots();
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            let members = members(&snapshots.borrow_and_update());
            kv.membership().update(members);
            tokio::select! {
                () = stop.cancelled() => return,
                changed = snapshots.changed() => if changed.is_err() { return },
            }
        }
    });
}

/// The ready instances of a snapshot.
pub fn members(snapshot: &Snapshot<Instance>) -> Vec<Member> {
    snapshot
        .entries
        .values()
        .filter(|i| i.state == InstanceState::Ready)
        .map(|i| Member {
            id: i.id.clone(),
            addr: i.addr.clone(),
            weight: i.weight,
            started: i.started_at.into(),
        })
        .collect()
}
