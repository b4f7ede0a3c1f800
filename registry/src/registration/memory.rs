//! The keeper's lease operations on the in-memory etcd
//! ([`crate::store::memory::MemoryEtcd`]), on tokio time, so the keeper's
//! timing rules are tested on paused time. The conformance suite checks the
//! same operations against a real etcd.

use std::time::Duration;

use super::backend::{BackendError, LeaseBackend};
use crate::store::backend::{self, Op, Txn};
pub use crate::store::memory::MemoryEtcd;

impl MemoryEtcd {
    pub fn backend(&self) -> MemoryLeases {
        MemoryLeases(self.clone())
    }
}

pub struct MemoryLeases(MemoryEtcd);

fn lease_error(e: backend::BackendError, lease: i64) -> BackendError {
    match e {
        backend::BackendError::Refused(m) if m.contains("lease not found") => {
            BackendError::LeaseNotFound(lease)
        }
        other => BackendError::Etcd(other.to_string()),
    }
}

impl LeaseBackend for MemoryLeases {
    async fn grant(&mut self, ttl: Duration) -> Result<i64, BackendError> {
        self.0.grant(ttl).map_err(|e| lease_error(e, 0))
    }

    async fn put(&mut self, key: &str, value: String, lease: i64) -> Result<(), BackendError> {
        let put = Op::Put {
            key: key.to_owned(),
            value: value.into_bytes(),
            lease,
        };
        backend::Backend::txn(&self.0, Txn::ops(vec![put]))
            .await
            .map(|_| ())
            .map_err(|e| lease_error(e, lease))
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<i64, BackendError> {
        self.0.keep_alive(lease).map_err(|e| lease_error(e, lease))
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), BackendError> {
        self.0.revoke(lease).map_err(|e| lease_error(e, lease))
    }

    async fn holds(&mut self, key: &str, lease: i64) -> Result<bool, BackendError> {
        let found = backend::Backend::range(&self.0, backend::Range::key(key))
            .await
            .map_err(|e| lease_error(e, lease))?;
        Ok(found.kvs.first().is_some_and(|kv| kv.lease == lease))
    }
}
