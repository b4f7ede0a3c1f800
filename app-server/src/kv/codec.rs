//! The binary form of one change to a key: a value, a tombstone or a
//! removal. The journal's records (`journal`) and the replication batches
//! between instances (`batch`) both carry it.
//!
//! Layout: `kind: u8` (0 value, 1 tombstone, 2 removal), the version
//! (`hlc: u64 LE`, `node: u64 LE`), `key_len: u16 LE`, the key, and for a
//! value `value_len: u32 LE` and the value. Nothing may follow.

use bytes::Bytes;

use super::key::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use super::store::Entry;
use super::version::Version;

const KIND_VALUE: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;
const KIND_REMOVAL: u8 = 2;

/// Longest encoding a valid change can have (a key, a value and the fixed fields).
pub const MAX_PAYLOAD: usize = 1 + 16 + 2 + MAX_KEY_BYTES + 4 + MAX_VALUE_BYTES;

/// One change to the local store.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// `key` now holds `entry` (a value or a tombstone).
    Put(&'a str, &'a Entry),
    /// `key`, which held `version`, was removed.
    Remove(&'a str, Version),
}

impl<'a> Record<'a> {
    fn parts(self) -> (u8, &'a str, Version, Option<&'a Bytes>) {
        match self {
            Record::Put(key, entry) => match &entry.value {
                Some(value) => (KIND_VALUE, key, entry.version, Some(value)),
                None => (KIND_TOMBSTONE, key, entry.version, None),
            },
            Record::Remove(key, version) => (KIND_REMOVAL, key, version, None),
        }
    }
}

/// Bytes [`encode`] appends for `record`.
pub fn payload_len(record: Record<'_>) -> usize {
    let (_, key, _, value) = record.parts();
    1 + 16 + 2 + key.len() + value.map_or(0, |v| 4 + v.len())
}

/// Append `record`'s encoding to `out`.
pub fn encode(record: Record<'_>, out: &mut Vec<u8>) {
    let (kind, key, version, value) = record.parts();
    out.reserve(payload_len(record));
    out.push(kind);
    out.extend_from_slice(&version.hlc.to_le_bytes());
    out.extend_from_slice(&version.node.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    if let Some(value) = value {
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
}

/// A change as (key, the entry it now holds, or `None` when removed);
/// `None` when `payload` is not exactly one valid change.
pub fn decode(payload: &[u8]) -> Option<(String, Option<Entry>)> {
    let (&kind, rest) = payload.split_first()?;
    let hlc = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let node = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
    let key_len = u16::from_le_bytes(rest.get(16..18)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(rest.get(18..18 + key_len)?)
        .ok()?
        .to_owned();
    let rest = &rest[18 + key_len..];
    let version = Version { hlc, node };
    match kind {
        KIND_VALUE => {
            let value_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let value = rest.get(4..4 + value_len)?;
            (rest.len() == 4 + value_len).then(|| {
                let value = Some(Bytes::copy_from_slice(value));
                (key, Some(Entry { version, value }))
            })
        }
        KIND_TOMBSTONE => rest.is_empty().then_some((
            key,
            Some(Entry {
                version,
                value: None,
            }),
        )),
        KIND_REMOVAL => rest.is_empty().then_some((key, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(hlc: u64) -> Version {
        Version { hlc, node: 7 }
    }

    #[test]
    fn every_kind_of_change_comes_back_as_it_went() {
        let value = Entry {
            version: v(1),
            value: Some(Bytes::from_static(b"hello")),
        };
        let tombstone = Entry {
            version: v(2),
            value: None,
        };
        for (record, expected) in [
            (Record::Put("a", &value), Some(value.clone())),
            (Record::Put("b", &tombstone), Some(tombstone.clone())),
            (Record::Remove("c", v(3)), None),
        ] {
            let mut out = Vec::new();
            encode(record, &mut out);
            assert_eq!(out.len(), payload_len(record));
            let (key, entry) = decode(&out).expect("decodes");
            assert_eq!(key, record.parts().1);
            assert_eq!(entry, expected);
        }
    }

    #[test]
    fn a_change_cut_short_or_with_bytes_after_it_is_refused() {
        let entry = Entry {
            version: v(1),
            value: Some(Bytes::from_static(b"hello")),
        };
        let mut out = Vec::new();
        encode(Record::Put("key", &entry), &mut out);
        for cut in 0..out.len() {
            assert!(decode(&out[..cut]).is_none(), "cut at {cut}");
        }
        out.push(0);
        assert!(decode(&out).is_none());
        let mut unknown = Vec::new();
        encode(Record::Remove("key", v(1)), &mut unknown);
        unknown[0] = 9;
        assert!(decode(&unknown).is_none());
    }
}
