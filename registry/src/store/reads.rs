//! Typed reads: one value with the revision it was read at, every value
//! under a prefix, a service's newest events. Values go through
//! [`RegistryValue::decode`]; in a listing a value that does not decode is
//! skipped with a warning naming its key, as the watcher does, so one bad
//! entry never hides the others.

use tracing::warn;

use super::backend::{Kv, Range};
use super::{Store, StoreError};
use crate::keys::Key;
use crate::model::{Instance, NamedRoute, RegistryValue, Rollout, ScalingEvent, ScalingPolicy};

/// What [`Store::decode_all`] does about a value that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skipped {
    Warn,
    Quiet,
}

/// A value as stored, with the revision of its last write (for a
/// compare-and-set that must not overwrite someone else's change).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    pub value: T,
    pub mod_revision: i64,
}

impl Store {
    /// The value at `key`, if there is one; one that does not decode is an
    /// error naming the key.
    pub async fn get<T: RegistryValue>(&self, key: &str) -> Result<Option<Stored<T>>, StoreError> {
        let listing = self.read("read the registry", Range::key(key)).await?;
        let Some(kv) = listing.kvs.into_iter().next() else {
            return Ok(None);
        };
        let value = T::decode(&self.keys, key, &kv.value)?;
        Ok(Some(Stored {
            value,
            mod_revision: kv.mod_revision,
        }))
    }

    /// Every value under `prefix` that decodes, in key order, with its key.
    pub async fn list<T: RegistryValue>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.list_skipping(prefix, Skipped::Warn).await
    }

    /// [`Store::list`], saying what `skipped` says about values that do not
    /// decode.
    async fn list_skipping<T: RegistryValue>(
        &self,
        prefix: &str,
        skipped: Skipped,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let listing = self
            .read("list the registry", Range::prefix(prefix))
            .await?;
        Ok(self.decode_all(listing.kvs, skipped))
    }

    /// The values that decode, with their keys; the others skipped, with a
    /// warning naming the key unless `skipped` says not to.
    fn decode_all<T: RegistryValue>(&self, kvs: Vec<Kv>, skipped: Skipped) -> Vec<(String, T)> {
        kvs.into_iter()
            .filter_map(|kv| match T::decode(&self.keys, &kv.key, &kv.value) {
                Ok(value) => Some((kv.key, value)),
                Err(e) => {
                    if skipped == Skipped::Warn {
                        warn!(key = %kv.key, error = %e, "skipping malformed registry entry");
                    }
                    None
                }
            })
            .collect()
    }

    /// The scaling policy of `service`, with its revision.
    pub async fn policy(&self, service: &str) -> Result<Option<Stored<ScalingPolicy>>, StoreError> {
        self.get(&self.keys.policy(service)).await
    }

    /// Every scaling policy.
    pub async fn policies(&self) -> Result<Vec<ScalingPolicy>, StoreError> {
        Ok(self
            .list(&self.keys.policies())
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Every registered instance of `service` (undecodable ones skipped).
    pub async fn instances(&self, service: &str) -> Result<Vec<Instance>, StoreError> {
        self.instances_skipping(service, Skipped::Warn).await
    }

    /// Every registered instance of `service`, the undecodable ones skipped
    /// without a warning: for a check repeated every few hundred
    /// milliseconds (the key-value store's view confirmation), whose
    /// registry watch warns about them when it first sees them.
    pub async fn instances_unlogged(&self, service: &str) -> Result<Vec<Instance>, StoreError> {
        self.instances_skipping(service, Skipped::Quiet).await
    }

    async fn instances_skipping(
        &self,
        service: &str,
        skipped: Skipped,
    ) -> Result<Vec<Instance>, StoreError> {
        let prefix = self.keys.service_instances(service);
        Ok(self
            .list_skipping(&prefix, skipped)
            .await?
            .into_iter()
            .map(|(_, i)| i)
            .collect())
    }

    /// The rolling restart asked for `service`, if any.
    pub async fn rollout(&self, service: &str) -> Result<Option<Rollout>, StoreError> {
        Ok(self
            .get::<Rollout>(&self.keys.rollout(service))
            .await?
            .map(|r| r.value))
    }

    /// Every route, with its name.
    pub async fn routes(&self) -> Result<Vec<NamedRoute>, StoreError> {
        Ok(self
            .list(&self.keys.routes())
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// The newest `limit` events of `service`, newest first, with their
    /// keys (key order is event order).
    pub async fn events(
        &self,
        service: &str,
        limit: u32,
    ) -> Result<Vec<(String, ScalingEvent)>, StoreError> {
        let mut range = Range::prefix(self.keys.service_events(service));
        range.descending = true;
        range.limit = i64::from(limit.max(1));
        let listing = self.read("read the events", range).await?;
        Ok(self.decode_all(listing.kvs, Skipped::Warn))
    }

    /// The highest event sequence number stored for `service`.
    pub async fn last_event_seq(&self, service: &str) -> Result<Option<u64>, StoreError> {
        let mut range = Range::prefix(self.keys.service_events(service));
        range.descending = true;
        range.limit = 1;
        range.keys_only = true;
        let listing = self.read("read the events", range).await?;
        Ok(listing
            .kvs
            .first()
            .and_then(|kv| match self.keys.parse(&kv.key) {
                Ok(Key::Event { seq, .. }) => Some(seq),
                _ => None,
            }))
    }
}
