//! When a failed attempt is tried again on another instance, and the retry
//! budget that keeps retries from turning an outage into a storm.
//!
//! The rule ([`may_retry`]):
//! - the request never left the gateway (connection refused or failed, or a
//!   pooled connection found closed before anything was written): any
//!   method, since the instance cannot have acted on it;
//! - the instance refused it unprocessed (h2c routes): an HTTP/2 stream
//!   reset with `REFUSED_STREAM`, or one above the last stream id of a
//!   `GOAWAY` the instance sent (RFC 9113 §8.7: both guarantee the request
//!   was not processed): any method, so gRPC calls (POSTs) too, as long as
//!   the body can be replayed ([`body`](super::body));
//! - the connection was reset or closed before response headers, or the
//!   instance answered 503 while the latest table shows it draining or gone:
//!   idempotent methods only (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), or
//!   any method on a route with `"idempotent": true` (the operator says its
//!   requests may run twice, e.g. gRPC methods that are), and only once per
//!   request;
//! - no response headers within the per-try timeout (a route's
//!   `try_timeout_ms`, else `--try-timeout`; off by default): idempotent
//!   methods only, and only once per request (the same one retry as above):
//!   a frozen or stalled instance then costs the per-try timeout, not the
//!   whole response timeout;
//! - the response timeout is never retried: the instance may still be
//!   working on it, and a retry would double the client's wait.
//!
//! Every retry also needs an attempt left (1 + the route's `retries`, else
//! `--retries`), an instance not yet tried, a request body that can be sent
//! again (see [`body`](super::body)) and a token from the service's
//! [`RetryBudget`].
//!
//! A hedge ([`hedge`](super::hedge)) is a retry sent before the first
//! attempt has failed, so it takes a retry token too, and also has its own,
//! tighter cap ([`RetryBudget::try_hedge`]): at most [`HEDGE_RATIO`] of the
//! window's requests, plus one per window (no per-second reserve: a quiet
//! service may hedge once every 10 s). Hedges fire on slowness,
//! and slowness is what extra requests make worse: a reserve of 10 a second
//! let a slow service at 40 requests a second hedge a quarter of them, and
//! the losing hedges kept its instances busy (the autoscaler saw in-flight
//! grow and scaled out).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use crate::stats::claim_second;

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request was not sent (connect error, pooled connection closed first).
    NotSent,
    /// Sent on an HTTP/2 connection, and refused by the instance before it
    /// processed it (`REFUSED_STREAM`, or above a `GOAWAY`'s last stream id).
    Refused,
    /// Sent, then the connection was reset or closed before response headers.
    Reset,
    /// 503 from an instance that is draining or gone from the registry.
    DrainingUnavailable,
    /// No response headers within the per-try timeout.
    TryTimeout,
    /// No response headers within the response timeout.
    Timeout,
}

impl Failure {
    /// The instance cannot have acted on the request: retrying it is safe
    /// for any method and does not use the request's one second chance.
    pub fn unprocessed(self) -> bool {
        matches!(self, Failure::NotSent | Failure::Refused)
    }
}

/// Methods that may be repeated without changing the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether `failure` may be retried; `idempotent`: the request may be
/// sent twice (its method is idempotent, or its route says every request
/// on it is: [`Route::idempotent`](registry::model::Route)); `second_chance_used` says whether this
/// request already had its one retry after a reset or a draining 503.
pub fn may_retry(failure: Failure, idempotent: bool, second_chance_used: bool) -> bool {
    match failure {
        Failure::NotSent | Failure::Refused => true,
        Failure::Reset | Failure::DrainingUnavailable | Failure::TryTimeout => {
            idempotent && !second_chance_used
        }
        Failure::Timeout => false,
    }
}

/// Seconds the budget looks back.
pub const WINDOW_SECS: u64 = 10;
/// Retries allowed per request in the window.
pub const RETRY_RATIO: f64 = 0.2;
/// Retries allowed per second of window on top of the ratio, so that a
/// quiet service can still retry.
pub const MIN_RETRIES_PER_SEC: u64 = 10;

/// Hedges allowed per request in the window, plus [`HEDGES_PER_WINDOW`].
pub const HEDGE_RATIO: f64 = 0.02;
/// Hedges allowed per window whatever the traffic, so that a quiet service
/// still hedges now and then; not per second, unlike retries' reserve.
pub const HEDGES_PER_WINDOW: u64 = 1;

