//! `--data-dir`: the append-only file that lets an instance restarted with
//! the same directory come back with the key-value entries it held.
//!
//! Every change to the local store is appended as one record before the
//! store changes (and so before a write is acknowledged): a put of a value or
//! a tombstone, or the removal of a handed-off or purged copy. Replaying the
//! records in order rebuilds the map exactly. Each record is written with a
//! single `write` call, so it survives the process being killed; the file is
//! flushed to the disk (`fdatasync`) once a second by the sync task, so a
//! crash of the whole machine can lose the last second, which the other
//! owners still hold when R ≥ 2 (`--durability fsync` flushes before a
//! write is acknowledged instead, see `LocalStore::flushed`).
//!
//! Format: a header line, then records `len: u32 LE, crc32: u32 LE, payload`,
//! where the payload is a change in [`codec`]'s form (never empty), then
//! zeros. Replay stops at a zero length (the end of the records), and at a
//! record that is cut short or fails its checksum (a write interrupted by a
//! crash), which it reports; the file is then cut after the last good record.
//!
//! The file is allocated ahead of its records, [`PREALLOCATE`] at a time
//! (`posix_fallocate`), as etcd does its write-ahead log: records are
//! written into space the file already has, so a flush does not also have
//! to write the file's new size and block map, as it must after a plain
//! append (1.4-1.5x the flushes a second on this project's VM).
//!
//! When the file has grown past twice what the live entries need (and past
//! [`COMPACT_AFTER`]), it is rewritten with one record per entry, to a
//! temporary file renamed over the old one. A `LOCK` file, held with an
//! exclusive lock while the instance runs, keeps a second instance out of
//! the directory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

pub use super::codec::Record;
use super::codec::{self, MAX_PAYLOAD};
use super::store::Entry;

const HEADER: &[u8] = b"shoal key-value journal v1\n";
const FILE_NAME: &str = "kv.journal";
const LOCK_NAME: &str = "LOCK";
/// A journal smaller than this is never compacted.
pub const COMPACT_AFTER: u64 = 8 << 20;
/// How far past its records the file is allocated, each time it runs out.
pub const PREALLOCATE: u64 = 4 << 20;

/// Why a data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the data directory {dir} is in use by another running instance; give each instance its own --data-dir"
    )]
    InUse { dir: PathBuf },
    #[error(
        "{path} is not a Shoal key-value journal (or was written by a newer version); move it away or point --data-dir elsewhere"
    )]
    NotAJournal { path: PathBuf },
    #[error(
        "cannot use the data directory {dir}: {source}; check that it exists or can be created, and is writable"
    )]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The open journal of one data directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Where the records end (header included): the next one is written here.
    len: u64,
    /// The file's size, allocated ahead of `len` (zeros past it).
    allocated: u64,
    /// Bytes of records ever appended since the journal was opened (not
    /// reset by compaction): the position group commit waits for.
    written: u64,
    /// Held (locked) for as long as the journal is open.
    _lock: File,
}

