//! The load this instance reports on `/load`: application requests in flight,
//! their total, latency percentiles over a sliding window, and process CPU.
//!
//! Only application requests are counted (the router puts [`Stats::begin`]
//! around them); health and load probes would otherwise inflate the very
//! numbers the autoscaler reads. Time comes from `tokio::time`, so the window
//! is tested on paused time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Latency percentiles are computed over the requests that finished this recently.
pub const WINDOW: Duration = Duration::from_secs(10);

/// At most this many samples are kept. Past about 6,500 requests/s the window
/// then covers less than [`WINDOW`], which keeps memory and the sort on every
/// `/load` bounded; the percentiles stay representative of recent traffic.
const MAX_SAMPLES: usize = 65_536;

pub use registry::wire::load::Percentiles;

/// Finished requests' latencies, oldest first.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: VecDeque<(Instant, Duration)>,
}

impl LatencyWindow {
    pub fn record(&mut self, now: Instant, latency: Duration) {
        self.expire(now);
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, latency));
    }

    /// p50 and p95 (nearest rank) of the requests that finished within [`WINDOW`] of `now`.
    pub fn percentiles(&mut self, now: Instant) -> Percentiles {
        self.expire(now);
        let mut latencies: Vec<Duration> = self.samples.iter().map(|(_, l)| *l).collect();
        latencies.sort_unstable();
        Percentiles {
            p50: nearest_rank(&latencies, 50),
            p95: nearest_rank(&latencies, 95),
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.samples.front() {
            if now.saturating_duration_since(*at) <= WINDOW {
                break;
            }
            self.samples.pop_front();
        }
    }
}

/// The smallest sample with at least `pct`% of the samples at or below it.
fn nearest_rank(sorted: &[Duration], pct: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}

/// Counters shared by every request; cheap to update from any task.
#[derive(Debug)]
pub struct Stats {
    in_flight: AtomicU64,
    total: AtomicU64,
    window: Mutex<LatencyWindow>,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            in_flight: AtomicU64::new(0),
            total: AtomicU64::new(0),
            window: Mutex::default(),
            started: Instant::now(),
        }
    }
}

/// What `/load` reports about requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSnapshot {
    pub in_flight: u64,
    pub requests_total: u64,
    pub latency_ms: Percentiles,
    pub uptime: Duration,
}

impl Stats {
    /// Count a request as started. It stays in flight until the guard is
    /// dropped; [`InFlight::finish`] also records its latency. The guard
    /// holds the stats, so a request's future can own it.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self.clone(),
            started: Instant::now(),
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> LoadSnapshot {
        let now = Instant::now();
        LoadSnapshot {
            in_flight: self.in_flight(),
            requests_total: self.total.load(Ordering::Relaxed),
            latency_ms: self.window().percentiles(now),
            uptime: now.duration_since(self.started),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, LatencyWindow> {
        // Every critical section is a single push or scan: a panic cannot
        // leave the window inconsistent, so a poisoned lock is still usable.
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One application request in flight.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<Stats>,
    started: Instant,
}

impl InFlight {
    /// The request produced its response: record how long that took.
    pub fn finish(self) {
        let now = Instant::now();
        self.stats
            .window()
            .record(now, now.duration_since(self.started));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// CPU time (user + system) this process has used, in seconds.
pub fn cpu_seconds() -> Result<f64, nix::Error> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Ok(micros as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(nearest_rank(&sorted, 50), Some(50.0));
        assert_eq!(nearest_rank(&sorted, 95), Some(95.0));
        assert_eq!(nearest_rank(&[ms(7)], 95), Some(7.0));
        let sorted: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(nearest_rank(&sorted, 50), Some(5.0));
        assert_eq!(nearest_rank(&sorted, 95), Some(10.0));
        assert_eq!(nearest_rank(&[], 50), None);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_older_than_the_window_drop_out() {
        let stats = Arc::new(Stats::default());
        assert_eq!(
            stats.snapshot().latency_ms,
            Percentiles {
                p50: None,
                p95: None
            }
        );

        // 100 concurrent requests taking 1..=100 ms, all finished by t = 100 ms.
        let requests: Vec<InFlight> = (0..100).map(|_| stats.begin()).collect();
        assert_eq!(stats.in_flight(), 100);
        for request in requests {
            advance(ms(1)).await;
            request.finish();
        }
        let first_batch_done = Instant::now();
        let s = stats.snapshot();
        assert_eq!(s.requests_total, 100);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.latency_ms.p50, Some(50.0));
        assert_eq!(s.latency_ms.p95, Some(95.0));

        // 5 s later, 10 fast requests: both batches are in the window.
        advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            let request = stats.begin();
            advance(ms(1)).await;
            request.finish();
        }
        assert_eq!(stats.window().len(), 110);

        // Just past 10 s after the first batch finished, only the fast ones remain.
        let until = first_batch_done + WINDOW + ms(1);
        advance(until.duration_since(Instant::now())).await;
        let s = stats.snapshot();
        assert_eq!(s.latency_ms.p50, Some(1.0));
        assert_eq!(s.latency_ms.p95, Some(1.0));
        assert_eq!(s.requests_total, 110, "totals never drop out");

        advance(WINDOW).await;
        assert_eq!(stats.snapshot().latency_ms.p95, None);
        assert!(stats.window().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_counts_until_the_guard_goes_even_without_finish() {
        let stats = Arc::new(Stats::default());
        let a = stats.begin();
        let b = stats.begin();
        assert_eq!(stats.in_flight(), 2);
        a.finish();
        assert_eq!(stats.in_flight(), 1);
        drop(b); // cancelled: counted, in flight no more, no latency sample
        let s = stats.snapshot();
        assert_eq!((s.in_flight, s.requests_total), (0, 2));
        assert_eq!(stats.window().len(), 1);
    }

    #[test]
    fn the_window_is_bounded() {
        let mut window = LatencyWindow::default();
        let now = Instant::now();
        for _ in 0..MAX_SAMPLES + 10 {
            window.record(now, ms(1));
        }
        assert_eq!(window.len(), MAX_SAMPLES);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        std::hint::black_box(x);
        let after = cpu_seconds().unwrap();
        assert!(after > before, "{before} -> {after}");
    }
}