const SLOTS: usize = WINDOW_SECS as usize;

#[derive(Debug, Default)]
struct Slot {
    /// Which second since the epoch this slot holds.
    second: AtomicU64,
    requests: AtomicU64,
    /// Retries, hedges included.
    retries: AtomicU64,
    hedges: AtomicU64,
}

/// Finagle-style retry budget for one service: over the last 10 s, retries
/// may be at most 20% of requests plus 10 per second, and hedges (which are
/// retries too) at most 2% of requests plus one. Lock-free: one atomic add
/// per request.
#[derive(Debug)]
pub struct RetryBudget {
    epoch: Instant,
    slots: [Slot; SLOTS],
}

impl Default for RetryBudget {
    /// A budget whose window starts now.
    fn default() -> Self {
        RetryBudget::new(Instant::now())
    }
}

impl RetryBudget {
    pub fn new(now: Instant) -> Self {
        RetryBudget {
            epoch: now,
            slots: Default::default(),
        }
    }

    /// A new request (not a retry) arrived.
    pub fn deposit(&self, now: Instant) {
        self.slot(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Take a token for one retry; false (and nothing taken) when the budget
    /// is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let window = self.window(now);
        if !window.may_retry() {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Take a token for one hedge: a retry token, within [`HEDGE_RATIO`] of
    /// the window's requests plus [`HEDGES_PER_WINDOW`]; false (and nothing
    /// taken) when either is spent.
    pub fn try_hedge(&self, now: Instant) -> bool {
        let window = self.window(now);
        if !window.may_retry() || !window.may_hedge() {
            return false;
        }
        let slot = self.slot(now);
        slot.retries.fetch_add(1, Ordering::Relaxed);
        slot.hedges.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The counts of the seconds still in the window at `now`.
    fn window(&self, now: Instant) -> Window {
        let current = self.second(now);
        let oldest = current.saturating_sub(WINDOW_SECS - 1);
        let mut window = Window::default();
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Relaxed);
            if (oldest..=current).contains(&second) {
                window.requests += slot.requests.load(Ordering::Relaxed);
                window.retries += slot.retries.load(Ordering::Relaxed);
                window.hedges += slot.hedges.load(Ordering::Relaxed);
            }
        }
        window
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// The slot for `now`, cleared first if it still holds an older second.
    fn slot(&self, now: Instant) -> &Slot {
        let second = self.second(now);
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        if claim_second(&slot.second, second) {
            // Counts added concurrently by another thread in this instant may
            // be lost; the budget is a rate limit, not an account.
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
            slot.hedges.store(0, Ordering::Relaxed);
        }
        slot
    }
}

/// A budget's counts over its window.
#[derive(Debug, Default)]
struct Window {
    requests: u64,
    retries: u64,
    hedges: u64,
}

impl Window {
    /// Whether one more retry fits: 20% of requests plus the reserve.
    fn may_retry(&self) -> bool {
        let allowed =
            RETRY_RATIO * self.requests as f64 + (MIN_RETRIES_PER_SEC * WINDOW_SECS) as f64;
        (self.retries + 1) as f64 <= allowed
    }

    /// Whether one more hedge fits: 2% of requests plus one.
    fn may_hedge(&self) -> bool {
        let allowed = HEDGE_RATIO * self.requests as f64 + HEDGES_PER_WINDOW as f64;
        (self.hedges + 1) as f64 <= allowed
    }
}

/// How long the budget remembers, for documentation and tests.
pub const WINDOW: Duration = Duration::from_secs(WINDOW_SECS);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    #[test]
    fn a_route_can_say_its_posts_may_run_twice() {
        assert!(!may_retry(Failure::Reset, false, false));
        assert!(may_retry(Failure::Reset, true, false), "idempotent route");
        assert!(!may_retry(Failure::Reset, true, true), "still only once");
        assert!(!may_retry(Failure::Timeout, true, false));
    }

    #[test]
    fn idempotency_and_the_retry_rule() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(is_idempotent(&m), "{m}");
            assert!(may_retry(Failure::Reset, is_idempotent(&m), false));
            assert!(
                !may_retry(Failure::Reset, is_idempotent(&m), true),
                "only once"
            );
            assert!(may_retry(
                Failure::DrainingUnavailable,
                is_idempotent(&m),
                false
            ));
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
            assert!(
                may_retry(Failure::NotSent, is_idempotent(&m), true),
                "never sent: any method"
            );
            assert!(
                may_retry(Failure::Refused, is_idempotent(&m), true),
                "refused unprocessed: any method"
            );
            assert!(!may_retry(Failure::Reset, is_idempotent(&m), false));
            assert!(!may_retry(
                Failure::DrainingUnavailable,
                is_idempotent(&m),
                false
            ));
        }
        assert!(!may_retry(
            Failure::Timeout,
            is_idempotent(&Method::GET),
            false
        ));
        assert!(may_retry(
            Failure::TryTimeout,
            is_idempotent(&Method::GET),
            false
        ));
        assert!(
            !may_retry(Failure::TryTimeout, is_idempotent(&Method::GET), true),
            "once"
        );
        assert!(!may_retry(
            Failure::TryTimeout,
            is_idempotent(&Method::POST),
            false
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_service_gets_ten_retries_a_second_over_the_window() {
        let budget = RetryBudget::new(Instant::now());
        let granted = (0..200)
            .filter(|_| budget.try_withdraw(Instant::now()))
            .count();
        assert_eq!(granted, 100, "10/s over a 10 s window");
        advance(Duration::from_secs(5)).await;
        assert!(
            !budget.try_withdraw(Instant::now()),
            "still inside the window"
        );
        advance(WINDOW).await;
        assert!(
            budget.try_withdraw(Instant::now()),
            "the window slid past them"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fifth_of_requests_plus_the_reserve() {
        let budget = RetryBudget::new(Instant::now());
        // 100 requests a second for 10 s.
        for _ in 0..10 {
            for _ in 0..100 {
                budget.deposit(Instant::now());
            }
            advance(Duration::from_secs(1)).await;
        }
        // The last second has moved on; look at the most recent 9 s + now.
        advance(Duration::from_millis(1)).await;
        let granted = (0..1000)
            .filter(|_| budget.try_withdraw(Instant::now()))
            .count();
        // 900 requests still in the window: 0.2 × 900 + 100 = 280.
        assert_eq!(granted, 280);
        advance(Duration::from_secs(30)).await;
        let granted = (0..1000)
            .filter(|_| budget.try_withdraw(Instant::now()))
            .count();
        assert_eq!(granted, 100, "old requests no longer count");
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_are_two_percent_of_requests_plus_one_per_window() {
        let budget = RetryBudget::new(Instant::now());
        budget.deposit(Instant::now());
        assert!(
            budget.try_hedge(Instant::now()),
            "a quiet service (one request in 10 s) may hedge once"
        );
        assert!(
            !budget.try_hedge(Instant::now()),
            "once per window, not per second as retries' reserve is"
        );
        for _ in 1..1000 {
            budget.deposit(Instant::now());
        }
        let granted = (0..100)
            .filter(|_| budget.try_hedge(Instant::now()))
            .count();
        assert_eq!(granted, 20, "2% of 1,000 requests plus one, one taken");
        // Hedges used retry tokens: 100 + 0.2 × 1,000 = 300 in all, 21 taken.
        let retries = (0..1000)
            .filter(|_| budget.try_withdraw(Instant::now()))
            .count();
        assert_eq!(retries, 279);
        advance(WINDOW + Duration::from_secs(1)).await;
        for _ in 0..100 {
            budget.deposit(Instant::now());
        }
        assert_eq!(
            (0..10).filter(|_| budget.try_hedge(Instant::now())).count(),
            3,
            "the window slid: 2% of the 100 new requests plus one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_retry_budget_stops_hedges_too() {
        let budget = RetryBudget::new(Instant::now());
        for _ in 0..10_000 {
            budget.deposit(Instant::now());
        }
        let retries = (0..5000)
            .filter(|_| budget.try_withdraw(Instant::now()))
            .count();
        assert_eq!(retries, 2100, "0.2 × 10,000 + 100");
        assert!(
            !budget.try_hedge(Instant::now()),
            "hedge ratio left (0 of 201 used) but no retry token"
        );
    }
}