impl Journal {
    /// Open (or create) the journal in `dir`, replay it and return the
    /// entries it holds.
    pub fn open(dir: &Path) -> Result<(Journal, HashMap<String, Entry>), JournalError> {
        let io_error = |source| JournalError::Io {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_NAME))
            .map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(JournalError::InUse {
                    dir: dir.to_owned(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_error(e)),
        }
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error)?;
        let (entries, good_len, end) = replay(&mut file, &path)?;
        let actual_len = file.metadata().map_err(io_error)?.len();
        if end == End::Damaged {
            warn!(
                path = %path.display(),
                kept_bytes = good_len,
                entries = entries.len(),
                "the key-value journal ends in a record cut short or damaged (a write interrupted by a crash?); kept everything before it"
            );
        }
        // Whatever follows the last good record goes, zeros or not: a
        // record that reached the disk after one that did not (the disk
        // may reorder unflushed writes) must not come back after the
        // records written from here on.
        if good_len < actual_len {
            file.set_len(good_len).map_err(io_error)?;
        }
        if good_len == 0 {
            file.write_all_at(HEADER, 0).map_err(io_error)?;
        }
        let len = good_len.max(HEADER.len() as u64);
        let mut journal = Journal {
            dir: dir.to_owned(),
            file,
            len,
            allocated: len,
            written: 0,
            _lock: lock,
        };
        journal.allocate(0).map_err(io_error)?;
        Ok((journal, entries))
    }

    /// Append one record with a single write (it reaches the OS before
    /// this returns).
    pub fn append(&mut self, record: Record<'_>) -> io::Result<()> {
        let bytes = encode(record);
        self.allocate(bytes.len() as u64)?;
        self.file.write_all_at(&bytes, self.len)?;
        self.len += bytes.len() as u64;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Make sure the file has room for `more` bytes after its records and
    /// then some, allocating [`PREALLOCATE`] beyond them when it has not.
    fn allocate(&mut self, more: u64) -> io::Result<()> {
        if self.len + more < self.allocated {
            return Ok(());
        }
        let target = self.len + more + PREALLOCATE;
        nix::fcntl::posix_fallocate(
            &self.file,
            self.allocated as i64,
            (target - self.allocated) as i64,
        )
        .map_err(io::Error::from)?;
        self.allocated = target;
        Ok(())
    }

    /// Bytes of records appended since the journal was opened; everything
    /// up to this position is on the disk once a flush that started after
    /// it was read has finished.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A handle to flush the file without holding the journal (fsync can
    /// take a while; the store's lock should not wait for it).
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Bytes of the file the header and records take (it is allocated further).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Only the header.
    pub fn is_empty(&self) -> bool {
        self.len <= HEADER.len() as u64
    }

    /// Whether the journal should be rewritten, given what its entries
    /// need (`live`, only asked for once the file is past [`COMPACT_AFTER`]).
    pub fn wants_compaction(&self, live: impl FnOnce() -> u64) -> bool {
        self.len > COMPACT_AFTER && self.len > 2 * live()
    }

    /// Rewrite the file with exactly `entries`, atomically (a crash leaves
    /// either the old file or the new one).
    pub fn compact<'a>(
        &mut self,
        entries: impl Iterator<Item = (&'a str, &'a Entry)>,
    ) -> io::Result<()> {
        let path = self.dir.join(FILE_NAME);
        let temporary = self.dir.join(format!("{FILE_NAME}.compacting"));
        let mut out = io::BufWriter::new(File::create(&temporary)?);
        out.write_all(HEADER)?;
        let mut len = HEADER.len() as u64;
        for (key, entry) in entries {
            let bytes = encode(Record::Put(key, entry));
            out.write_all(&bytes)?;
            len += bytes.len() as u64;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new().read(true).write(true).open(&path)?;
        self.len = len;
        self.allocated = len;
        self.allocate(0)
    }
}

/// Bytes one entry takes in a compacted journal.
pub fn record_len(key: &str, entry: &Entry) -> u64 {
    (8 + codec::payload_len(Record::Put(key, entry))) as u64
}

