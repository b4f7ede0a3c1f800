//! The key-value store behind `/kv/{key}`: key rules and a local in-memory map.
//!
//! Handlers only see [`KvStore`] and its async methods, so that replacing the
//! local map with a store distributed over the service's instances changes
//! this file and nothing in the routes.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;

/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value accepted (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Why a key is refused; the HTTP edge adds the rule itself.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("it is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("it is {} bytes long", key.len()));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '~' | '-')))
    {
        return Err(format!("it contains {c:?}"));
    }
    Ok(())
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
}

/// The instance's key-value store. Keys are checked by the caller with
/// [`check_key`]; values are bounded by the request body limit.
#[derive(Debug, Default)]
pub struct KvStore {
    entries: RwLock<HashMap<String, Bytes>>,
}

impl KvStore {
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        self.read().get(key).cloned()
    }

    pub async fn put(&self, key: &str, value: Bytes) -> PutOutcome {
        match self.write().insert(key.to_owned(), value) {
            Some(_) => PutOutcome::Replaced,
            None => PutOutcome::Created,
        }
    }

    /// True if the key was there.
    pub async fn delete(&self, key: &str) -> bool {
        self.write().remove(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while holding the lock cannot leave the map half-updated (every
    // critical section is one HashMap call), so a poisoned lock is still usable.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Bytes>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Bytes>> {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        for good in ["a", "user:42", "a.b_c~d-e", &"k".repeat(MAX_KEY_BYTES)] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        assert_eq!(check_key(""), Err("it is empty".into()));
        assert_eq!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err("it is 257 bytes long".into())
        );
        assert_eq!(check_key("a/b"), Err("it contains '/'".into()));
        assert_eq!(check_key("é"), Err("it contains 'é'".into()));
    }

    #[tokio::test]
    async fn put_get_replace_delete() {
        let store = KvStore::default();
        assert_eq!(
            store.put("k", Bytes::from_static(b"1")).await,
            PutOutcome::Created
        );
        assert_eq!(
            store.put("k", Bytes::from_static(b"2")).await,
            PutOutcome::Replaced
        );
        assert_eq!(store.get("k").await.as_deref(), Some(&b"2"[..]));
        assert_eq!(store.len(), 1);
        assert!(store.delete("k").await);
        assert!(!store.delete("k").await);
        assert_eq!(store.get("k").await, None);
        assert!(store.is_empty());
    }
}
