//! An in-memory etcd: the key space with etcd's revision bookkeeping,
//! transactions, leases on tokio time, watches and compaction, so that the
//! store's callers (the admin API, the autoscaler's controller, the lease
//! keeper) are unit-tested in-process, on paused time where timing matters.
//! The conformance suite (`super::conformance`) runs the same checks on this
//! and on a real etcd.
//!
//! What it models, as etcd does it:
//! - one revision counter, starting at 1; a transaction that changes
//!   something takes the next revision for all its writes, one that changes
//!   nothing (reads, a delete of nothing) takes none;
//! - per key: create revision, mod revision, version (puts since creation);
//!   a missing key compares as 0 on all three;
//! - a transaction naming a key in two writes is refused;
//! - leases: keys on a lease go when it is revoked or expires (expiry is
//!   noticed on the next call, which is when a real etcd's clients would
//!   notice it too);
//! - watches replay history from their start revision, then follow live
//!   changes; a start revision below the compaction revision is refused
//!   with `Compacted`, and compacting at R also drops the deletes made at R.
//!
//! Faults: [`MemoryEtcd::set_up`] (every call fails, watches break),
//! [`MemoryEtcd::wipe`] (a fresh etcd on the same address).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::backend::{
    Backend, BackendError, Kv, Listing, Op, OpResult, Range, Span, Txn, TxnOutcome, WatchEvent,
    WatchMessage,
};

/// What a live watch hears: one revision's changes, or that etcd went away.
#[derive(Debug, Clone)]
enum Broadcast {
    Changes(Arc<Vec<WatchEvent>>),
    Down,
}

struct State {
    up: bool,
    revision: i64,
    compacted: i64,
    next_lease: i64,
    leases: HashMap<i64, (Duration, Instant)>,
    kv: BTreeMap<String, Kv>,
    /// Every change after the compaction revision, in order.
    history: Vec<WatchEvent>,
    live: broadcast::Sender<Broadcast>,
    keep_alives: u64,
}

impl State {
    fn new() -> Self {
        State {
            up: true,
            revision: 1,
            compacted: 0,
            next_lease: 1,
            leases: HashMap::new(),
            kv: BTreeMap::new(),
            history: Vec::new(),
            live: broadcast::channel(4096).0,
            keep_alives: 0,
        }
    }

    fn check_up(&self) -> Result<(), BackendError> {
        if self.up {
            Ok(())
        } else {
            Err(BackendError::Unavailable(
                "tcp connect error: Connection refused (os error 111)".into(),
            ))
        }
    }

    fn expire_due(&mut self) {
        let now = Instant::now();
        let mut dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(id, _)| *id)
            .collect();
        dead.sort_unstable();
        for id in dead {
            self.drop_lease(id);
        }
    }

    /// Revoke `id`: its keys go in one revision.
    fn drop_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .kv
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        let mut changes = Changes::new(self.revision + 1);
        for key in keys {
            changes.delete(&mut self.kv, &key);
        }
        self.commit(changes);
    }

    /// Publish a write's changes under the next revision (if there are any).
    fn commit(&mut self, changes: Changes) {
        if changes.events.is_empty() {
            return;
        }
        self.revision = changes.revision;
        self.history.extend(changes.events.iter().cloned());
        // No live watch is fine.
        let _no_watchers = self.live.send(Broadcast::Changes(Arc::new(changes.events)));
    }

    fn range(&self, range: &Range) -> Vec<Kv> {
        let matching = self.kv.values().filter(|kv| range.span.contains(&kv.key));
        let mut kvs: Vec<Kv> = if range.descending {
            matching.rev().cloned().collect()
        } else {
            matching.cloned().collect()
        };
        if range.limit > 0 {
            kvs.truncate(range.limit as usize);
        }
        if range.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        kvs
    }

    fn txn(&mut self, txn: Txn) -> Result<TxnOutcome, BackendError> {
        refuse_overlapping_writes(&txn.then)?;
        refuse_overlapping_writes(&txn.otherwise)?;
        let succeeded = txn.when.iter().all(|c| c.holds(self.kv.get(&c.key)));
        let ops = if succeeded { txn.then } else { txn.otherwise };
        for op in &ops {
            if let Op::Put { lease, .. } = op
                && *lease != 0
                && !self.leases.contains_key(lease)
            {
                return Err(BackendError::Refused(
                    "etcdserver: requested lease not found".into(),
                ));
            }
        }
        let mut changes = Changes::new(self.revision + 1);
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                Op::Put { key, value, lease } => OpResult::Put {
                    prev: changes.put(&mut self.kv, key, value, lease),
                },
                Op::Delete(span) => {
                    let keys: Vec<String> = self
                        .kv
                        .keys()
                        .filter(|k| span.contains(k))
                        .cloned()
                        .collect();
                    for key in &keys {
                        changes.delete(&mut self.kv, key);
                    }
                    OpResult::Delete {
                        deleted: keys.len() as i64,
                    }
                }
                Op::Get(key) => OpResult::Get(self.kv.get(&key).cloned()),
            });
        }
        self.commit(changes);
        Ok(TxnOutcome {
            succeeded,
            results,
            revision: self.revision,
        })
    }
}

