//! The instance's local copy of the entries it holds: a map from key to the
//! newest [`Entry`] seen, applied last-writer-wins by [`Version`].
//!
//! Every change goes through [`LocalStore::apply`] (keep the newer version)
//! or a compare-and-apply under the same lock, so replication, hand-offs and
//! read repair can arrive in any order, any number of times, and the map
//! still ends at the newest version of every key. Deletes are tombstones
//! (entries without a value) until they are purged.
//!
//! Each entry also remembers which owner set is known to hold it
//! (`confirmed`, a fingerprint of the owners' ids), so the sync task pushes
//! only entries whose owners changed or were never all reached.
//!
//! With `--data-dir` ([`LocalStore::open`]) every change is appended to the
//! directory's [`Journal`] under the same lock, before the map changes, so
//! the journal replays to exactly this map. A change the journal cannot
//! record is refused ([`StorageFailed`]), never half made.
//!
//! [`LocalStore::flushed`] is group commit for `--durability fsync`: a
//! writer waits until the journal is on the disk up to its own record. One
//! waiter at a time runs `fsync` (on the blocking pool, outside the map's
//! lock), after yielding once so that the writes already ready append
//! first; the writers that append meanwhile queue behind it, and the next
//! one's `fsync` covers all of them, so under load one `fsync` serves many
//! writes and the map's lock is never held across one.
//!
//! A failed `fsync` fails every write waiting for a flush from then on,
//! not only the writers it was to cover: the kernel may have dropped the
//! records it was to flush, and a later `fsync` of the same file can
//! succeed without them (Linux reports a writeback error once). Durability
//! comes back when [`LocalStore::persist`] (the sync task, once a second)
//! has rewritten the journal from the map into a new file and flushed it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tracing::{error, info, warn};

use super::journal::{Journal, JournalError, Record, record_len};
use super::version::Version;

/// One key's newest known state.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub version: Version,
    /// `None`: a tombstone.
    pub value: Option<Bytes>,
}

impl Entry {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    /// Fingerprint of the owner set known to hold this version (0: none).
    confirmed: u64,
    /// When this instance got this version.
    since: Instant,
}

/// What [`LocalStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The entry is newer than what was here (or nothing was): stored.
    Stored,
    /// This instance already had this version or a newer one.
    AlreadyNewer,
}

/// Why a compare-and-set refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The version present (`None`: no live value).
    pub current: Option<Version>,
}

/// The data directory could not record a change, so it was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the data directory could not record the change ({0}); check its disk space and permissions"
)]
pub struct StorageFailed(pub String);

/// Why [`LocalStore::compare_and_write`] stored nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefused {
    Mismatch(Mismatch),
    Storage(StorageFailed),
}

/// What a write should require of the current entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// `If-Match: *`: a live value must exist.
    Exists,
    /// `If-Match: "<version>"`: the live value must have this version.
    Version(Version),
}

/// The local map; cheap operations under one mutex. The only I/O while
/// locked is the journal's append (one `write`, no `fsync`) when there is a
/// data directory.
#[derive(Debug, Default)]
pub struct LocalStore {
    inner: Mutex<Inner>,
    /// Group commit: how far the journal is on the disk.
    synced: Arc<Synced>,
    /// Held by the one flush of the journal running (until its `fsync`
    /// returns, even if its caller has gone).
    flushing: Arc<tokio::sync::Mutex<()>>,
    /// `fsync` calls made for [`LocalStore::flushed`].
    fsyncs: AtomicU64,
    /// Tests: the next `fsync` fails as a failing disk's would.
    #[cfg(test)]
    fail_next_sync: AtomicBool,
}

/// How far the journal is known to be on the disk.
#[derive(Debug, Default)]
struct Synced {
    /// The journal position ([`Journal::written`]) on the disk.
    upto: AtomicU64,
    /// Set by a failed `fsync` of the journal (see the module doc), until
    /// [`LocalStore::persist`] has rewritten it.
    failed: AtomicBool,
}

