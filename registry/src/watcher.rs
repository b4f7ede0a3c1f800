//! List-then-watch over one key prefix, decoded into typed values.
//!
//! One background task per [`Watcher`] lists the prefix through a
//! [`Store`]'s backend, remembers the header revision and watches from it.
//! On compaction, cancellation, a broken stream or an etcd restart it lists
//! again and emits a full [`Update::Reset`] rather than patching (the
//! linkerd/tower discovery model). The etcd backend reports a watch that
//! hears nothing, not even progress, for 4 s (a frozen etcd, a cut-off host)
//! as broken. While etcd is away the last good snapshot stays in place,
//! marked disconnected. Values that do not decode are skipped with a warning
//! naming the key, so the snapshot always equals "every decodable entry in
//! etcd".
//!
//! Consumers either read the latest [`Snapshot`] (cheap `Arc` clone, e.g. a
//! gateway's routing table) or follow every change with [`Watcher::subscribe`].

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ETCD_CALL_TIMEOUT;
use crate::keys::Keys;
use crate::model::RegistryValue;
use crate::store::Store;
use crate::store::backend::{Backend, BackendError, Range, WatchEvent, WatchMessage};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// One change to the watched set, keyed by full etcd key.
#[derive(Debug, Clone, PartialEq)]
pub enum Update<T> {
    /// The whole set, replacing whatever the consumer had.
    Reset(Arc<BTreeMap<String, T>>),
    Put(String, T),
    Delete(String),
}

/// The watched set as last seen, with how fresh it is.
#[derive(Debug, Clone)]
pub struct Snapshot<T> {
    pub entries: Arc<BTreeMap<String, T>>,
    /// etcd revision the entries reflect.
    pub revision: i64,
    /// At least one list has succeeded.
    pub synced: bool,
    /// The watch stream is up; false while etcd is unreachable (entries are then the last good ones).
    pub connected: bool,
}

impl<T> Default for Snapshot<T> {
    fn default() -> Self {
        Snapshot {
            entries: Arc::default(),
            revision: 0,
            synced: false,
            connected: false,
        }
    }
}

/// Handle to a running watch; dropping the last clone stops the task.
pub struct Watcher<T> {
    prefix: String,
    snapshot: watch::Receiver<Snapshot<T>>,
    updates: broadcast::Sender<Update<T>>,
    _stop: Arc<StopOnDrop>,
}

impl<T> Clone for Watcher<T> {
    fn clone(&self) -> Self {
        Watcher {
            prefix: self.prefix.clone(),
            snapshot: self.snapshot.clone(),
            updates: self.updates.clone(),
            _stop: self._stop.clone(),
        }
    }
}

struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl<T: RegistryValue> Watcher<T> {
    /// Watch every key under `prefix` (which should end with `/`).
    pub fn start(store: &Store, prefix: impl Into<String>) -> Self {
        Self::spawn(store, prefix.into(), Snapshot::default(), None)
    }

    /// Resume from a snapshot taken earlier (e.g. persisted across a restart):
    /// watch for what came after `snapshot.revision` without listing first.
    /// If that revision has been compacted away, the watcher lists again and
    /// resets.
    pub fn resume(store: &Store, prefix: impl Into<String>, snapshot: Snapshot<T>) -> Self {
        let revision = snapshot.revision;
        let snapshot = Snapshot {
            connected: false,
            ..snapshot
        };
        Self::spawn(store, prefix.into(), snapshot, Some(revision))
    }

    fn spawn(store: &Store, prefix: String, initial: Snapshot<T>, resume: Option<i64>) -> Self {
        let (snapshot_tx, snapshot) = watch::channel(initial);
        let (updates, _) = broadcast::channel(1024);
        let stop = CancellationToken::new();
        let task = WatchTask {
            backend: store.backend(),
            keys: store.keys().clone(),
            prefix: prefix.clone(),
            snapshot: snapshot_tx,
            updates: updates.clone(),
            stop: stop.clone(),
            resume,
            _value: PhantomData,
        };
        tokio::spawn(task.run());
        Watcher {
            prefix,
            snapshot,
            updates,
            _stop: Arc::new(StopOnDrop(stop)),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Snapshot<T> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that is notified on every snapshot change.
    pub fn snapshots(&self) -> watch::Receiver<Snapshot<T>> {
        self.snapshot.clone()
    }

    /// Wait until the first list has succeeded, up to `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.synced).await
    }

    /// Wait until `cond` holds for the snapshot, up to `timeout`.
    pub async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Snapshot<T>) -> bool) -> bool {
        let mut rx = self.snapshot.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| cond(s)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Follow every change. The first update is always a `Reset` with the
    /// current set (empty until the first list succeeds).
    pub fn subscribe(&self) -> Subscription<T> {
        let rx = self.updates.subscribe();
        Subscription {
            rx,
            snapshot: self.snapshot.clone(),
            pending_reset: true,
            last_reset: None,
        }
    }
}

