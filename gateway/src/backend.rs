//! One instance as the gateway sees it: its registry entry plus the live
//! state that balancing and ejection read (request stats with the in-flight count, peak-EWMA
//! latency, consecutive failures, ejection back-off, first-seen time for slow
//! start). The live state is keyed by instance id and survives routing-table
//! rebuilds, so a registry change never resets an instance's statistics.
//! Idle keep-alive connections belong to the instance's *address* (shared
//! by every entry that names it, see [`crate::table`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
/// Laid out for the request path: with thousands of instances a request
/// finds its instance's state cold, so what a request reads and writes is on
/// two adjacent cache lines, 128-byte aligned so that the CPU's adjacent-line
/// prefetch brings the second with the first. The first line is what a
/// least-request pick reads of a candidate (`rtt`, `ejected_until`, and
/// `stats`' in-flight counts, which lead `RequestStats`), with what every
/// request also reads or writes: `clean`, the age for slow start and the
/// time of the last answer. The second is
/// the stats' epoch (the first-seen time) and totals. Then the stats'
/// window, of which a request touches one slot. A test checks the offsets.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct BackendState {
    pub rtt: PeakEwma,
    /// What the request path reads of `health`, without its lock: with
    /// thousands of instances a request finds each one's state cold, and a
    /// lock taken on every pick and every response wrote its cache line
    /// too. `ejected_until` in nanoseconds after the first-seen time, plus
    /// one (0: not ejected; an ejection is always set after that time).
    ejected_until: AtomicU64,
    /// No failure counted and no ejection in the streak: a success has
    /// nothing to change ([`crate::health::record`]'s fast path).
    clean: AtomicBool,
    /// How old the instance already was when this gateway first saw it
    /// (from its registered `started_at`), in whole seconds, at most
    /// `u16::MAX` (18 hours: far past any slow-start window), so that a
    /// gateway restart does not put every instance back into slow start.
    age_when_seen_s: u16,
    /// When the instance last answered (a response that was not a
    /// failure, see [`crate::health::record`]), in milliseconds after the
    /// first-seen time, wrapping every 49 days; `u32::MAX` (a millisecond
    /// before it was first seen) until its first answer.
    /// What tells a busy instance from a frozen one
    /// ([`BackendState::answered_since`]).
    answered_ms: AtomicU32,
    /// Requests to this instance: in flight, totals, recent window. Its
    /// epoch is the time this gateway first saw the instance.
    pub stats: RequestStats,
    /// Passive and active health; changed only through
    /// [`BackendState::update_health`], which keeps the summary above.
    health: Mutex<Health>,
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
            clean: AtomicBool::new(true),
            age_when_seen_s: age.as_secs().try_into().unwrap_or(u16::MAX),
            answered_ms: AtomicU32::new(u32::MAX),
            stats: RequestStats::new(now),
            health: Mutex::new(Health::default()),
        }
    }

    /// How long after this gateway first saw the instance (the stats'
    /// epoch) `at` is; zero for earlier.
    fn since_seen(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.stats.epoch())
    }

    /// The instance answered at `now` (see [`BackendState::answered_since`]).
    pub fn answered(&self, now: Instant) {
        self.answered_ms
            .store(self.millis_since_seen(now), Ordering::Relaxed);
    }

    /// Whether the instance has answered at or after `at`, to the
    /// millisecond. The times wrap every 49 days; the comparison is right
    /// while the last answer and `at` are within 24 days of each other (an
    /// instance that answered nothing for longer has long been ejected).
    /// Two answers recorded at once may leave the earlier one's time, a
    /// millisecond or so off.
    pub fn answered_since(&self, at: Instant) -> bool {
        let answered = self.answered_ms.load(Ordering::Relaxed);
        answered.wrapping_sub(self.millis_since_seen(at)) as i32 >= 0
    }

    /// [`BackendState::since_seen`] in milliseconds, wrapping.
    fn millis_since_seen(&self, at: Instant) -> u32 {
        self.since_seen(at).as_millis() as u32
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
        let until = health
            .ejected_until
            .map_or(0, |until| self.since_seen(until).as_nanos() as u64 + 1);
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
            until => until - 1 > self.since_seen(now).as_nanos() as u64,
        }
    }

    /// Slow-start share in (0, 1]: ramps linearly from 10% to 100% over `window`
    /// of the instance's age.
    pub fn warmth(&self, now: Instant, window: Duration) -> f64 {
        if window.is_zero() {
            return 1.0;
        }
        let age = f64::from(self.age_when_seen_s) + self.since_seen(now).as_secs_f64();
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
/// above 256 bytes are multiples of 64); the id for the response header
/// follows, in the same allocation. A test checks the offsets.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Backend {
    pub state: std::sync::Arc<BackendState>,
    /// Idle keep-alive connections to `authority`; the table shares one pool
    /// among the entries with the same address.
    pub conns: std::sync::Arc<ConnPool>,
    /// `instance.weight`, next to `state` for the least-request pick.
    pub weight: u32,
    /// `instance.id`, for the `x-shoal-instance` header.
    id_header: IdHeader,
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
        let id_header = IdHeader::new(&instance.id);
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

    /// `instance.id` as the `x-shoal-instance` header value.
    pub fn id_header(&self) -> HeaderValue {
        self.id_header.value()
    }
}

