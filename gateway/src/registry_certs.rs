//! `--tls-registry-certs`: the registry's TLS certificates
//! (`{prefix}/certs/`) served beside the `--tls-cert` files. One task
//! follows a [`Watcher`] of the prefix and hands each snapshot's set, in
//! name order, to [`Certs::set_registry`], which swaps it in for the next
//! handshakes when a name or chain changed (open connections keep their
//! session).
//!
//! The watcher checks every entry as it decodes it (PEM, key against
//! certificate: [`registry::tls_cert`]) and skips a bad one with a warning
//! naming its key and the command that fixes it; the others are served. A
//! bad value replacing a good one takes that name out of the set (the entry
//! is no longer usable), as for every registry value. While etcd is
//! unreachable the watcher keeps its last snapshot, so the last good set
//! stays in use.

use std::sync::Arc;

use registry::tls_cert::NamedCert;
use registry::{Store, Watcher};
use tracing::{info, warn};

use crate::tls::{Certs, LoadedCert, Origin};

/// Follow `{prefix}/certs/` into `certs`, in a task that runs as long as
/// the runtime does.
pub fn follow(store: &Store, certs: Arc<Certs>) {
    let watcher = Watcher::<NamedCert>::start(store, store.keys().certs());
    let mut snapshots = watcher.snapshots();
    let prefix = store.keys().certs();
    tokio::spawn(async move {
        // Held by the task: dropping the last handle stops the watch.
        let _watcher = watcher;
        // The first synced snapshot is reported even when it is empty: a
        // gateway with no certificate at all says so at start.
        let mut first = true;
        while snapshots.changed().await.is_ok() {
            let snapshot = snapshots.borrow_and_update().clone();
            if !snapshot.synced {
                continue;
            }
            let set: Vec<LoadedCert> = snapshot
                .entries
                .values()
                .map(|entry| LoadedCert {
                    name: format!("registry:{}", entry.name),
                    origin: Origin::Registry,
                    parsed: entry.cert.clone(),
                })
                .collect();
            if !certs.set_registry(set) && !first {
                continue;
            }
            first = false;
            let names: Vec<&str> = snapshot.entries.values().map(|e| e.name.as_str()).collect();
            info!(%prefix, certificates = ?names, "TLS certificates from the registry in use for new handshakes");
            if certs.current().certs().is_empty() {
                warn!(%prefix, "no TLS certificate to serve: handshakes fail until one is put with `registry certs put NAME --cert CHAIN.pem --key KEY.pem`");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use registry::Keys;
    use registry::store::memory::MemoryEtcd;
    use registry::tls_cert::fixture;

    use super::*;

    /// Long enough for the watcher and the follower to act: time is paused,
    /// so a sleep ends once every other task is idle.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fn names(certs: &Certs) -> Vec<String> {
        certs
            .current()
            .certs()
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_set_is_swapped_when_the_certificates_change_and_only_then() {
        let etcd = MemoryEtcd::default();
        let store = Store::memory(&etcd, Keys::default());
        let certs = Certs::load(Vec::new()).unwrap();
        follow(&store, certs.clone());
        store.put_cert("shop", &fixture::pem()).await.unwrap();
        settle().await;
        assert_eq!(names(&certs), ["registry:shop"]);
        let before = certs.current();

        // The watcher publishes a snapshot for this (a bad entry is
        // skipped), as it does for each progress notification: nothing
        // changed, so the set is not swapped.
        etcd.put(&store.keys().cert("bad"), "{nope");
        settle().await;
        assert!(
            Arc::ptr_eq(&before, &certs.current()),
            "swapped for nothing"
        );

        store.put_cert("api", &fixture::pem()).await.unwrap();
        settle().await;
        assert_eq!(names(&certs), ["registry:api", "registry:shop"]);
        store.delete_cert("shop").await.unwrap();
        settle().await;
        assert_eq!(names(&certs), ["registry:api"]);
    }
}