/// A stream of [`Update`]s. If the consumer falls behind, it gets a `Reset`
/// with the current set instead of the updates it missed.
pub struct Subscription<T> {
    rx: broadcast::Receiver<Update<T>>,
    snapshot: watch::Receiver<Snapshot<T>>,
    pending_reset: bool,
    /// The set this subscriber was last reset to. The watcher publishes a
    /// list in the snapshot and then broadcasts it; a subscriber that joined
    /// in between already has it and must not get it twice.
    last_reset: Option<Arc<BTreeMap<String, T>>>,
}

impl<T: Clone> Subscription<T> {
    /// The next update; `None` once the watcher has stopped.
    pub async fn next(&mut self) -> Option<Update<T>> {
        if std::mem::take(&mut self.pending_reset) {
            return Some(self.reset_to_snapshot());
        }
        loop {
            match self.rx.recv().await {
                Ok(Update::Reset(all))
                    if self
                        .last_reset
                        .as_ref()
                        .is_some_and(|last| Arc::ptr_eq(last, &all)) =>
                {
                    continue;
                }
                Ok(Update::Reset(all)) => {
                    self.last_reset = Some(all.clone());
                    return Some(Update::Reset(all));
                }
                Ok(update) => return Some(update),
                Err(broadcast::error::RecvError::Closed) => return None,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Subscribe again first, then read the snapshot: anything sent in
                    // between is in the snapshot and replayed after it, and Put/Delete
                    // replays are idempotent.
                    debug!(missed, "subscriber lagged; sending a reset");
                    self.rx = self.rx.resubscribe();
                    return Some(self.reset_to_snapshot());
                }
            }
        }
    }

    fn reset_to_snapshot(&mut self) -> Update<T> {
        let entries = self.snapshot.borrow().entries.clone();
        self.last_reset = Some(entries.clone());
        Update::Reset(entries)
    }
}

struct WatchTask<T> {
    backend: Arc<dyn Backend>,
    keys: Keys,
    prefix: String,
    snapshot: watch::Sender<Snapshot<T>>,
    updates: broadcast::Sender<Update<T>>,
    stop: CancellationToken,
    /// Watch for what came after this revision on the first round instead of listing.
    resume: Option<i64>,
    _value: PhantomData<fn() -> T>,
}

/// Why a watch stream ended and the prefix must be listed again.
enum Relist {
    Compacted(i64),
    Canceled(String),
    Broken(String),
}

