//! Load-balancing policies: which backend of a service gets a request.
//!
//! A [`Balancer`] is built once per routing-table snapshot for one route (the
//! policy's own state, like the round-robin schedule or the hash ring, lives
//! in it) and is then only read on the request path. Every policy:
//! - picks among *eligible* backends: in the table (which holds only `ready`
//!   instances), not ejected, not already tried by this request (`tried`);
//!   when every backend is ejected it falls back to all of them ("panic
//!   mode", as Envoy does) rather than failing a request a backend might serve;
//! - honours slow start: a backend first seen less than `slow_start` ago gets
//!   a share that ramps from 10% to 100% (see `BackendState::warmth`);
//! - costs O(1) or O(log n) per request for n backends: eligibility is
//!   checked only for the candidates a policy considers ([`Eligible`]), and
//!   the explicit set is listed (O(n)) only when candidates keep failing,
//!   i.e. when most backends are ejected or tried.
//!
//! Files: [`round_robin`] (weighted, the source notes' policy),
//! [`least_request`] (P2C over peak-EWMA × (in-flight + 1)),
//! [`consistent_hash`] (a weighted hash ring, `registry::ring`), [`sticky`]
//! (cookie).

pub mod consistent_hash;
pub mod least_request;
pub mod round_robin;
pub mod sticky;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use registry::model::{BalancePolicy, HashKey};
use registry::ring::Ring;

use crate::backend::Backend;
use least_request::Draw;

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
    /// The route's rotation: where its window of candidates stands
    /// ([`least_request::Draw::Window`]).
    LeastRequest(Arc<AtomicUsize>),
    /// The ring is the service's, shared by its routes and kept across
    /// snapshots while the set of ready backends is unchanged.
    ConsistentHash(HashKey, Arc<Ring>),
    Sticky(sticky::Sticky),
}

/// What policies derive from a service's ready backends (the round-robin
/// schedule, the hash ring, the sticky index), each built on first use and
/// shared by the service's routes. The table keeps it across snapshots
/// while the ready set (ids and weights, in order) is unchanged, so a
/// registry change that does not touch a service rebuilds nothing of it.
#[derive(Debug, Default)]
pub struct Prepared {
    schedule: OnceLock<Arc<round_robin::Schedule>>,
    ring: OnceLock<Arc<Ring>>,
    pins: OnceLock<Arc<sticky::Pins>>,
}

impl Prepared {
    fn schedule(&self, backends: &[Arc<Backend>]) -> Arc<round_robin::Schedule> {
        self.schedule
            .get_or_init(|| Arc::new(round_robin::Schedule::of_backends(backends)))
            .clone()
    }

    /// What follows `previous` (built for `before`) for the ready set `now`:
    /// the hash ring, if `previous` had built one, is updated from it
    /// ([`Ring::updated`]: a merge, not a sort of every point) rather than
    /// built anew on first use; the schedule is left to be built.
    pub fn following(previous: &Prepared, before: &[Arc<Backend>], now: &[Arc<Backend>]) -> Self {
        let next = Prepared::default();
        if let Some(ring) = previous.ring.get() {
            let updated = consistent_hash::ring_following(ring, before, now);
            next.ring
                .set(Arc::new(updated))
                .expect("a new Prepared has no ring yet");
        }
        next
    }

    fn pins(&self, backends: &[Arc<Backend>]) -> Arc<sticky::Pins> {
        self.pins
            .get_or_init(|| Arc::new(sticky::Pins::of(backends)))
            .clone()
    }

    fn ring(&self, backends: &[Arc<Backend>]) -> Arc<Ring> {
        self.ring
            .get_or_init(|| Arc::new(consistent_hash::ring_of(backends)))
            .clone()
    }
}

impl Balancer {
    /// Whether the policy ties a request to one instance (consistent hashing
    /// by key, sticky sessions): such a request is never hedged to another
    /// instance while its own may still answer (see `proxy::hedge`).
    pub fn has_affinity(&self) -> bool {
        matches!(self, Balancer::ConsistentHash(..) | Balancer::Sticky(_))
    }

