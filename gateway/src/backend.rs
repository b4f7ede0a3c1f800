//! One instance as the gateway sees it: its registry entry plus the live
//! state that balancing and ejection read (request stats with the in-flight count, peak-EWMA
//! latency, consecutive failures, ejection back-off, first-seen time for slow
//! start). The live state is keyed by instance id and survives routing-table
//! rebuilds, so a registry change never resets an instance's statistics.
//! Idle keep-alive connections belong to the instance's *address* (shared
//! by every entry that names it, see [`crate::table`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::uri::Authority;
use registry::Instance;

use crate::ewma::PeakEwma;
use crate::grace::Unconfirmed;
use crate::proxy::headers::NO_INSTANCE;
use crate::proxy::pool::ConnPool;
use crate::stats::RequestStats;

/// Live state of one instance, shared by every table that contains it.
///
/// Laid out for the pick: what a least-request pick reads of a candidate
/// (`rtt`, `ejected_until`, and `stats`' in-flight counts, which lead
/// `RequestStats`) shares the first cache line, since with thousands of
/// instances a random candidate's state is cold. A test checks it.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct BackendState {
    pub rtt: PeakEwma,
    /// What the request path reads of `health`, without its lock: with
    /// thousands of instances a request finds each one's state cold, and a
    /// lock taken on every pick and every response wrote its cache line
    /// too. `ejected_until` in nanoseconds after `first_seen`, plus one
    /// (0: not ejected; an ejection is always set after `first_seen`).
    ejected_until: AtomicU64,
    /// Requests to this instance: in flight, totals, recent window.
    pub stats: RequestStats,
    pub first_seen: Instant,
    /// How old the instance already was when this gateway first saw it
    /// (from its registered `started_at`), so a gateway restart does not put
    /// every instance back into slow start.
    pub age_when_seen: Duration,
    /// Passive and active health; changed only through
    /// [`BackendState::update_health`], which keeps the summary below.
    health: Mutex<Health>,
    /// No failure counted and no ejection in the streak: a success has
    /// nothing to change ([`crate::health::record`]'s fast path).
    clean: AtomicBool,
}

/// Passive health: consecutive failures and ejection back-off.
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub consecutive_failures: u32,
    /// Ejected until then (None: not ejected).
    pub ejected_until: Option<Instant>,
    /// How many times in a row it has been ejected (drives the back-off).
    pub ejections: u32,
}

impl BackendState {
    pub fn new(now: Instant) -> Self {
        Self::with_age(now, Duration::ZERO)
    }

    /// State for an instance that was already `age` old when first seen.
    pub fn with_age(now: Instant, age: Duration) -> Self {
        BackendState {
            rtt: PeakEwma::new(now),
            ejected_until: AtomicU64::new(0),
            stats: RequestStats::new(now),
            first_seen: now,
            age_when_seen: age,
            health: Mutex::new(Health::default()),
            clean: AtomicBool::new(true),
        }
    }

    /// A copy of the health, for reports.
    pub fn health(&self) -> Health {
        self.health.lock().expect("health lock poisoned").clone()
    }

    /// Change the health under its lock, and publish what the request path
    /// reads of it.
    pub fn update_health<T>(&self, change: impl FnOnce(&mut Health) -> T) -> T {
        let mut health = self.health.lock().expect("health lock poisoned");
        let result = change(&mut health);
        let until = health.ejected_until.map_or(0, |until| {
            until.saturating_duration_since(self.first_seen).as_nanos() as u64 + 1
        });
        self.ejected_until.store(until, Ordering::Release);
        self.clean.store(
            health.consecutive_failures == 0 && health.ejections == 0,
            Ordering::Release,
        );
        result
    }

    /// No failure counted and no ejection in the streak (a success changes nothing).
    pub fn is_clean(&self) -> bool {
        self.clean.load(Ordering::Acquire)
    }

    /// Attempts in flight on the instance, racing hedges included (what
    /// least-request balances on).
    pub fn in_flight(&self) -> u32 {
        self.stats.load().max(0) as u32
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => false,
            until => until - 1 > now.saturating_duration_since(self.first_seen).as_nanos() as u64,
        }
    }

    /// Slow-start share in (0, 1]: ramps linearly from 10% to 100% over `window`
    /// of the instance's age.
    pub fn warmth(&self, now: Instant, window: Duration) -> f64 {
        if window.is_zero() {
            return 1.0;
        }
        let age =
            (self.age_when_seen + now.saturating_duration_since(self.first_seen)).as_secs_f64();
        (0.1 + 0.9 * age / window.as_secs_f64()).min(1.0)
    }
}

