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

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

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

/// What a write should require of the current entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// `If-Match: *`: a live value must exist.
    Exists,
    /// `If-Match: "<version>"`: the live value must have this version.
    Version(Version),
}

/// The local map; cheap operations under one mutex (no I/O while locked).
#[derive(Debug, Default)]
pub struct LocalStore {
    slots: Mutex<HashMap<String, Slot>>,
}

impl LocalStore {
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.lock().get(key).map(|s| s.entry.clone())
    }

    /// Keep `entry` if it is newer than the local one.
    pub fn apply(&self, key: &str, entry: Entry, confirmed: u64) -> Applied {
        let mut slots = self.lock();
        match slots.get_mut(key) {
            Some(slot) if slot.entry.version >= entry.version => {
                if slot.entry.version == entry.version && confirmed != 0 {
                    slot.confirmed = confirmed;
                }
                Applied::AlreadyNewer
            }
            Some(slot) => {
                *slot = Slot::new(entry, confirmed);
                Applied::Stored
            }
            None => {
                slots.insert(key.to_owned(), Slot::new(entry, confirmed));
                Applied::Stored
            }
        }
    }

    /// Check `precondition` against the local entry and, if it holds, store
    /// the value made by `make` from the current version, atomically.
    /// Returns the stored entry and whether a live value was replaced.
    pub fn compare_and_write(
        &self,
        key: &str,
        precondition: Precondition,
        make: impl FnOnce(Option<Version>) -> Entry,
    ) -> Result<(Entry, bool), Mismatch> {
        let mut slots = self.lock();
        let current = slots.get(key).map(|s| &s.entry);
        let live = current.filter(|e| !e.is_tombstone()).map(|e| e.version);
        let holds = match precondition {
            Precondition::None => true,
            Precondition::Exists => live.is_some(),
            Precondition::Version(v) => live == Some(v),
        };
        if !holds {
            return Err(Mismatch { current: live });
        }
        let entry = make(current.map(|e| e.version));
        slots.insert(key.to_owned(), Slot::new(entry.clone(), 0));
        Ok((entry, live.is_some()))
    }

    /// Record that `owners` (a fingerprint) all hold `version` of `key`.
    pub fn confirm(&self, key: &str, version: Version, owners: u64) {
        if let Some(slot) = self.lock().get_mut(key)
            && slot.entry.version == version
        {
            slot.confirmed = owners;
        }
    }

    /// Remove `key` if it still has `version` (a purged tombstone, or a copy
    /// handed off to its owners).
    pub fn remove_if(&self, key: &str, version: Version) -> bool {
        let mut slots = self.lock();
        if slots.get(key).is_some_and(|s| s.entry.version == version) {
            slots.remove(key);
            true
        } else {
            false
        }
    }

    /// Every entry with its confirmation fingerprint and age, for the sync task.
    pub fn scan(&self) -> Vec<(String, Entry, u64, Instant)> {
        self.lock()
            .iter()
            .map(|(k, s)| (k.clone(), s.entry.clone(), s.confirmed, s.since))
            .collect()
    }

    /// Live values (tombstones not counted).
    pub fn live_len(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| !s.entry.is_tombstone())
            .count()
    }

    /// Entries including tombstones.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // Every critical section is a few map operations that cannot leave the
    // map half-updated, so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
        assert_eq!(store.apply("k", live(2, "b"), 0), Applied::Stored);
        assert_eq!(store.apply("k", live(1, "a"), 0), Applied::AlreadyNewer);
        assert_eq!(store.apply("k", live(2, "b"), 0), Applied::AlreadyNewer);
        assert_eq!(store.get("k"), Some(live(2, "b")));
        let tombstone = Entry {
            version: v(3),
            value: None,
        };
        assert_eq!(store.apply("k", tombstone.clone(), 0), Applied::Stored);
        assert_eq!(store.apply("k", live(2, "b"), 0), Applied::AlreadyNewer);
        assert_eq!(store.get("k"), Some(tombstone));
        assert_eq!((store.len(), store.live_len()), (1, 0));
    }

    #[test]
    fn compare_and_write_checks_the_live_version() {
        let store = LocalStore::default();
        let make = |hlc| move |_: Option<Version>| live(hlc, "x");
        assert_eq!(
            store.compare_and_write("k", Precondition::Exists, make(1)),
            Err(Mismatch { current: None })
        );
        let (_, replaced) = store
            .compare_and_write("k", Precondition::None, make(1))
            .unwrap();
        assert!(!replaced);
        assert_eq!(
            store.compare_and_write("k", Precondition::Version(v(9)), make(2)),
            Err(Mismatch {
                current: Some(v(1))
            })
        );
        let (entry, replaced) = store
            .compare_and_write("k", Precondition::Version(v(1)), make(2))
            .unwrap();
        assert!(replaced);
        assert_eq!(entry.version, v(2));
        // A tombstone is not a live value.
        store.apply(
            "k",
            Entry {
                version: v(3),
                value: None,
            },
            0,
        );
        assert_eq!(
            store.compare_and_write("k", Precondition::Exists, make(4)),
            Err(Mismatch { current: None })
        );
    }

    #[test]
    fn confirm_and_remove_only_touch_the_named_version() {
        let store = LocalStore::default();
        store.apply("k", live(2, "b"), 0);
        store.confirm("k", v(1), 42);
        assert_eq!(store.scan()[0].2, 0);
        store.confirm("k", v(2), 42);
        assert_eq!(store.scan()[0].2, 42);
        assert!(!store.remove_if("k", v(1)));
        assert!(store.remove_if("k", v(2)));
        assert!(store.is_empty());
    }
}