    /// `prepared` belongs to `backends`; `rotation` is the route's
    /// round-robin position, or where least-request's window stands, kept
    /// across snapshots (other policies ignore it).
    pub fn new(
        policy: BalancePolicy,
        hash_key: Option<&HashKey>,
        backends: &[Arc<Backend>],
        prepared: &Prepared,
        rotation: Arc<AtomicUsize>,
    ) -> Self {
        match policy {
            BalancePolicy::RoundRobin => Balancer::RoundRobin(round_robin::RoundRobin::new(
                prepared.schedule(backends),
                rotation,
            )),
            BalancePolicy::LeastRequest => Balancer::LeastRequest(rotation),
            BalancePolicy::ConsistentHash => match hash_key {
                Some(key) => Balancer::ConsistentHash(key.clone(), prepared.ring(backends)),
                // Route validation requires a key; without one, balance by load.
                None => Balancer::LeastRequest(rotation),
            },
            BalancePolicy::Sticky => Balancer::Sticky(sticky::Sticky::new(prepared.pins(backends))),
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
            Balancer::LeastRequest(rotation) => {
                least_request::pick(backends, &eligible, ctx, Draw::Window(rotation)).map(plain)
            }
            Balancer::ConsistentHash(key, ring) => {
                match consistent_hash::key_of(key, request) {
                    Some(input) => consistent_hash::pick(ring, &eligible, &input).map(plain),
                    // No key in this request: spread it by load.
                    None => {
                        least_request::pick(backends, &eligible, ctx, Draw::Anywhere).map(plain)
                    }
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

/// Which backends a request may go to, decided per candidate.
///
/// A backend is *healthy-eligible* when this request has not tried it and it
/// is not ejected ([`Eligible::accepts`]). When no untried backend is healthy
/// (every one ejected), every untried backend is eligible (panic mode).
/// Policies ask [`Eligible::accepts`] about the few candidates they consider
/// and fall back to [`Eligible::list`] (O(n)) only when those keep failing.
#[derive(Debug)]
pub struct Eligible<'a> {
    backends: &'a [Arc<Backend>],
    /// Distinct indices (an attempt never picks a tried backend).
    tried: &'a [usize],
    now: Instant,
}

impl<'a> Eligible<'a> {
    pub fn new(backends: &'a [Arc<Backend>], tried: &'a [usize], now: Instant) -> Self {
        Eligible {
            backends,
            tried,
            now,
        }
    }

    /// How many backends are there to choose from.
    pub fn backends(&self) -> usize {
        self.backends.len()
    }

    /// No backend is left untried.
    pub fn is_empty(&self) -> bool {
        self.tried.len() >= self.backends.len()
    }

    /// Not tried by this request.
    pub fn untried(&self, index: usize) -> bool {
        !self.tried.contains(&index)
    }

    /// Untried and not ejected: a candidate a policy may take at once.
    pub fn accepts(&self, index: usize) -> bool {
        self.untried(index) && !self.backends[index].state.is_ejected(self.now)
    }

    /// The eligible set, listed (O(n)): the healthy untried backends, or,
    /// when there are none, every untried one (panic mode).
    pub fn list(&self) -> Vec<usize> {
        let healthy: Vec<usize> = (0..self.backends.len())
            .filter(|&i| self.accepts(i))
            .collect();
        if healthy.is_empty() {
            (0..self.backends.len())
                .filter(|&i| self.untried(i))
                .collect()
        } else {
            healthy
        }
    }

    /// Whether panic mode applies: no untried backend is healthy (O(n); for
    /// fallbacks only).
    pub fn panicking(&self) -> bool {
        !(0..self.backends.len()).any(|i| self.accepts(i))
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
        b[0].state
            .update_health(|h| h.ejected_until = Some(now + Duration::from_secs(5)));
        assert_eq!(Eligible::new(&b, &[], now).list(), &[1, 2]);
        assert!(!Eligible::new(&b, &[], now).accepts(0));
        assert_eq!(Eligible::new(&b, &[1], now).list(), &[2]);
        // Everything else tried or ejected: the ejected one is better than nothing.
        let cornered = Eligible::new(&b, &[1, 2], now);
        assert_eq!(cornered.list(), &[0]);
        assert!(cornered.panicking() && !cornered.accepts(0));
        assert!(Eligible::new(&b, &[0, 1, 2], now).is_empty());
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}