/// An instance in one routing table: registry entry + shared live state, and
/// what the request path needs of it, prepared once per table rather than
/// per request.
///
/// Laid out for the pick: the fields every request reads (`state`, `conns`,
/// and `weight` for least-request) come first, beside the `Arc`'s counts
/// that the pick's clone writes, so that a cold backend costs one cache line
/// to consider (the allocation is 64-byte aligned: jemalloc's size classes
/// above 256 bytes are multiples of 64). A test checks the offsets.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Backend {
    pub state: std::sync::Arc<BackendState>,
    /// Idle keep-alive connections to `authority`; the table shares one pool
    /// among the entries with the same address.
    pub conns: std::sync::Arc<ConnPool>,
    /// `instance.weight`, next to `state` for the least-request pick.
    pub weight: u32,
    /// `instance.id` as the `x-shoal-instance` header value.
    pub id_header: HeaderValue,
    /// `instance.addr` as a URI authority.
    pub authority: Authority,
    /// Set when the instance has left the registry while ready and is kept
    /// routable for a grace period ([`grace`](crate::grace)).
    pub unconfirmed: Option<std::sync::Arc<Unconfirmed>>,
    pub instance: Instance,
}

impl Backend {
    /// `None` when the address is not a URI authority (registry validation
    /// makes that unlikely). An id that is not a header value (likewise) is
    /// reported as `-`.
    pub fn new(instance: Instance, state: std::sync::Arc<BackendState>) -> Option<Backend> {
        let authority = instance.addr.parse().ok()?;
        let id_header =
            HeaderValue::from_str(&instance.id).unwrap_or(HeaderValue::from_static(NO_INSTANCE));
        Some(Backend {
            state,
            conns: Default::default(),
            weight: instance.weight,
            id_header,
            authority,
            unconfirmed: None,
            instance,
        })
    }

    pub fn id(&self) -> &str {
        &self.instance.id
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// What the request path reads without the lock follows every change.
    #[test]
    fn the_lock_free_summary_follows_the_health() {
        let t0 = Instant::now();
        let state = BackendState::new(t0);
        assert!(state.is_clean() && !state.is_ejected(t0));

        state.update_health(|h| h.consecutive_failures = 1);
        assert!(!state.is_clean() && !state.is_ejected(t0));

        let until = t0 + Duration::from_secs(5);
        state.update_health(|h| {
            h.consecutive_failures = 0;
            h.ejections = 1;
            h.ejected_until = Some(until);
        });
        assert!(!state.is_clean());
        assert!(state.is_ejected(t0) && state.is_ejected(until - Duration::from_nanos(1)));
        assert!(!state.is_ejected(until) && !state.is_ejected(until + Duration::from_secs(1)));
        assert_eq!(state.health().ejected_until, Some(until));

        state.update_health(|h| *h = Health::default());
        assert!(state.is_clean() && !state.is_ejected(t0));
    }

    /// What a least-request pick reads of a candidate is on one cache line
    /// of its state, and one of its entry (see the two types' docs).
    #[test]
    fn what_a_pick_reads_is_on_the_first_cache_line() {
        use std::mem::{align_of, offset_of, size_of};
        const LINE: usize = 64;
        assert_eq!(align_of::<BackendState>(), LINE);
        assert_eq!(offset_of!(BackendState, rtt), 0);
        assert!(offset_of!(BackendState, ejected_until) + size_of::<AtomicU64>() <= LINE);
        // `RequestStats` leads with its two in-flight counts.
        assert!(offset_of!(BackendState, stats) + 2 * size_of::<u64>() <= LINE);
        // An `Arc`'s two counts precede the entry in its allocation.
        let counts = 2 * size_of::<usize>();
        assert!(counts + offset_of!(Backend, weight) + size_of::<u32>() <= LINE);
        assert!(counts + offset_of!(Backend, conns) + size_of::<usize>() <= LINE);
        // Allocations above 256 bytes are 64-byte aligned in jemalloc's size classes.
        assert!(
            counts + size_of::<Backend>() > 256,
            "{} bytes",
            size_of::<Backend>()
        );
    }

    #[test]
    fn request_parts_are_prepared_once() {
        let state = || Arc::new(BackendState::new(Instant::now()));
        let mut i = Instance::new("app", "127.0.0.1:8081");
        i.id = "i-1".into();
        let b = Backend::new(i.clone(), state()).unwrap();
        assert_eq!(
            (b.authority.as_str(), b.id_header.to_str().unwrap()),
            ("127.0.0.1:8081", "i-1")
        );
        i.id = "bad\nid".into();
        assert_eq!(Backend::new(i.clone(), state()).unwrap().id_header, "-");
        i.addr = "not an authority".into();
        assert!(Backend::new(i, state()).is_none());
    }
}
