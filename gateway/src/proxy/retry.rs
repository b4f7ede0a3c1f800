//! When a failed attempt is tried again on another instance, and the retry
//! budget that keeps retries from turning an outage into a storm.
//!
//! The rule ([`may_retry`]):
//! - the request never left the gateway (connection refused or failed, or a
//!   pooled connection found closed before anything was written): any
//!   method, since the instance cannot have acted on it;
//! - the connection was reset or closed before response headers, or the
//!   instance answered 503 while the latest table shows it draining or gone:
//!   idempotent methods only (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), and
//!   only once per request;
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
    /// Sent, then the connection was reset or closed before response headers.
    Reset,
    /// 503 from an instance that is draining or gone from the registry.
    DrainingUnavailable,
    /// No response headers within the per-try timeout.
    TryTimeout,
    /// No response headers within the response timeout.
    Timeout,
}

/// Methods that may be repeated without changing the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether `failure` may be retried; `second_chance_used` says whether this
/// request already had its one retry after a reset or a draining 503.
pub fn may_retry(failure: Failure, method: &Method, second_chance_used: bool) -> bool {
    match failure {
        Failure::NotSent => true,
        Failure::Reset | Failure::DrainingUnavailable | Failure::TryTimeout => {
            is_idempotent(method) && !second_chance_used
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

const SLOTS: usize = WINDOW_SECS as usize;

#[derive(Debug, Default)]
struct Slot {
    /// Which second since the epoch this slot holds.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Finagle-style retry budget for one service: over the last 10 s, retries
/// may be at most 20% of requests plus 10 per second. Lock-free: one atomic
/// add per request.
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
        let current = self.second(now);
        let oldest = current.saturating_sub(WINDOW_SECS - 1);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Relaxed);
            if (oldest..=current).contains(&second) {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = RETRY_RATIO * requests as f64 + (MIN_RETRIES_PER_SEC * WINDOW_SECS) as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
        true
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
        }
        slot
    }
}

/// How long the budget remembers, for documentation and tests.
pub const WINDOW: Duration = Duration::from_secs(WINDOW_SECS);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

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
            assert!(may_retry(Failure::Reset, &m, false));
            assert!(!may_retry(Failure::Reset, &m, true), "only once");
            assert!(may_retry(Failure::DrainingUnavailable, &m, false));
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
            assert!(
                may_retry(Failure::NotSent, &m, true),
                "never sent: any method"
            );
            assert!(!may_retry(Failure::Reset, &m, false));
            assert!(!may_retry(Failure::DrainingUnavailable, &m, false));
        }
        assert!(!may_retry(Failure::Timeout, &Method::GET, false));
        assert!(may_retry(Failure::TryTimeout, &Method::GET, false));
        assert!(!may_retry(Failure::TryTimeout, &Method::GET, true), "once");
        assert!(!may_retry(Failure::TryTimeout, &Method::POST, false));
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
}
