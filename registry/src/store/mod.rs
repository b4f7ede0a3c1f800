//! The typed registry store: every read and write Shoal's programs make of
//! the registry, as bounded, validated operations, in one place.
//!
//! [`Store`] is a cheap handle (`Arc` inside) over a [`Backend`] — a real
//! etcd ([`etcd::EtcdBackend`]) or the in-memory one ([`memory::MemoryEtcd`]),
//! which the conformance suite (`conformance`, also run against a real etcd
//! by the `tests` crate) holds to the same behaviour. The CLI, the admin API
//! and the autoscaler call these operations; no other code builds registry
//! transactions. The lease keeper ([`crate::registration`]) and the leader
//! election ([`crate::election`]) keep their own etcd calls, which are about
//! leases rather than registry objects.
//!
//! Files: `backend.rs` the primitives (range, transaction, watch) ·
//! `etcd.rs`, `memory.rs` their two implementations · `operator.rs` what an
//! operator changes (routes, policies, pins, rollouts, retiring an instance)
//! · `services.rs` service specs and their history · `certs.rs` TLS
//! certificates · `apply.rs` a
//! manifest's diff, applied in one transaction · `controller.rs` the
//! autoscaler's writes, fenced on its leadership ·
//! `reads.rs` typed reads · `error.rs` [`StoreError`].
//!
//! **Timeout and retry policy** (here only): every operation is bounded by
//! [`ETCD_CALL_TIMEOUT`] in all. Reads are retried while etcd is unavailable
//! (after 100 ms, doubling to 500 ms) within that bound, since repeating a read is
//! harmless; writes are made once, because a write that failed in flight
//! may or may not have been made, and its error says so.

mod apply;
pub mod backend;
mod certs;
mod controller;
mod error;
pub mod etcd;
pub mod memory;
mod operator;
mod reads;
mod services;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use apply::{Action, ApplyPlan, Change, Kind, MAX_TXN_OPS};
pub use backend::{Backend, BackendError};
pub use controller::{Fence, Write};
pub use error::{OUTCOME_UNKNOWN, StoreError};
pub use operator::{PinChange, Written};
pub use reads::Stored;
pub use services::{KEEP_SERVICE_HISTORY, ServiceChange};

use crate::config::ETCD_CALL_TIMEOUT;
use crate::keys::Keys;
use backend::{Listing, Range, Txn, TxnOutcome};

/// First pause before a read is retried; it doubles each time, up to
/// [`MAX_READ_RETRY`], so the last attempt comes close to the bound.
const FIRST_READ_RETRY: Duration = Duration::from_millis(100);
const MAX_READ_RETRY: Duration = Duration::from_millis(500);

/// The registry under one prefix. Clones share the backend.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    keys: Keys,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.keys).finish()
    }
}

impl Store {
    pub fn new(backend: impl Backend, keys: Keys) -> Self {
        Store {
            backend: Arc::new(backend),
            keys,
        }
    }

    /// The registry in a real etcd.
    pub fn etcd(client: etcd_client::Client, keys: Keys) -> Self {
        Store::new(etcd::EtcdBackend::new(client), keys)
    }

    /// The registry in an in-memory etcd (tests).
    pub fn memory(etcd: &memory::MemoryEtcd, keys: Keys) -> Self {
        Store::new(etcd.clone(), keys)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The same backend under another prefix.
    pub fn with_keys(&self, keys: Keys) -> Store {
        Store {
            backend: self.backend.clone(),
            keys,
        }
    }

    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// A read, retried while etcd is unavailable, within the call bound.
    async fn read(&self, what: &'static str, range: Range) -> Result<Listing, StoreError> {
        let deadline = Instant::now() + ETCD_CALL_TIMEOUT;
        let mut pause = FIRST_READ_RETRY;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.backend.range(range.clone()));
            let detail = match attempt.await {
                Ok(Ok(listing)) => return Ok(listing),
                Ok(Err(BackendError::Refused(detail))) => {
                    return Err(StoreError::Refused { what, detail });
                }
                Ok(Err(BackendError::Denied(detail))) => {
                    return Err(StoreError::Denied { what, detail });
                }
                Ok(Err(BackendError::Unavailable(detail))) => detail,
                Err(_) => no_answer(),
            };
            if Instant::now() + pause >= deadline {
                return Err(StoreError::Unavailable {
                    what,
                    detail,
                    write: false,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_READ_RETRY);
        }
    }

    /// A transaction, made once, within the call bound.
    async fn write(&self, what: &'static str, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let unavailable = |detail| StoreError::Unavailable {
            what,
            detail,
            write: true,
        };
        match tokio::time::timeout(ETCD_CALL_TIMEOUT, self.backend.txn(txn)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(BackendError::Refused(detail))) => Err(StoreError::Refused { what, detail }),
            Ok(Err(BackendError::Denied(detail))) => Err(StoreError::Denied { what, detail }),
            Ok(Err(BackendError::Unavailable(detail))) => Err(unavailable(detail)),
            Err(_) => Err(unavailable(no_answer())),
        }
    }
}

fn no_answer() -> String {
    format!(
        "etcd did not answer within {} s",
        ETCD_CALL_TIMEOUT.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryEtcd;
    use super::*;

    #[tokio::test]
    async fn the_memory_etcd_passes_the_conformance_suite() {
        let etcd = MemoryEtcd::default();
        let store = Store::memory(&etcd, Keys::default());
        conformance::run(&store, etcd.backend(), async |revision| {
            etcd.compact(revision)
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_retried_within_the_bound_and_writes_are_not() {
        let etcd = MemoryEtcd::default();
        let store = Store::memory(&etcd, Keys::default());
        etcd.set_up(false);
        let started = Instant::now();
        let read = store.policy("app").await;
        assert!(
            matches!(&read, Err(StoreError::Unavailable { write: false, .. })),
            "{read:?}"
        );
        let waited = started.elapsed();
        assert!(
            waited > ETCD_CALL_TIMEOUT / 2 && waited <= ETCD_CALL_TIMEOUT,
            "a read is retried until the bound: {waited:?}"
        );

        let started = Instant::now();
        let write = store.delete_route("api").await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO, "a write is made once");
        assert!(
            write.to_string().contains("may or may not have been made"),
            "{write}"
        );

        // etcd back while a read is retrying: the read succeeds.
        let reader = tokio::spawn({
            let store = store.clone();
            async move { store.policy("app").await }
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        etcd.set_up(true);
        assert!(matches!(reader.await.unwrap(), Ok(None)));
    }
}