impl Synced {
    /// Whether the journal is on the disk up to `wanted`; an error once an
    /// `fsync` has failed short of it.
    fn covers(&self, wanted: u64) -> Result<bool, StorageFailed> {
        if self.upto.load(Ordering::Acquire) >= wanted {
            Ok(true)
        } else if self.failed.load(Ordering::Acquire) {
            Err(StorageFailed(SYNC_FAILED_BEFORE.into()))
        } else {
            Ok(false)
        }
    }

    /// The journal was rewritten into a new file and flushed, up to
    /// `upto`: all of it is on the disk, whatever an `fsync` of the old
    /// file did (call it holding the flush turn, so that no `fsync` ends
    /// meanwhile).
    fn rewritten(&self, upto: u64) {
        self.upto.fetch_max(upto, Ordering::AcqRel);
        self.failed.store(false, Ordering::Release);
    }

    /// Record how an `fsync` of the journal up to `upto` went.
    fn record(&self, upto: u64, outcome: &std::io::Result<()>) {
        match outcome {
            Ok(()) => {
                self.upto.fetch_max(upto, Ordering::AcqRel);
            }
            Err(e) => {
                if !self.failed.swap(true, Ordering::AcqRel) {
                    error!(error = %e, "fsync of the key-value journal failed; writes are refused as not durable until the journal is rewritten");
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    journal: Option<Journal>,
}

impl Inner {
    fn record(&mut self, record: Record<'_>) -> Result<(), StorageFailed> {
        match &mut self.journal {
            Some(journal) => journal
                .append(record)
                .map_err(|e| StorageFailed(e.to_string())),
            None => Ok(()),
        }
    }
}

impl LocalStore {
    /// A store kept in `dir` (`--data-dir`): what the directory's journal
    /// holds is loaded, unconfirmed, so the sync task places it on its
    /// current owners.
    pub fn open(dir: &Path) -> Result<LocalStore, JournalError> {
        let (journal, entries) = Journal::open(dir)?;
        let live = entries.values().filter(|e| !e.is_tombstone()).count();
        info!(dir = %dir.display(), entries = entries.len(), live, "key-value data directory opened");
        let slots = entries
            .into_iter()
            .map(|(key, entry)| (key, Slot::new(entry, 0)))
            .collect();
        Ok(LocalStore {
            inner: Mutex::new(Inner {
                slots,
                journal: Some(journal),
            }),
            ..LocalStore::default()
        })
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.lock().slots.get(key).map(|s| s.entry.clone())
    }

    /// The newest version held (for the clock after a restart).
    pub fn newest_version(&self) -> Option<Version> {
        self.lock().slots.values().map(|s| s.entry.version).max()
    }

    /// Keep `entry` if it is newer than the local one.
    pub fn apply(&self, key: &str, entry: Entry, confirmed: u64) -> Result<Applied, StorageFailed> {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get_mut(key)
            && slot.entry.version >= entry.version
        {
            if slot.entry.version == entry.version && confirmed != 0 {
                slot.confirmed = confirmed;
            }
            return Ok(Applied::AlreadyNewer);
        }
        inner.record(Record::Put(key, &entry))?;
        inner
            .slots
            .insert(key.to_owned(), Slot::new(entry, confirmed));
        Ok(Applied::Stored)
    }

    /// Check `precondition` against the local entry and, if it holds, store
    /// the value made by `make` from the current version, atomically.
    /// Returns the stored entry and whether a live value was replaced.
    pub fn compare_and_write(
        &self,
        key: &str,
        precondition: Precondition,
        make: impl FnOnce(Option<Version>) -> Entry,
    ) -> Result<(Entry, bool), WriteRefused> {
        let mut inner = self.lock();
        let current = inner.slots.get(key).map(|s| &s.entry);
        let live = current.filter(|e| !e.is_tombstone()).map(|e| e.version);
        let holds = match precondition {
            Precondition::None => true,
            Precondition::Exists => live.is_some(),
            Precondition::Version(v) => live == Some(v),
        };
        if !holds {
            return Err(WriteRefused::Mismatch(Mismatch { current: live }));
        }
        let entry = make(current.map(|e| e.version));
        inner
            .record(Record::Put(key, &entry))
            .map_err(WriteRefused::Storage)?;
        inner
            .slots
            .insert(key.to_owned(), Slot::new(entry.clone(), 0));
        Ok((entry, live.is_some()))
    }

    /// Record that `owners` (a fingerprint) all hold `version` of `key`.
    pub fn confirm(&self, key: &str, version: Version, owners: u64) {
        if let Some(slot) = self.lock().slots.get_mut(key)
            && slot.entry.version == version
        {
            slot.confirmed = owners;
        }
    }

    /// Remove `key` if it still has `version` (a purged tombstone, or a copy
    /// handed off to its owners). False when it has another version, or the
    /// data directory could not record the removal (the copy stays; the next
    /// sync pass tries again).
    pub fn remove_if(&self, key: &str, version: Version) -> bool {
        let mut inner = self.lock();
        if inner
            .slots
            .get(key)
            .is_none_or(|s| s.entry.version != version)
        {
            return false;
        }
        if let Err(e) = inner.record(Record::Remove(key, version)) {
            warn!(key, error = %e, "keeping a copy that could have been dropped");
            return false;
        }
        inner.slots.remove(key);
        true
    }

    /// Put the data directory's journal on the disk: by rewriting it from
    /// the map (a new file, flushed) if it has grown past twice what the
    /// entries need, or if an `fsync` of it failed, so that writes are
    /// reported durable again from then on; otherwise by an `fsync`.
    /// Nothing to do without a data directory. Runs `fsync`: call it off
    /// the runtime.
    pub fn persist(&self) -> std::io::Result<()> {
        // One flush of the journal at a time (the turn `flushed` takes), so
        // a failure cannot slip between another flush's check and its end.
        let _turn = self.flushing.blocking_lock();
        let failed = self.synced.failed.load(Ordering::Acquire);
        let (file, upto) = {
            let mut inner = self.lock();
            let Inner { slots, journal } = &mut *inner;
            let Some(journal) = journal else {
                return Ok(());
            };
            if failed
                || journal
                    .wants_compaction(|| slots.iter().map(|(k, s)| record_len(k, &s.entry)).sum())
            {
                let before = journal.len();
                journal.compact(slots.iter().map(|(k, s)| (k.as_str(), &s.entry)))?;
                info!(
                    before_bytes = before,
                    after_bytes = journal.len(),
                    after_failed_fsync = failed,
                    "key-value journal compacted"
                );
                // `compact` flushed the new file and its directory: the
                // map is on the disk, and no `fsync` is left to run.
                self.synced.rewritten(journal.written());
                if failed {
                    info!(
                        "the key-value journal is on the disk again; writes are reported durable"
                    );
                }
                return Ok(());
            }
            (journal.sync_handle()?, journal.written())
        };
        let outcome = sync_data(&file, self.injected_failure());
        self.synced.record(upto, &outcome);
        outcome
    }

    /// Drop every entry, and empty the data directory's journal (on the
    /// disk when this returns): for an instance that has handed everything
    /// to its other owners and leaves, so that a later instance started on
    /// the same directory cannot bring back values deleted meanwhile.
    pub fn forget_all(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        if let Some(journal) = &mut inner.journal {
            journal.compact(std::iter::empty())?;
            // As after `persist`'s rewrite: the (empty) map is on the disk,
            // whatever an `fsync` of the old file said.
            self.synced.rewritten(journal.written());
        }
        inner.slots.clear();
        Ok(())
    }

    /// Wait until every change recorded so far is on the disk (group
    /// commit, see the module doc). Nothing to wait for without a data
    /// directory. An error means the changes may not have reached the disk.
    pub async fn flushed(&self) -> Result<(), StorageFailed> {
        let wanted = match &self.lock().journal {
            Some(journal) => journal.written(),
            None => return Ok(()),
        };
        if self.synced.covers(wanted)? {
            return Ok(());
        }
        let turn = self.flushing.clone().lock_owned().await;
        // The flush before ours may have covered our record, or failed.
        if self.synced.covers(wanted)? {
            return Ok(());
        }
        // Let the writes whose requests are ready append their records
        // first (a yield lets the runtime poll its sockets once), so that
        // this flush covers them too.
        tokio::task::yield_now().await;
        let failed = |e: &dyn std::fmt::Display| StorageFailed(format!("fsync failed: {e}"));
        let (file, upto) = {
            let inner = self.lock();
            let journal = inner
                .journal
                .as_ref()
                .expect("a journal is never taken away");
            (
                journal.sync_handle().map_err(|e| failed(&e))?,
                journal.written(),
            )
        };
        let fail = self.injected_failure();
        let synced = self.synced.clone();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        // The task records its outcome and ends the turn itself: a caller
        // that has gone must not let a failure pass unrecorded, nor a
        // second `fsync` start beside this one.
        tokio::task::spawn_blocking(move || {
            let outcome = sync_data(&file, fail);
            synced.record(upto, &outcome);
            drop(turn);
            outcome
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| failed(&e))
    }

    /// Whether this `fsync` is to fail (tests set `fail_next_sync`).
    fn injected_failure(&self) -> bool {
        #[cfg(test)]
        return self.fail_next_sync.swap(false, Ordering::Relaxed);
        #[cfg(not(test))]
        false
    }

    /// `fsync` calls made by [`LocalStore::flushed`] so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Every entry with its confirmation fingerprint and age, for the sync task.
    pub fn scan(&self) -> Vec<(String, Entry, u64, Instant)> {
        self.lock()
            .slots
            .iter()
            .map(|(k, s)| (k.clone(), s.entry.clone(), s.confirmed, s.since))
            .collect()
    }

    /// Live values (tombstones not counted).
    pub fn live_len(&self) -> usize {
        self.lock()
            .slots
            .values()
            .filter(|s| !s.entry.is_tombstone())
            .count()
    }

    /// Whether the entries are kept in a data directory (`--data-dir`)
    /// as well as in memory.
    pub fn has_data_dir(&self) -> bool {
        self.lock().journal.is_some()
    }

    /// Entries including tombstones.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // Every critical section is a few map operations (and at most one
    // journal append, done before the map changes) that cannot leave the
    // map half-updated, so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a write waiting for a flush is refused once an `fsync` failed.
const SYNC_FAILED_BEFORE: &str = "an fsync of the journal failed, so writes since are not known to be on the disk; the journal is rewritten within a second if the disk takes writes again";

/// `fdatasync` on `file`, or the error a failing disk gives when `fail`
/// (tests).
fn sync_data(file: &std::fs::File, fail: bool) -> std::io::Result<()> {
    if fail {
        return Err(std::io::Error::from_raw_os_error(nix::libc::EIO));
    }
    file.sync_data()
}

impl Slot {
    fn new(entry: Entry, confirmed: u64) -> Self {
        Slot {
            entry,
            confirmed,
            since: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(hlc: u64) -> Version {
        Version { hlc, node: 1 }
    }

    fn live(hlc: u64, value: &'static str) -> Entry {
        Entry {
            version: v(hlc),
            value: Some(Bytes::from_static(value.as_bytes())),
        }
    }

    #[test]
    fn the_newest_version_wins_in_any_order() {
        let store = LocalStore::default();
        assert_eq!(store.apply("k", live(2, "b"), 0).unwrap(), Applied::Stored);
        assert_eq!(
            store.apply("k", live(1, "a"), 0).unwrap(),
            Applied::AlreadyNewer
        );
        assert_eq!(
            store.apply("k", live(2, "b"), 0).unwrap(),
            Applied::AlreadyNewer
        );
        assert_eq!(store.get("k"), Some(live(2, "b")));
        let tombstone = Entry {
            version: v(3),
            value: None,
        };
        assert_eq!(
            store.apply("k", tombstone.clone(), 0).unwrap(),
            Applied::Stored
        );
        assert_eq!(
            store.apply("k", live(2, "b"), 0).unwrap(),
            Applied::AlreadyNewer
        );
        assert_eq!(store.get("k"), Some(tombstone));
        assert_eq!((store.len(), store.live_len()), (1, 0));
    }

    #[test]
    fn compare_and_write_checks_the_live_version() {
        let store = LocalStore::default();
        let make = |hlc| move |_: Option<Version>| live(hlc, "x");
        assert_eq!(
            store.compare_and_write("k", Precondition::Exists, make(1)),
            Err(WriteRefused::Mismatch(Mismatch { current: None }))
        );
        let (_, replaced) = store
            .compare_and_write("k", Precondition::None, make(1))
            .unwrap();
        assert!(!replaced);
        assert_eq!(
            store.compare_and_write("k", Precondition::Version(v(9)), make(2)),
            Err(WriteRefused::Mismatch(Mismatch {
                current: Some(v(1))
            }))
        );
        let (entry, replaced) = store
            .compare_and_write("k", Precondition::Version(v(1)), make(2))
            .unwrap();
        assert!(replaced);
        assert_eq!(entry.version, v(2));
        // A tombstone is not a live value.
        store
            .apply(
                "k",
                Entry {
                    version: v(3),
                    value: None,
                },
                0,
            )
            .unwrap();
        assert_eq!(
            store.compare_and_write("k", Precondition::Exists, make(4)),
            Err(WriteRefused::Mismatch(Mismatch { current: None }))
        );
    }

    #[test]
    fn confirm_and_remove_only_touch_the_named_version() {
        let store = LocalStore::default();
        store.apply("k", live(2, "b"), 0).unwrap();
        store.confirm("k", v(1), 42);
        assert_eq!(store.scan()[0].2, 0);
        store.confirm("k", v(2), 42);
        assert_eq!(store.scan()[0].2, 42);
        assert!(!store.remove_if("k", v(1)));
        assert!(store.remove_if("k", v(2)));
        assert!(store.is_empty());
    }

    /// On the app server's one-thread runtime, the writers ready at the
    /// same time append before the first of them flushes: one `fsync`
    /// serves them all (two before the flush first let them run).
    #[tokio::test(flavor = "current_thread")]
    async fn writers_ready_together_share_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        let writers: Vec<_> = (0..16u64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.apply(&format!("k{i}"), live(i + 1, "v"), 0).unwrap();
                    store.flushed().await.unwrap();
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        assert_eq!(store.fsyncs(), 1);
    }

    #[tokio::test]
    async fn concurrent_writers_share_fsyncs_and_each_waits_for_its_own_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        let writers: Vec<_> = (0..64u64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = format!("k{i}");
                    store.apply(&key, live(i + 1, "v"), 0).unwrap();
                    let mine = store.lock().journal.as_ref().unwrap().written();
                    store.flushed().await.unwrap();
                    // Flushed: on the disk up to this writer's record at least.
                    (mine, store.synced.upto.load(Ordering::Acquire))
                })
            })
            .collect();
        for writer in writers {
            let (mine, synced) = writer.await.unwrap();
            assert!(synced >= mine, "flushed returned at {synced} before {mine}");
        }
        let fsyncs = store.fsyncs();
        assert!(
            (1..16).contains(&fsyncs),
            "64 concurrent writes took {fsyncs} fsyncs; group commit should share them"
        );
        let written = store.lock().journal.as_ref().unwrap().written();
        assert_eq!(store.synced.upto.load(Ordering::Acquire), written);
        // Nothing more to flush: no further fsync.
        store.flushed().await.unwrap();
        assert_eq!(store.fsyncs(), fsyncs);
    }

    /// A failed `fsync` may have dropped records that a later `fsync` of
    /// the same file would not report, so every write waiting from then on
    /// fails, without another `fsync`, until `persist` rewrites the journal.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_fsync_fails_the_writes_after_it_until_the_journal_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        store.apply("before", live(1, "on the disk"), 0).unwrap();
        store.flushed().await.unwrap();

        store.fail_next_sync.store(true, Ordering::Relaxed);
        let writers: Vec<_> = (0..8u64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.apply(&format!("k{i}"), live(i + 2, "v"), 0).unwrap();
                    store.flushed().await
                })
            })
            .collect();
        for writer in writers {
            let refused = writer.await.unwrap().unwrap_err();
            assert!(refused.0.contains("fsync"), "{refused}");
        }
        assert_eq!(
            store.fsyncs(),
            2,
            "the writers queued behind the failure flushed again"
        );

        store.apply("later", live(20, "v"), 0).unwrap();
        let refused = store.flushed().await.unwrap_err();
        assert!(refused.0.contains("rewritten within a second"), "{refused}");
        assert_eq!(store.fsyncs(), 2);

        let persisting = store.clone();
        tokio::task::spawn_blocking(move || persisting.persist())
            .await
            .unwrap()
            .unwrap();
        store.apply("after", live(21, "v"), 0).unwrap();
        store.flushed().await.unwrap();

        // The rewrite put the whole map on the disk, the refused writes too
        // (a refused write is indeterminate).
        let keys = store.len();
        drop(store);
        let reopened = LocalStore::open(dir.path()).unwrap();
        assert_eq!(reopened.len(), keys);
        for key in ["before", "k0", "k7", "later", "after"] {
            assert!(reopened.get(key).is_some(), "{key} did not come back");
        }
    }