fn encode(record: Record<'_>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + codec::payload_len(record));
    bytes.extend_from_slice(&[0; 8]);
    codec::encode(record, &mut bytes);
    let payload_len = bytes.len() - 8;
    let crc = crc32fast::hash(&bytes[8..]);
    bytes[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// How a replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// At the end of the file, or at a zero length: the allocated space
    /// after the last record.
    Clean,
    /// At a record cut short, damaged, or not a change.
    Damaged,
}

/// The entries the file holds, the length of its valid part (0: no header
/// yet, an empty file), and how the records ended.
fn replay(
    file: &mut File,
    path: &Path,
) -> Result<(HashMap<String, Entry>, u64, End), JournalError> {
    let io_error = |source| JournalError::Io {
        dir: path.parent().unwrap_or(path).to_owned(),
        source,
    };
    let mut reader = BufReader::new(&*file);
    let mut header = vec![0; HEADER.len()];
    let got = read_up_to(&mut reader, &mut header).map_err(io_error)?;
    if got == 0 || header.iter().all(|&b| b == 0) {
        // Empty, or allocated before the header reached the disk.
        return Ok((HashMap::new(), 0, End::Clean));
    }
    if header[..got] != HEADER[..got] {
        return Err(JournalError::NotAJournal {
            path: path.to_owned(),
        });
    }
    if got < HEADER.len() {
        // Cut short while being created: start again.
        return Ok((HashMap::new(), 0, End::Clean));
    }
    let mut entries = HashMap::new();
    let mut good = HEADER.len() as u64;
    let end = loop {
        let mut head = [0; 8];
        let got = read_up_to(&mut reader, &mut head).map_err(io_error)?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if got == 0 || head == [0; 8] {
            break End::Clean;
        }
        if got < head.len() || len > MAX_PAYLOAD {
            break End::Damaged;
        }
        let mut payload = vec![0; len];
        if read_up_to(&mut reader, &mut payload).map_err(io_error)? < len
            || crc32fast::hash(&payload) != crc
        {
            break End::Damaged;
        }
        let Some(change) = codec::decode(&payload) else {
            break End::Damaged;
        };
        match change {
            (key, Some(entry)) => {
                entries.insert(key, entry);
            }
            (key, None) => {
                entries.remove(&key);
            }
        }
        good += (8 + len) as u64;
    };
    Ok((entries, good, end))
}

/// Fill `buf` as far as the reader goes; how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::kv::key::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
    use crate::kv::version::Version;

    fn v(hlc: u64) -> Version {
        Version { hlc, node: 7 }
    }

    fn value(hlc: u64, s: &str) -> Entry {
        Entry {
            version: v(hlc),
            value: Some(Bytes::copy_from_slice(s.as_bytes())),
        }
    }

    fn tombstone(hlc: u64) -> Entry {
        Entry {
            version: v(hlc),
            value: None,
        }
    }

    fn file_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(FILE_NAME)).unwrap().len()
    }

    /// Whether the file holds only zeros from `from` on.
    fn zeros_from(dir: &Path, from: u64) -> bool {
        let bytes = std::fs::read(dir.join(FILE_NAME)).unwrap();
        bytes[from as usize..].iter().all(|&b| b == 0)
    }

    /// A new journal in `dir` holding `a` then `b`, and where each ends.
    fn two_records(dir: &Path, a: Record<'_>, b: Record<'_>) -> (Journal, u64, u64) {
        let (mut journal, _) = Journal::open(dir).unwrap();
        journal.append(a).unwrap();
        let after_a = journal.len();
        journal.append(b).unwrap();
        let after_b = journal.len();
        (journal, after_a, after_b)
    }

    /// The keys a reopened journal in `dir` holds, sorted.
    fn keys_after_reopening(dir: &Path) -> Vec<String> {
        let (_, entries) = Journal::open(dir).unwrap();
        let mut keys: Vec<String> = entries.into_keys().collect();
        keys.sort();
        keys
    }

    /// Overwrite the file from `from` up to `to` with zeros, as if what was
    /// written there never reached the disk.
    fn lose_from(dir: &Path, from: u64, to: u64) {
        let file = OpenOptions::new()
            .write(true)
            .open(dir.join(FILE_NAME))
            .unwrap();
        file.write_all_at(&vec![0; (to - from) as usize], from)
            .unwrap();
    }

    #[test]
    fn a_reopened_journal_holds_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut journal, entries) = Journal::open(dir.path()).unwrap();
            assert!(entries.is_empty() && journal.is_empty());
            journal.append(Record::Put("a", &value(1, "one"))).unwrap();
            journal.append(Record::Put("b", &value(2, "two"))).unwrap();
            journal.append(Record::Put("a", &value(3, "uno"))).unwrap();
            journal.append(Record::Put("c", &tombstone(4))).unwrap();
            journal.append(Record::Put("d", &value(5, ""))).unwrap();
            journal.append(Record::Remove("b", v(2))).unwrap();
            assert!(file_len(dir.path()) > journal.len());
            assert!(zeros_from(dir.path(), journal.len()));
        }
        let (mut journal, entries) = Journal::open(dir.path()).unwrap();
        let mut expected = HashMap::from([
            ("a".to_owned(), value(3, "uno")),
            ("c".to_owned(), tombstone(4)),
            ("d".to_owned(), value(5, "")),
        ]);
        assert_eq!(entries, expected);
        // Writing goes on right after the records, not after the allocated space.
        journal.append(Record::Put("e", &value(6, "more"))).unwrap();
        drop(journal);
        let (_, entries) = Journal::open(dir.path()).unwrap();
        expected.insert("e".to_owned(), value(6, "more"));
        assert_eq!(entries, expected);
    }

    #[test]
    fn the_file_is_allocated_ahead_of_its_records_and_grows_by_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(file_len(dir.path()), journal.len() + PREALLOCATE);
        let big = Entry {
            version: v(1),
            value: Some(Bytes::from(vec![7; MAX_VALUE_BYTES])),
        };
        let keys: Vec<String> = (0..6).map(|i| format!("big{i}")).collect();
        for key in &keys {
            journal.append(Record::Put(key, &big)).unwrap();
            assert!(file_len(dir.path()) > journal.len());
        }
        assert!(journal.len() > PREALLOCATE, "past the first chunk");
        drop(journal);
        assert_eq!(keys_after_reopening(dir.path()), keys);
    }

    #[test]
    fn a_record_that_outlived_one_lost_before_it_does_not_come_back() {
        // The disk may write unflushed pages out of order: after a crash the
        // second of three records can be zeros while the third is there.
        // Replay stops at the second, and the third must not reappear
        // behind the records written after the restart.
        let dir = tempfile::tempdir().unwrap();
        let (lost_at, lost_to) = {
            let (mut journal, lost_at, lost_to) = two_records(
                dir.path(),
                Record::Put("a", &value(1, "kept")),
                Record::Put("b", &value(2, "yy")),
            );
            journal
                .append(Record::Put("c", &value(3, "stale")))
                .unwrap();
            (lost_at, lost_to)
        };
        lose_from(dir.path(), lost_at, lost_to);
        {
            let (mut journal, entries) = Journal::open(dir.path()).unwrap();
            assert_eq!(entries.keys().collect::<Vec<_>>(), ["a"]);
            assert!(
                zeros_from(dir.path(), lost_at),
                "the third record is erased"
            );
            // As long as the lost one: it ends where the third began.
            journal.append(Record::Put("d", &value(4, "zz"))).unwrap();
            assert_eq!(journal.len(), lost_to);
        }
        assert_eq!(keys_after_reopening(dir.path()), ["a", "d"]);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_writing_goes_on_after_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (_, good_len, end) = two_records(
            dir.path(),
            Record::Put("a", &value(1, "kept")),
            Record::Put("b", &value(2, "cut short")),
        );
        // A crash in the middle of the second record's write: its head and
        // a few bytes reached the disk.
        lose_from(dir.path(), good_len + 11, end);
        {
            let (mut journal, entries) = Journal::open(dir.path()).unwrap();
            assert_eq!(entries.keys().collect::<Vec<_>>(), ["a"]);
            assert_eq!(journal.len(), good_len);
            assert!(zeros_from(dir.path(), good_len), "the torn tail is cut off");
            journal
                .append(Record::Put("c", &value(3, "after")))
                .unwrap();
        }
        assert_eq!(keys_after_reopening(dir.path()), ["a", "c"]);
    }

    #[test]
    fn a_damaged_record_stops_the_replay_there() {
        let dir = tempfile::tempdir().unwrap();
        let (_, first_len, end) = two_records(
            dir.path(),
            Record::Put("a", &value(1, "x")),
            Record::Put("b", &value(2, "y")),
        );
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = end as usize - 1;
        bytes[last] ^= 0xff; // the second record's value: its checksum no longer matches
        std::fs::write(&path, bytes).unwrap();
        let (journal, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(journal.len(), first_len);
        assert!(zeros_from(dir.path(), first_len));
    }

    #[test]
    fn compaction_keeps_the_entries_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        let mut live = HashMap::new();
        for round in 0..50u64 {
            for key in ["a", "b", "c"] {
                let entry = value(round * 3 + 1, &format!("{key}{round}"));
                journal.append(Record::Put(key, &entry)).unwrap();
                live.insert(key.to_owned(), entry);
            }
        }
        let before = journal.len();
        journal
            .compact(live.iter().map(|(k, e)| (k.as_str(), e)))
            .unwrap();
        let needed: u64 = live.iter().map(|(k, e)| record_len(k, e)).sum();
        assert_eq!(journal.len(), HEADER.len() as u64 + needed);
        assert!(
            journal.len() * 10 < before,
            "{} → {}",
            before,
            journal.len()
        );
        journal.append(Record::Remove("a", v(148))).unwrap();
        drop(journal);
        let (_, entries) = Journal::open(dir.path()).unwrap();
        live.remove("a");
        assert_eq!(entries, live);
    }

    #[test]
    fn a_directory_takes_one_instance_and_one_kind_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Journal::open(dir.path()).unwrap();
        let second = Journal::open(dir.path()).unwrap_err();
        assert!(matches!(second, JournalError::InUse { .. }), "{second}");
        assert!(
            second.to_string().contains("its own --data-dir"),
            "{second}"
        );
        drop(first);
        Journal::open(dir.path()).expect("free again once the first is gone");

        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(FILE_NAME), "something else entirely\n").unwrap();
        let refused = Journal::open(other.path()).unwrap_err();
        assert!(
            matches!(refused, JournalError::NotAJournal { .. }),
            "{refused}"
        );
    }

    #[test]
    fn the_longest_key_and_value_fit_in_a_record() {
        let key = "k".repeat(MAX_KEY_BYTES);
        let entry = Entry {
            version: v(1),
            value: Some(Bytes::from(vec![7; MAX_VALUE_BYTES])),
        };
        let encoded = encode(Record::Put(&key, &entry));
        assert_eq!(encoded.len() - 8, MAX_PAYLOAD);
        assert_eq!(encoded.len() as u64, record_len(&key, &entry));
        let (decoded_key, decoded) = codec::decode(&encoded[8..]).unwrap();
        assert_eq!((decoded_key, decoded), (key, Some(entry)));
    }
}