/// The writes of one revision, being made.
struct Changes {
    revision: i64,
    events: Vec<WatchEvent>,
}

impl Changes {
    fn new(revision: i64) -> Self {
        Changes {
            revision,
            events: Vec::new(),
        }
    }

    fn put(
        &mut self,
        kv: &mut BTreeMap<String, Kv>,
        key: String,
        value: Vec<u8>,
        lease: i64,
    ) -> Option<Kv> {
        let prev = kv.get(&key).cloned();
        let entry = Kv {
            key: key.clone(),
            value,
            create_revision: prev.as_ref().map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        self.events.push(WatchEvent::Put(entry.clone()));
        kv.insert(key, entry);
        prev
    }

    fn delete(&mut self, kv: &mut BTreeMap<String, Kv>, key: &str) {
        if kv.remove(key).is_some() {
            self.events.push(WatchEvent::Delete {
                key: key.to_owned(),
                revision: self.revision,
            });
        }
    }
}

/// etcd refuses a transaction whose writes touch one key twice.
fn refuse_overlapping_writes(ops: &[Op]) -> Result<(), BackendError> {
    let mut puts = HashSet::new();
    for op in ops {
        if let Op::Put { key, .. } = op
            && !puts.insert(key.as_str())
        {
            return Err(BackendError::Refused(
                "etcdserver: duplicate key given in txn request".into(),
            ));
        }
    }
    for op in ops {
        if let Op::Delete(span) = op
            && puts.iter().any(|key| span.contains(key))
        {
            return Err(BackendError::Refused(
                "etcdserver: duplicate key given in txn request".into(),
            ));
        }
    }
    Ok(())
}

/// Shared handle: tests keep one, every store or lease backend holds another.
#[derive(Clone)]
pub struct MemoryEtcd(Arc<Mutex<State>>);

impl Default for MemoryEtcd {
    fn default() -> Self {
        MemoryEtcd(Arc::new(Mutex::new(State::new())))
    }
}

impl MemoryEtcd {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.0.lock().expect("a MemoryEtcd call panicked");
        state.expire_due();
        f(&mut state)
    }

