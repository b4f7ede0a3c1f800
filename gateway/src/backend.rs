//! One instance as the gateway sees it: its registry entry plus the live
//! state that balancing and ejection read (request stats with the in-flight count, peak-EWMA
//! latency, consecutive failures, ejection back-off, first-seen time for slow
//! start). The live state is keyed by instance id and survives routing-table
//! rebuilds, so a registry change never resets an instance's statistics.
//! Idle keep-alive connections belong to the instance's *address* (shared
//! by every entry that names it, see [`crate::table`]).

use std::sync::Mutex;
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
#[derive(Debug)]
pub struct BackendState {
    /// Requests to this instance: in flight, totals, recent window.
    pub stats: RequestStats,
    pub rtt: PeakEwma,
    pub first_seen: Instant,
    /// How old the instance already was when this gateway first saw it
    /// (from its registered `started_at`), so a gateway restart does not put
    /// every instance back into slow start.
    pub age_when_seen: Duration,
    pub health: Mutex<Health>,
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
            stats: RequestStats::new(now),
            rtt: PeakEwma::new(now),
            first_seen: now,
            age_when_seen: age,
            health: Mutex::new(Health::default()),
        }
    }

    /// Attempts in flight on the instance, racing hedges included (what
    /// least-request balances on).
    pub fn in_flight(&self) -> u32 {
        self.stats.load().max(0) as u32
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health
            .lock()
            .expect("health lock poisoned")
            .ejected_until
            .is_some_and(|until| until > now)
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
#[derive(Debug, Clone)]
pub struct Backend {
    pub instance: Instance,
    pub state: std::sync::Arc<BackendState>,
    /// `instance.addr` as a URI authority.
    pub authority: Authority,
    /// `instance.id` as the `x-shoal-instance` header value.
    pub id_header: HeaderValue,
    /// Set when the instance has left the registry while ready and is kept
    /// routable for a grace period ([`grace`](crate::grace)).
    pub unconfirmed: Option<std::sync::Arc<Unconfirmed>>,
    /// Idle keep-alive connections to `authority`; the table shares one pool
    /// among the entries with the same address.
    pub conns: std::sync::Arc<ConnPool>,
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
            instance,
            state,
            authority,
            id_header,
            unconfirmed: None,
            conns: Default::default(),
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
