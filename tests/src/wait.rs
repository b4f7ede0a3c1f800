//! Waiting on conditions with deadlines. Every wait returns how long it took
//! (or what it waited for), so tests can both bound and report timings.
//!
//! This is the one place where the harness sleeps between polls; a test
//! waits on a condition through it instead of sleeping a fixed time. Where
//! time itself is the point, [`holds_for`] watches a claim that nothing
//! happens for a while, and [`hold_until`] ends a scenario of fixed length.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often conditions are polled. Small enough that measured times are
/// accurate to about this much.
pub const POLL: Duration = Duration::from_millis(10);

/// Poll `cond` until it holds; `Err` with `what` once `timeout` has passed.
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, String> {
    wait_until_async(timeout, what, || std::future::ready(cond())).await
}

/// As [`wait_until`] with an async condition.
pub async fn wait_until_async<F, Fut>(
    timeout: Duration,
    what: &str,
    mut cond: F,
) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    wait_for(timeout, what, || {
        let holds = cond();
        async move { holds.await.then_some(()) }
    })
    .await
    .map(|()| start.elapsed())
}

/// Poll `attempt` until it gives a value (an answer, a retried call that
/// succeeded) and return it; `Err` with `what` once `timeout` has passed.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Check `cond` over and over until `length` has passed; `Err` naming
/// `what` and when, the first time it does not hold. For a claim that
/// something does *not* happen for a while (nothing starts, a count stays
/// put), where no event marks the end of the wait; a caller says why no
/// condition exists. Returns how many checks held.
pub async fn holds_for<F, Fut>(length: Duration, what: &str, mut cond: F) -> Result<usize, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < length {
        if !cond().await {
            return Err(format!(
                "{what} stopped holding after {:.1} s of {length:?}",
                start.elapsed().as_secs_f64()
            ));
        }
        checks += 1;
        tokio::time::sleep(POLL).await;
    }
    Ok(checks)
}

/// Let `length` pass since `since` (not at all if it has): for a scenario
/// whose length is itself the point (an outage of 10 s, a measuring phase),
/// where the end is a time and not a condition. Every caller says which.
pub async fn hold_until(since: Instant, length: Duration) {
    tokio::time::sleep(length.saturating_sub(since.elapsed())).await;
}
