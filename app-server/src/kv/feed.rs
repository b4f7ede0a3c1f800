//! Keeps a [`Kv`]'s membership equal to the service's ready instances in the
//! registry, through a `registry::Watcher` on the service's instance prefix.
//! While etcd is unreachable the watcher keeps its last snapshot, and so does
//! the membership.
//!
//! Beside the watch, the view is confirmed every [`CONFIRM_EVERY`]: the
//! ready set is read from etcd (a linearizable read) and compared with the
//! view; a match confirms the view as of when the read was sent
//! (`super::fence`, which lets the instance coordinate only while its view
//! was confirmed in the last `VIEW_FRESH`).

use std::sync::Arc;
use std::time::Duration;

use registry::{Instance, InstanceState, Snapshot, Store, Watcher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::cluster::Kv;
use super::fence::{CONFIRM_EVERY, VIEW_FRESH};
use super::membership::Member;

/// How soon a read that did not match the view is made again: the watch is
/// usually only a few milliseconds behind.
const CONFIRM_AGAIN: Duration = Duration::from_millis(20);

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
    kv.fence().confirming_views();
    tokio::spawn(confirm(
        store.clone(),
        service.to_owned(),
        kv.clone(),
        stop.clone(),
    ));
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

/// Confirm the view against etcd until `stop` (see the module doc).
async fn confirm(store: Store, service: String, kv: Arc<Kv>, stop: CancellationToken) {
    loop {
        let asked = Instant::now();
        let read = tokio::time::timeout(VIEW_FRESH, store.instances_unlogged(&service)).await;
        let next = match read {
            Ok(Ok(instances)) if kv.membership().is_current(ready(instances.iter())) => {
                kv.fence().confirmed(asked);
                CONFIRM_EVERY
            }
            Ok(Ok(_)) => CONFIRM_AGAIN,
            Ok(Err(e)) => {
                debug!(error = %e, "cannot confirm the key-value view");
                CONFIRM_EVERY
            }
            // The read retries until etcd answers; it timed out still
            // retrying, so the next one starts at once.
            Err(_) => Duration::ZERO,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(next) => {}
        }
    }
}

/// The ready instances of a snapshot.
pub fn members(snapshot: &Snapshot<Instance>) -> Vec<Member> {
    ready(snapshot.entries.values())
}

/// The ready instances among `instances`.
fn ready<'a>(instances: impl Iterator<Item = &'a Instance>) -> Vec<Member> {
    instances
        .filter(|i| i.state == InstanceState::Ready)
        .map(|i| Member {
            id: i.id.as_str().into(),
            addr: i.addr.as_str().into(),
            weight: i.weight,
            started: i.started_at.into(),
        })
        .collect()
}