/// An instance's id, kept for the `x-shoal-instance` header that every
/// response it gives carries.
///
/// An id that fits (a uuid does) is kept inline and copied into a new
/// header value per request. A shared header value would be cheaper to
/// clone, were it not for the reference count and the bytes it points to:
/// with thousands of instances both are cold, on two more pages, while
/// the copy reads the entry the request has just read and writes memory
/// the thread's allocator has just freed. Longer ids (up to 128 bytes
/// are allowed) share one.
#[derive(Debug, Clone)]
enum IdHeader {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Shared(HeaderValue),
}

/// The longest id kept inline: 46 bytes, so that an [`IdHeader`] is 48.
const INLINE_ID: usize = 46;

impl IdHeader {
    /// An id that is not a header value (registry validation rules that
    /// out) is reported as `-`.
    fn new(id: &str) -> IdHeader {
        let Ok(value) = HeaderValue::from_str(id) else {
            return IdHeader::Shared(HeaderValue::from_static(NO_INSTANCE));
        };
        if id.len() > INLINE_ID {
            return IdHeader::Shared(value);
        }
        let mut bytes = [0; INLINE_ID];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        IdHeader::Inline {
            len: id.len() as u8,
            bytes,
        }
    }

    fn value(&self) -> HeaderValue {
        match self {
            IdHeader::Inline { len, bytes } => HeaderValue::from_bytes(&bytes[..usize::from(*len)])
                .unwrap_or(HeaderValue::from_static(NO_INSTANCE)),
            IdHeader::Shared(value) => value.clone(),
        }
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

    #[test]
    fn answered_since_tells_whether_an_answer_came_at_or_after_a_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let state = BackendState::new(t0);
        assert!(!state.answered_since(t0), "no answer yet");
        state.answered(t0 + ms(5));
        assert!(state.answered_since(t0) && state.answered_since(t0 + ms(5)));
        assert!(!state.answered_since(t0 + ms(6)));
        // Across the wrap of the millisecond count, 49.7 days in.
        let wrap = Duration::from_millis(1 << 32);
        state.answered(t0 + wrap + ms(3));
        assert!(state.answered_since(t0 + wrap - ms(10)));
        assert!(!state.answered_since(t0 + wrap + ms(4)));
    }

    /// What a least-request pick reads of a candidate is on one cache line
    /// of its state, and one of its entry; what every request reads and
    /// writes of its instance's state, bar one window slot, is on that line
    /// and the next (see the two types' docs).
    #[test]
    fn what_a_request_reads_is_on_the_first_two_cache_lines() {
        use std::mem::{align_of, offset_of, size_of};
        const LINE: usize = 64;
        assert_eq!(align_of::<BackendState>(), 2 * LINE);
        assert_eq!(offset_of!(BackendState, rtt), 0);
        assert!(offset_of!(BackendState, ejected_until) + size_of::<AtomicU64>() <= LINE);
        assert!(offset_of!(BackendState, clean) < LINE);
        assert!(offset_of!(BackendState, age_when_seen_s) + size_of::<u16>() <= LINE);
        assert!(offset_of!(BackendState, answered_ms) + size_of::<AtomicU32>() <= LINE);
        // `RequestStats` leads with its two in-flight counts, then its epoch
        // and totals fill 64 bytes (a test in `stats` checks it).
        assert_eq!(offset_of!(BackendState, stats) + 2 * size_of::<u64>(), LINE);
        // An `Arc`'s two counts precede the entry in its allocation.
        let counts = 2 * size_of::<usize>();
        assert!(counts + offset_of!(Backend, weight) + size_of::<u32>() <= LINE);
        assert!(counts + offset_of!(Backend, conns) + size_of::<usize>() <= LINE);
        assert_eq!(size_of::<IdHeader>(), 48);
        assert!(counts + offset_of!(Backend, id_header) + size_of::<IdHeader>() <= 2 * LINE);
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
            (b.authority.as_str(), b.id_header().to_str().unwrap()),
            ("127.0.0.1:8081", "i-1")
        );
        for id in [
            uuid::Uuid::new_v4().to_string(),
            "x".repeat(INLINE_ID),
            "y".repeat(128),
        ] {
            i.id = id.clone();
            let b = Backend::new(i.clone(), state()).unwrap();
            assert_eq!(b.id_header(), id.as_str());
            let inline = matches!(b.id_header, IdHeader::Inline { .. });
            assert_eq!(inline, id.len() <= INLINE_ID, "{id}");
        }
        i.id = "bad\nid".into();
        assert_eq!(Backend::new(i.clone(), state()).unwrap().id_header(), "-");
        i.addr = "not an authority".into();
        assert!(Backend::new(i, state()).is_none());
    }
}