impl<T: RegistryValue> WatchTask<T> {
    async fn run(mut self) {
        let mut retry = FIRST_RETRY;
        let mut failures = 0u32;
        let stop = self.stop.clone();
        loop {
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.list_and_watch() => r,
            };
            let reason = match attempt {
                Ok(reason) => {
                    retry = FIRST_RETRY;
                    failures = 0;
                    reason
                }
                Err(e) => {
                    failures += 1;
                    self.snapshot
                        .send_if_modified(|s| std::mem::replace(&mut s.connected, false));
                    if failures == 1 || failures.is_power_of_two() {
                        match e {
                            BackendError::Refused(_) | BackendError::Denied(_) => {
                                warn!(prefix = %self.prefix, error = %e, failures, "etcd refused to list or watch this prefix (does this program's etcd user have a role that reads it?); keeping the last snapshot and trying again")
                            }
                            BackendError::Unavailable(_) => {
                                warn!(prefix = %self.prefix, error = %e, failures, "etcd unreachable; keeping the last snapshot")
                            }
                        }
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
            };
            match reason {
                Relist::Compacted(rev) => {
                    info!(prefix = %self.prefix, compacted = rev, "watch revision compacted; listing again")
                }
                Relist::Canceled(why) => {
                    info!(prefix = %self.prefix, reason = %why, "watch canceled; listing again")
                }
                Relist::Broken(why) => {
                    self.snapshot
                        .send_if_modified(|s| std::mem::replace(&mut s.connected, false));
                    warn!(prefix = %self.prefix, reason = %why, "watch stream broken; listing again");
                }
            }
        }
    }

    /// List, publish a reset, then follow the watch until it must be redone.
    /// `Err` means etcd could not be reached for the list or the watch, or
    /// refused them.
    async fn list_and_watch(&mut self) -> Result<Relist, BackendError> {
        let revision = match self.resume.take() {
            Some(revision) => revision,
            None => self.list().await?,
        };
        // Watch from the revision the snapshot reflects, not the next one.
        // etcd accepts a watch that starts exactly at the compaction
        // revision, but compacting at R also drops the tombstones of deletes
        // made at R: a snapshot at R-1 watched from R after a compaction at R
        // would never see a delete made at R. Started at R-1, that watch is
        // refused as compacted and the prefix is listed again. Events at the
        // snapshot's own revision are already in it and are skipped below.
        let mut stream = tokio::time::timeout(
            ETCD_CALL_TIMEOUT,
            self.backend.watch(self.prefix.clone(), revision.max(1)),
        )
        .await
        .map_err(|_| {
            BackendError::Unavailable(format!("watch did not answer within {ETCD_CALL_TIMEOUT:?}"))
        })??;
        self.snapshot
            .send_if_modified(|s| !std::mem::replace(&mut s.connected, true));
        debug!(prefix = %self.prefix, revision, "watching");
        loop {
            let events = match stream.next().await {
                Some(WatchMessage::Events(events)) => events,
                Some(WatchMessage::Progress(revision)) => {
                    // Nothing changed under the prefix up to `revision`.
                    self.apply(Vec::new(), revision);
                    continue;
                }
                Some(WatchMessage::Compacted(rev)) => return Ok(Relist::Compacted(rev)),
                Some(WatchMessage::Canceled(why)) => return Ok(Relist::Canceled(why)),
                Some(WatchMessage::Broken(why)) => return Ok(Relist::Broken(why)),
                None => return Ok(Relist::Broken("stream ended".into())),
            };
            let mut updates = Vec::with_capacity(events.len());
            let mut last = revision;
            for event in events {
                if event.revision() <= revision {
                    continue;
                }
                last = last.max(event.revision());
                match event {
                    WatchEvent::Put(kv) => match self.decode(&kv.key, &kv.value) {
                        Some(value) => updates.push(Update::Put(kv.key, value)),
                        // A bad value replacing a good one: the key no longer holds a usable entry.
                        None => updates.push(Update::Delete(kv.key)),
                    },
                    WatchEvent::Delete { key, .. } => updates.push(Update::Delete(key)),
                }
            }
            self.apply(updates, last);
        }
    }

    /// List the prefix, publish the result as a snapshot and a reset, and
    /// return the revision it reflects.
    async fn list(&mut self) -> Result<i64, BackendError> {
        let listed = tokio::time::timeout(
            ETCD_CALL_TIMEOUT,
            self.backend.range(Range::prefix(self.prefix.as_str())),
        )
        .await
        .map_err(|_| {
            BackendError::Unavailable(format!("list did not answer within {ETCD_CALL_TIMEOUT:?}"))
        })??;
        let revision = listed.revision;
        let mut entries = BTreeMap::new();
        for kv in listed.kvs {
            if let Some(value) = self.decode(&kv.key, &kv.value) {
                entries.insert(kv.key, value);
            }
        }
        let entries = Arc::new(entries);
        self.snapshot.send_replace(Snapshot {
            entries: entries.clone(),
            revision,
            synced: true,
            connected: true,
        });
        self.send(Update::Reset(entries));
        Ok(revision)
    }

    /// Apply `updates` (possibly none: a progress notification) and note
    /// `revision`. Snapshot readers are woken only when an entry changed or
    /// the watch reconnected, not for the revision alone: etcd answers the
    /// quiet watch's progress requests every second, and a wake makes a
    /// gateway rebuild its whole routing table (20 ms at 10,000 routes).
    ///
    /// The set is copy-on-write, shared with every snapshot handed out (a
    /// gateway keeps one), so the first change copies all of it. Updates
    /// that change nothing copy nothing: before, the first progress
    /// notification after a reader took its share copied the whole set
    /// (a gateway takes one at every table build: a second copy of 10,000
    /// instances after each change, on the gateway's worker).
    fn apply(&self, updates: Vec<Update<T>>, revision: i64) {
        let mut effective = Vec::with_capacity(updates.len());
        self.snapshot.send_if_modified(|s| {
            // `Arc::make_mut` copies the set the first time only: it is then unshared.
            for update in updates {
                match &update {
                    Update::Put(key, value) => {
                        Arc::make_mut(&mut s.entries).insert(key.clone(), value.clone());
                    }
                    Update::Delete(key) if s.entries.contains_key(key) => {
                        Arc::make_mut(&mut s.entries).remove(key);
                    }
                    Update::Delete(_) => continue,
                    Update::Reset(_) => unreachable!("resets are published by list_and_watch"),
                }
                effective.push(update);
            }
            s.revision = s.revision.max(revision);
            let reconnected = !std::mem::replace(&mut s.connected, true);
            reconnected || !effective.is_empty()
        });
        for update in effective {
            self.send(update);
        }
    }

    fn send(&self, update: Update<T>) {
        // No subscribers is fine: snapshot readers do not subscribe.
        let _no_receivers = self.updates.send(update);
    }

    fn decode(&self, key: &str, value: &[u8]) -> Option<T> {
        match T::decode(&self.keys, key, value) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(key, error = %e, "skipping malformed registry entry");
                None
            }
        }
    }
}
