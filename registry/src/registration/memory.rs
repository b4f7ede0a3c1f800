//! An in-memory stand-in for etcd's lease and put semantics, on tokio time, so
//! the keeper's timing rules are tested on paused time. The real-etcd tests in
//! the `tests` crate check the same behaviour against a real server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::backend::{BackendError, LeaseBackend};

#[derive(Default)]
struct State {
    up: bool,
    next_lease: i64,
    leases: HashMap<i64, (Duration, Instant)>,
    kv: HashMap<String, (String, i64)>,
    keep_alives: u64,
}

impl State {
    fn expire_due(&mut self) {
        let now = Instant::now();
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        self.kv.retain(|_, (_, lease)| *lease != id);
    }
}

/// Shared handle: the test keeps one, each backend holds another.
#[derive(Clone)]
pub struct MemoryEtcd(Arc<Mutex<State>>);

impl Default for MemoryEtcd {
    fn default() -> Self {
        MemoryEtcd(Arc::new(Mutex::new(State {
            up: true,
            next_lease: 1,
            ..State::default()
        })))
    }
}

impl MemoryEtcd {
    pub fn backend(&self) -> MemoryLeases {
        MemoryLeases(self.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.0.lock().unwrap();
        state.expire_due();
        f(&mut state)
    }

    pub fn set_up(&self, up: bool) {
        self.with(|s| s.up = up);
    }

    /// Lose every key and lease, as a fresh etcd on the same port would.
    pub fn wipe(&self) {
        self.with(|s| {
            s.leases.clear();
            s.kv.clear();
        });
    }

    pub fn expire(&self, lease: i64) {
        self.with(|s| s.drop_lease(lease));
    }

    /// Renew every lease's TTL, as etcd does when it restarts with its data.
    pub fn refresh_all(&self) {
        self.with(|s| {
            let now = Instant::now();
            for (ttl, until) in s.leases.values_mut() {
                *until = now + *ttl;
            }
        });
    }

    /// Delete one key, leaving its lease alone (`etcdctl del`).
    pub fn delete(&self, key: &str) {
        self.with(|s| s.kv.remove(key));
    }

    pub fn get(&self, key: &str) -> Option<(String, i64)> {
        self.with(|s| s.kv.get(key).cloned())
    }

    pub fn keep_alives(&self) -> u64 {
        self.with(|s| s.keep_alives)
    }

    pub fn live_leases(&self) -> usize {
        self.with(|s| s.leases.len())
    }
}

pub struct MemoryLeases(MemoryEtcd);

impl MemoryLeases {
    fn call<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        self.0.with(|s| {
            if !s.up {
                return Err(BackendError::Etcd("connection refused".into()));
            }
            f(s)
        })
    }
}

impl LeaseBackend for MemoryLeases {
    async fn grant(&mut self, ttl: Duration) -> Result<i64, BackendError> {
        self.call(|s| {
            let id = s.next_lease;
            s.next_lease += 1;
            s.leases.insert(id, (ttl, Instant::now() + ttl));
            Ok(id)
        })
    }

    async fn put(&mut self, key: &str, value: String, lease: i64) -> Result<(), BackendError> {
        self.call(|s| {
            if !s.leases.contains_key(&lease) {
                return Err(BackendError::LeaseNotFound(lease));
            }
            s.kv.insert(key.to_owned(), (value, lease));
            Ok(())
        })
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<i64, BackendError> {
        self.call(|s| {
            s.keep_alives += 1;
            match s.leases.get_mut(&lease) {
                Some((ttl, until)) => {
                    *until = Instant::now() + *ttl;
                    Ok(ttl.as_secs() as i64)
                }
                None => Ok(0),
            }
        })
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), BackendError> {
        self.call(|s| {
            s.drop_lease(lease);
            Ok(())
        })
    }

    async fn holds(&mut self, key: &str, lease: i64) -> Result<bool, BackendError> {
        self.call(|s| Ok(s.kv.get(key).is_some_and(|(_, l)| *l == lease)))
    }
}
