//! `--data-dir`: the append-only file that lets an instance restarted with
//! the same directory come back with the key-value entries it held.
//!
//! Every change to the local store is appended as one record before the
//! store changes (and so before a write is acknowledged): a put of a value or
//! a tombstone, or the removal of a handed-off or purged copy. Replaying the
//! records in order rebuilds the map exactly. Each record is written with a
//! single `write` call, so it survives the process being killed; the file is
//! flushed to the disk (`fsync`) once a second by the sync task, so a crash of
//! the whole machine can lose the last second, which the other owners still
//! hold when R ≥ 2.
//!
//! Format: a header line, then records `len: u32 LE, crc32: u32 LE, payload`,
//! where the payload is a change in [`codec`]'s form. Replay stops at the first
//! record that is cut short or fails its checksum (a write interrupted by a
//! crash), says so, and truncates the file there.
//!
//! When the file has grown past twice what the live entries need (and past
//! [`COMPACT_AFTER`]), it is rewritten with one record per entry, to a
//! temporary file renamed over the old one. A `LOCK` file, held with an
//! exclusive lock while the instance runs, keeps a second instance out of
//! the directory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Write};
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
    /// Bytes in the file, header included.
    len: u64,
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
            // Every write goes to the end, wherever the replay left the cursor.
            .append(true)
            .open(&path)
            .map_err(io_error)?;
        let (entries, good_len) = replay(&mut file, &path)?;
        let actual_len = file.metadata().map_err(io_error)?.len();
        if good_len == 0 {
            file.set_len(0).map_err(io_error)?;
            file.write_all(HEADER).map_err(io_error)?;
        } else if good_len < actual_len {
            warn!(
                path = %path.display(),
                kept_bytes = good_len,
                dropped_bytes = actual_len - good_len,
                entries = entries.len(),
                "the key-value journal ends in a record cut short or damaged (a write interrupted by a crash?); kept everything before it"
            );
            file.set_len(good_len).map_err(io_error)?;
        }
        let len = good_len.max(HEADER.len() as u64);
        Ok((
            Journal {
                dir: dir.to_owned(),
                file,
                len,
                written: 0,
                _lock: lock,
            },
            entries,
        ))
    }

    /// Append one record with a single write (it reaches the OS before
    /// this returns).
    pub fn append(&mut self, record: Record<'_>) -> io::Result<()> {
        let bytes = encode(record);
        self.file.write_all(&bytes)?;
        self.len += bytes.len() as u64;
        self.written += bytes.len() as u64;
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

    /// Bytes in the file.
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
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        self.len = len;
        Ok(())
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

/// The entries the file holds, and the length of its valid part (0: no
/// header yet, an empty file).
fn replay(file: &mut File, path: &Path) -> Result<(HashMap<String, Entry>, u64), JournalError> {
    let io_error = |source| JournalError::Io {
        dir: path.parent().unwrap_or(path).to_owned(),
        source,
    };
    let mut reader = BufReader::new(&*file);
    let mut header = vec![0; HEADER.len()];
    let got = read_up_to(&mut reader, &mut header).map_err(io_error)?;
    if got == 0 {
        return Ok((HashMap::new(), 0));
    }
    if header[..got] != HEADER[..got] {
        return Err(JournalError::NotAJournal {
            path: path.to_owned(),
        });
    }
    if got < HEADER.len() {
        // Cut short while being created: start again.
        return Ok((HashMap::new(), 0));
    }
    let mut entries = HashMap::new();
    let mut good = HEADER.len() as u64;
    loop {
        let mut head = [0; 8];
        if read_up_to(&mut reader, &mut head).map_err(io_error)? < head.len() {
            break;
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            break;
        }
        let mut payload = vec![0; len];
        if read_up_to(&mut reader, &mut payload).map_err(io_error)? < len
            || crc32fast::hash(&payload) != crc
        {
            break;
        }
        let Some(change) = codec::decode(&payload) else {
            break;
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
    }
    Ok((entries, good))
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
            assert_eq!(journal.len(), file_len(dir.path()));
        }
        let (_, entries) = Journal::open(dir.path()).unwrap();
        let expected = HashMap::from([
            ("a".to_owned(), value(3, "uno")),
            ("c".to_owned(), tombstone(4)),
            ("d".to_owned(), value(5, "")),
        ]);
        assert_eq!(entries, expected);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_writing_goes_on_after_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let good_len = {
            let (mut journal, _) = Journal::open(dir.path()).unwrap();
            journal.append(Record::Put("a", &value(1, "kept"))).unwrap();
            let good = journal.len();
            journal
                .append(Record::Put("b", &value(2, "cut short")))
                .unwrap();
            good
        };
        // A crash in the middle of the second record's write.
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        file.set_len(good_len + 11).unwrap();
        drop(file);
        {
            let (mut journal, entries) = Journal::open(dir.path()).unwrap();
            assert_eq!(entries.keys().collect::<Vec<_>>(), ["a"]);
            assert_eq!(file_len(dir.path()), good_len, "the torn tail is cut off");
            journal
                .append(Record::Put("c", &value(3, "after")))
                .unwrap();
        }
        let (_, entries) = Journal::open(dir.path()).unwrap();
        let mut keys: Vec<_> = entries.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["a", "c"]);
    }

    #[test]
    fn a_damaged_record_stops_the_replay_there() {
        let dir = tempfile::tempdir().unwrap();
        let first_len = {
            let (mut journal, _) = Journal::open(dir.path()).unwrap();
            journal.append(Record::Put("a", &value(1, "x"))).unwrap();
            let first = journal.len();
            journal.append(Record::Put("b", &value(2, "y"))).unwrap();
            first
        };
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // the second record's value: its checksum no longer matches
        std::fs::write(&path, bytes).unwrap();
        let (_, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(file_len(dir.path()), first_len);
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
