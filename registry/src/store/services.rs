//! Service specs (`services/{service}`) and their history
//! (`service-history/{service}/{seq}`): every put that changes a spec keeps
//! the spec it replaces, in the same transaction, so a bad edit can be
//! rolled back ([`Store::undo_service`]) even after etcd compacted its own
//! history. The newest [`KEEP_SERVICE_HISTORY`] are kept.

use super::backend::{Compare, Op, Range, Span, Txn};
use super::{Store, StoreError, Stored, Written};
use crate::keys::{Key, validate_segment};
use crate::spec::Service;

/// Earlier specs kept per service.
pub const KEEP_SERVICE_HISTORY: u64 = 10;

/// What a put or an undo did.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceChange {
    pub written: Written,
    /// The version it replaced (`None`: new service).
    pub previous: Option<String>,
    /// The version now stored.
    pub version: String,
}

impl ServiceChange {
    /// The stored spec was already this one: nothing was written.
    pub fn unchanged(&self) -> bool {
        self.previous.as_deref() == Some(self.version.as_str())
    }
}

fn json(spec: &Service) -> Vec<u8> {
    serde_json::to_vec(spec).expect("a Service always serializes")
}

impl Store {
    /// The spec of `service`, with its revision.
    pub async fn service(&self, service: &str) -> Result<Option<Stored<Service>>, StoreError> {
        self.get(&self.keys.service(service)).await
    }

    /// Every spec.
    pub async fn services(&self) -> Result<Vec<Service>, StoreError> {
        Ok(self
            .list(&self.keys.services())
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// The earlier specs of `service`, newest first, with their sequence numbers.
    pub async fn service_history(&self, service: &str) -> Result<Vec<(u64, Service)>, StoreError> {
        let mut entries: Vec<(u64, Service)> = self
            .list::<Service>(&self.keys.service_history(service))
            .await?
            .into_iter()
            .filter_map(|(key, spec)| match self.keys.parse(&key) {
                Ok(Key::ServiceHistory { seq, .. }) => Some((seq, spec)),
                _ => None,
            })
            .collect();
        entries.reverse();
        Ok(entries)
    }

    /// The operations that keep `replaced` as the newest history entry of
    /// its service (after `last`), trimming the oldest beyond the bound.
    pub(super) fn history_ops(&self, replaced: &Service, last: Option<u64>) -> Vec<Op> {
        let seq = last.map_or(1, |l| l + 1);
        let mut ops = vec![Op::put(
            self.keys.service_history_entry(&replaced.name, seq),
            json(replaced),
        )];
        if seq > KEEP_SERVICE_HISTORY {
            ops.push(Op::Delete(Span::Range {
                from: self.keys.service_history_entry(&replaced.name, 0),
                to: self
                    .keys
                    .service_history_entry(&replaced.name, seq - KEEP_SERVICE_HISTORY + 1),
            }));
        }
        ops
    }

    /// The highest history sequence number of `service`.
    pub(super) async fn last_history_seq(&self, service: &str) -> Result<Option<u64>, StoreError> {
        let mut range = Range::prefix(self.keys.service_history(service));
        range.descending = true;
        range.limit = 1;
        range.keys_only = true;
        let listing = self.read("read the spec history", range).await?;
        Ok(listing
            .kvs
            .first()
            .and_then(|kv| match self.keys.parse(&kv.key) {
                Ok(Key::ServiceHistory { seq, .. }) => Some(seq),
                _ => None,
            }))
    }

    /// Create or replace the spec of `spec.name`, keeping the one it
    /// replaces in the history. The same spec again writes nothing.
    pub async fn put_service(&self, spec: &Service) -> Result<ServiceChange, StoreError> {
        spec.validate()?;
        let current = self.service(&spec.name).await?;
        let version = spec.version();
        let previous = current.as_ref().map(|c| c.value.version());
        if previous.as_deref() == Some(version.as_str()) {
            return Ok(ServiceChange {
                written: Written::Replaced,
                previous,
                version,
            });
        }
        let key = self.keys.service(&spec.name);
        let mut then = vec![Op::put(key.as_str(), json(spec))];
        let when = match &current {
            Some(stored) => {
                let last = self.last_history_seq(&spec.name).await?;
                then.extend(self.history_ops(&stored.value, last));
                Compare::unchanged_since(key.as_str(), stored.mod_revision)
            }
            None => Compare::absent(key.as_str()),
        };
        let txn = Txn {
            when: vec![when],
            then,
            otherwise: vec![],
        };
        if !self.write("write the service spec", txn).await?.succeeded {
            return Err(StoreError::Conflict { key });
        }
        Ok(ServiceChange {
            written: if current.is_some() {
                Written::Replaced
            } else {
                Written::Created
            },
            previous,
            version,
        })
    }

    /// Put back the newest earlier spec that differs from the current one;
    /// the current one becomes the newest history entry, so a second undo
    /// goes back again.
    pub async fn undo_service(&self, service: &str) -> Result<ServiceChange, StoreError> {
        validate_segment("service", service)?;
        let current = self
            .service(service)
            .await?
            .ok_or_else(|| StoreError::NoService {
                service: service.to_owned(),
            })?;
        let version = current.value.version();
        let history = self.service_history(service).await?;
        let Some((seq, earlier)) = history.iter().find(|(_, s)| s.version() != version) else {
            return Err(StoreError::NothingToUndo {
                service: service.to_owned(),
            });
        };
        let key = self.keys.service(service);
        let mut then = vec![
            Op::put(key.as_str(), json(earlier)),
            Op::delete(self.keys.service_history_entry(service, *seq)),
        ];
        then.extend(self.history_ops(&current.value, history.first().map(|(s, _)| *s)));
        let txn = Txn {
            when: vec![Compare::unchanged_since(key.as_str(), current.mod_revision)],
            then,
            otherwise: vec![],
        };
        if !self
            .write("roll the service spec back", txn)
            .await?
            .succeeded
        {
            return Err(StoreError::Conflict { key });
        }
        Ok(ServiceChange {
            written: Written::Replaced,
            previous: Some(version),
            version: earlier.version(),
        })
    }

    /// Delete the spec of `service` and its history; whether there was one.
    pub async fn delete_service(&self, service: &str) -> Result<bool, StoreError> {
        validate_segment("service", service)?;
        let txn = Txn::ops(vec![
            Op::delete(self.keys.service(service)),
            Op::Delete(Span::Prefix(self.keys.service_history(service))),
        ]);
        let outcome = self.write("delete the service spec", txn).await?;
        Ok(matches!(
            outcome.results.first(),
            Some(super::backend::OpResult::Delete { deleted }) if *deleted > 0
        ))
    }
}