    /// Emptying the journal rewrites it, as `persist` does after a failed
    /// `fsync`: the failure no longer stands (one fact, recorded one way).
    #[tokio::test(flavor = "current_thread")]
    async fn forgetting_everything_rewrites_the_journal_and_clears_a_failed_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        store.apply("k", live(1, "v"), 0).unwrap();
        store.fail_next_sync.store(true, Ordering::Relaxed);
        store.flushed().await.unwrap_err();

        store.forget_all().unwrap();
        store.apply("after", live(2, "v"), 0).unwrap();
        store.flushed().await.unwrap();
        drop(store);
        let reopened = LocalStore::open(dir.path()).unwrap();
        assert_eq!(reopened.len(), 1, "only the write after forgetting");
        assert!(reopened.get("after").is_some());
    }

    #[tokio::test]
    async fn flushed_is_immediate_without_a_data_directory() {
        let store = LocalStore::default();
        store.apply("k", live(1, "v"), 0).unwrap();
        store.flushed().await.unwrap();
        assert_eq!(store.fsyncs(), 0);
    }

    #[test]
    fn a_store_in_a_data_directory_comes_back_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LocalStore::open(dir.path()).unwrap();
            store.apply("a", live(1, "one"), 0).unwrap();
            store.apply("a", live(0, "older"), 0).unwrap();
            store
                .compare_and_write("b", Precondition::None, |_| live(2, "two"))
                .unwrap();
            store.apply("gone", live(3, "handed off"), 0).unwrap();
            assert!(store.remove_if("gone", v(3)));
            store
                .apply(
                    "deleted",
                    Entry {
                        version: v(4),
                        value: None,
                    },
                    0,
                )
                .unwrap();
            store.persist().unwrap();
        }
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.get("a"), Some(live(1, "one")));
        assert_eq!(store.get("b"), Some(live(2, "two")));
        assert_eq!(store.get("gone"), None);
        assert!(store.get("deleted").unwrap().is_tombstone());
        assert_eq!((store.len(), store.live_len()), (3, 2));
        assert_eq!(store.newest_version(), Some(v(4)));
        // Loaded unconfirmed: the sync task places everything again.
        assert!(
            store
                .scan()
                .iter()
                .all(|(_, _, confirmed, _)| *confirmed == 0)
        );
    }

    #[test]
    fn a_store_that_forgets_everything_leaves_an_empty_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LocalStore::open(dir.path()).unwrap();
            store.apply("a", live(1, "one"), 0).unwrap();
            store.forget_all().unwrap();
            assert!(store.is_empty());
        }
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(store.is_empty());
        assert_eq!(store.get("a"), None);
    }
}
