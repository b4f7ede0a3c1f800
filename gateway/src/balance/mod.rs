//! Load-balancing policies: which backend of a service gets a request.
//!
//! A [`Balancer`] is built once per routing-table snapshot for one route (the
//! policy's own state, like the round-robin schedule, lives in it) and is then
//! only read on the request path. Every policy:
//! - picks among *eligible* backends: in the table (which holds only `ready`
//!   instances), not ejected, not already tried by this request (`tried`);
//!   when every backend is ejected it falls back to all of them ("panic
//!   mode", as Envoy does) rather than failing a request a backend might serve;
//! - honours slow start: a backend first seen less than `slow_start` ago gets
//!   a share that ramps from 10% to 100% (see `BackendState::warmth`).
//!
//! Files: [`round_robin`] (weighted, the source notes' policy),
//! [`least_request`] (P2C over peak-EWMA × (in-flight + 1)),
//! [`consistent_hash`] (weighted rendezvous hashing), [`sticky`] (cookie).

pub mod consistent_hash;
pub mod least_request;
pub mod round_robin;
pub mod sticky;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use http::HeaderMap;
use registry::model::{BalancePolicy, HashKey};

use crate::backend::Backend;

/// What a policy may look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Path after the route's prefix (the prefix itself when nothing follows).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The chosen backend, and whether the client's sticky cookie must be (re)written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub set_cookie: bool,
}

/// One route's policy over one set of backends.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    LeastRequest,
    ConsistentHash(HashKey),
    Sticky(sticky::Sticky),
}

impl Balancer {
    /// `rotation` is the route's round-robin position, kept across snapshots
    /// (other policies ignore it).
    pub fn new(
        policy: BalancePolicy,
        hash_key: Option<&HashKey>,
        backends: &[Arc<Backend>],
        rotation: Arc<AtomicUsize>,
    ) -> Self {
        match policy {
            BalancePolicy::RoundRobin => {
                Balancer::RoundRobin(round_robin::RoundRobin::new(backends, rotation))
            }
            BalancePolicy::LeastRequest => Balancer::LeastRequest,
            BalancePolicy::ConsistentHash => match hash_key {
                Some(key) => Balancer::ConsistentHash(key.clone()),
                // Route validation requires a key; without one, balance by load.
                None => Balancer::LeastRequest,
            },
            BalancePolicy::Sticky => Balancer::Sticky(sticky::Sticky),
        }
    }

    /// Pick a backend for `request`, skipping `tried`; `None` when nothing is left.
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        request: &RequestView<'_>,
        tried: &[usize],
        ctx: &PickContext,
    ) -> Option<Pick> {
        let eligible = Eligible::new(backends, tried, ctx.now);
        if eligible.is_empty() {
            return None;
        }
        let plain = |index| Pick {
            index,
            set_cookie: false,
        };
        match self {
            Balancer::RoundRobin(rr) => rr.pick(backends, &eligible, ctx).map(plain),
            Balancer::LeastRequest => least_request::pick(backends, &eligible, ctx).map(plain),
            Balancer::ConsistentHash(key) => {
                let hash_input = consistent_hash::key_of(key, request);
                match hash_input {
                    Some(input) => consistent_hash::pick(backends, &eligible, &input).map(plain),
                    // No key in this request: spread it by load.
                    None => least_request::pick(backends, &eligible, ctx).map(plain),
                }
            }
            Balancer::Sticky(sticky) => sticky.pick(backends, &eligible, request, ctx),
        }
    }
}

/// Per-request inputs shared by the policies.
#[derive(Debug, Clone, Copy)]
pub struct PickContext {
    pub now: Instant,
    pub slow_start: Duration,
}

/// Indices of the backends a request may go to.
#[derive(Debug)]
pub struct Eligible {
    set: Set,
}

/// Most requests are a first attempt with no backend ejected: then every
/// backend is eligible, and no list is allocated.
#[derive(Debug)]
enum Set {
    /// All of `0..n`.
    All(usize),
    Listed(Vec<usize>),
}

impl Eligible {
    fn new(backends: &[Arc<Backend>], tried: &[usize], now: Instant) -> Self {
        if tried.is_empty() && !backends.iter().any(|b| b.state.is_ejected(now)) {
            return Eligible {
                set: Set::All(backends.len()),
            };
        }
        let untried = (0..backends.len()).filter(|i| !tried.contains(i));
        let healthy: Vec<usize> = untried
            .clone()
            .filter(|&i| !backends[i].state.is_ejected(now))
            .collect();
        let indices = if healthy.is_empty() {
            untried.collect()
        } else {
            healthy
        };
        Eligible {
            set: Set::Listed(indices),
        }
    }

    pub fn len(&self) -> usize {
        match &self.set {
            Set::All(n) => *n,
            Set::Listed(indices) => indices.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `nth` eligible index (`nth` < [`Eligible::len`]).
    pub fn nth(&self, nth: usize) -> usize {
        match &self.set {
            Set::All(_) => nth,
            Set::Listed(indices) => indices[nth],
        }
    }

    pub fn first(&self) -> Option<usize> {
        (!self.is_empty()).then(|| self.nth(0))
    }

    pub fn contains(&self, index: usize) -> bool {
        match &self.set {
            Set::All(n) => index < *n,
            Set::Listed(indices) => indices.contains(&index),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).map(|nth| self.nth(nth))
    }

    /// The eligible indices, in order (for tests and logs).
    pub fn indices(&self) -> Vec<usize> {
        self.iter().collect()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Backends for policy unit tests.
    use std::sync::Arc;
    use std::time::Instant;

    use registry::{Instance, InstanceState};

    use crate::backend::{Backend, BackendState};

    pub fn backend(id: &str, weight: u32, first_seen: Instant) -> Arc<Backend> {
        let mut instance = Instance::new("app", format!("127.0.0.1:{}", 1000 + id.len()));
        instance.id = id.to_owned();
        instance.weight = weight;
        instance.state = InstanceState::Ready;
        Arc::new(
            Backend::new(instance, Arc::new(BackendState::new(first_seen)))
                .expect("valid test backend"),
        )
    }

    /// `n` warm backends with weight 1, named b0, b1, ...
    pub fn backends(n: usize) -> Vec<Arc<Backend>> {
        let long_ago = Instant::now() - std::time::Duration::from_secs(3600);
        (0..n)
            .map(|i| backend(&format!("b{i}"), 1, long_ago))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::backends;
    use super::*;

    #[test]
    fn ejected_backends_are_skipped_until_all_are_ejected() {
        let b = backends(3);
        let now = Instant::now();
        b[0].state.health.lock().unwrap().ejected_until = Some(now + Duration::from_secs(5));
        assert_eq!(Eligible::new(&b, &[], now).indices(), &[1, 2]);
        assert_eq!(Eligible::new(&b, &[1], now).indices(), &[2]);
        // Everything else tried or ejected: the ejected one is better than nothing.
        assert_eq!(Eligible::new(&b, &[1, 2], now).indices(), &[0]);
        assert!(Eligible::new(&b, &[0, 1, 2], now).is_empty());
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}
