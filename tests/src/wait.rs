//! Waiting on conditions with deadlines. Every wait returns how long it took,
//! so tests can both bound and report timings.

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
    loop {
        if cond().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL).await;
    }
}