    /// Run `f` on the state if etcd is up, as one call to it.
    fn call<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        self.with(|s| {
            s.check_up()?;
            f(s)
        })
    }

    /// Up (the default) or unreachable: while down every call fails and
    /// every watch breaks.
    pub fn set_up(&self, up: bool) {
        self.with(|s| {
            s.up = up;
            if !up {
                let _no_watchers = s.live.send(Broadcast::Down);
            }
        });
    }

    /// Lose every key, lease and revision, as a fresh etcd on the same
    /// address would; watches break.
    pub fn wipe(&self) {
        self.with(|s| {
            let live = s.live.clone();
            let up = s.up;
            *s = State::new();
            s.up = up;
            let _no_watchers = live.send(Broadcast::Down);
            s.live = live;
        });
    }

    /// Compact the history up to `revision`.
    pub fn compact(&self, revision: i64) {
        self.with(|s| {
            s.compacted = s.compacted.max(revision);
            let compacted = s.compacted;
            s.history.retain(|e| match e {
                WatchEvent::Put(kv) => kv.mod_revision >= compacted,
                WatchEvent::Delete { revision, .. } => *revision > compacted,
            });
        });
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.with(|s| s.revision)
    }

    /// Expire `lease` now.
    pub fn expire(&self, lease: i64) {
        self.with(|s| s.drop_lease(lease));
    }

    /// Renew every lease's TTL, as etcd does when it restarts with its data.
    pub fn refresh_all(&self) {
        self.with(|s| {
            let now = Instant::now();
            for (ttl, until) in s.leases.values_mut() {
                *until = now + *ttl;
            }
        });
    }

    /// Delete one key, leaving its lease alone (`etcdctl del`).
    pub fn delete(&self, key: &str) {
        self.with(|s| {
            let mut changes = Changes::new(s.revision + 1);
            changes.delete(&mut s.kv, key);
            s.commit(changes);
        });
    }

    /// Put `value` at `key` with no lease (`etcdctl put`), whatever it holds.
    pub fn put(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.with(|s| {
            let mut changes = Changes::new(s.revision + 1);
            changes.put(&mut s.kv, key.to_owned(), value.into(), 0);
            s.commit(changes);
        });
    }

    /// The value at `key` (as text) and its lease.
    pub fn get(&self, key: &str) -> Option<(String, i64)> {
        self.with(|s| {
            s.kv.get(key)
                .map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease))
        })
    }

    /// Every key under `prefix`, in key order (`etcdctl get --prefix`).
    pub fn list(&self, prefix: &str) -> Vec<Kv> {
        self.with(|s| s.range(&Range::prefix(prefix)))
    }

    pub fn keep_alives(&self) -> u64 {
        self.with(|s| s.keep_alives)
    }

    pub fn live_leases(&self) -> usize {
        self.with(|s| s.leases.len())
    }

    // The lease operations, for `registration::memory::MemoryLeases`.

    pub(crate) fn grant(&self, ttl: Duration) -> Result<i64, BackendError> {
        self.call(|s| {
            let id = s.next_lease;
            s.next_lease += 1;
            s.leases.insert(id, (ttl, Instant::now() + ttl));
            Ok(id)
        })
    }

    /// The lease's TTL in seconds after refreshing it; 0 if it is gone.
    pub(crate) fn keep_alive(&self, lease: i64) -> Result<i64, BackendError> {
        self.call(|s| {
            s.keep_alives += 1;
            Ok(match s.leases.get_mut(&lease) {
                Some((ttl, until)) => {
                    *until = Instant::now() + *ttl;
                    ttl.as_secs() as i64
                }
                None => 0,
            })
        })
    }

    pub(crate) fn revoke(&self, lease: i64) -> Result<(), BackendError> {
        self.call(|s| {
            s.drop_lease(lease);
            Ok(())
        })
    }
}

impl Backend for MemoryEtcd {
    fn range(&self, range: Range) -> BoxFuture<'_, Result<Listing, BackendError>> {
        let result = self.call(|s| {
            Ok(Listing {
                revision: s.revision,
                kvs: s.range(&range),
            })
        });
        Box::pin(std::future::ready(result))
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, BackendError>> {
        let result = self.call(|s| s.txn(txn));
        Box::pin(std::future::ready(result))
    }

    fn watch(
        &self,
        prefix: String,
        start: i64,
    ) -> BoxFuture<'_, Result<BoxStream<'static, WatchMessage>, BackendError>> {
        let result = self.call(|s| {
            let start = start.max(1);
            if start < s.compacted {
                let compacted = s.compacted;
                return Ok(stream::iter([WatchMessage::Compacted(compacted)]).boxed());
            }
            let span = Span::Prefix(prefix);
            let mut replay: Vec<WatchMessage> = Vec::new();
            let mut batch: Vec<WatchEvent> = Vec::new();
            for event in s
                .history
                .iter()
                .filter(|e| e.revision() >= start && span.contains(e.key()))
            {
                if batch
                    .last()
                    .is_some_and(|b| b.revision() != event.revision())
                {
                    replay.push(WatchMessage::Events(std::mem::take(&mut batch)));
                }
                batch.push(event.clone());
            }
            if !batch.is_empty() {
                replay.push(WatchMessage::Events(batch));
            }
            // Subscribed under the same lock as the replay: nothing falls between.
            let live = s.live.subscribe();
            let follow = stream::unfold(Some(live), move |live| {
                let span = span.clone();
                async move {
                    let mut live = live?;
                    loop {
                        let message = match live.recv().await {
                            Ok(Broadcast::Changes(events)) => {
                                let mine: Vec<WatchEvent> = events
                                    .iter()
                                    .filter(|e| span.contains(e.key()))
                                    .cloned()
                                    .collect();
                                if mine.is_empty() {
                                    continue;
                                }
                                return Some((WatchMessage::Events(mine), Some(live)));
                            }
                            Ok(Broadcast::Down) => WatchMessage::Broken("etcd went away".into()),
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                WatchMessage::Broken(format!("watch fell {n} revisions behind"))
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                WatchMessage::Broken("etcd went away".into())
                            }
                        };
                        return Some((message, None));
                    }
                }
            });
            Ok(stream::iter(replay).chain(follow).boxed())
        });
        Box::pin(std::future::ready(result))
    }
}
