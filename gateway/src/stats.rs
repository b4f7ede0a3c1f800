//! Request statistics, recorded lock-free on the request path and read by the
//! admin API, `/metrics` and (through them) the autoscaler.
//!
//! [`RequestStats`] is kept per backend, per service and per route. It holds
//! totals by status class and a ring of one-second slots covering the last
//! [`WINDOW_SECS`] seconds (for request rate and recent percentiles).
//! [`ServiceCounters`] adds what only a service has: the cumulative latency
//! histogram Prometheus gets ([`LatencyHistogram`]; per service only, so a
//! request does not write one into a cold instance's state for nobody to
//! read), requests held waiting for an instance, retries, and requests that
//! found no instance at all.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use registry::wire::gateway::StatsSnapshot;
use serde::Serialize;

/// Seconds covered by the recent window.
pub const WINDOW_SECS: u64 = 10;
/// Upper bounds of the latency buckets, in milliseconds (the last bucket is +Inf).
pub const BUCKETS_MS: [f64; 16] = [
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
    10000.0,
    30000.0,
    f64::INFINITY,
];
const SLOTS: usize = WINDOW_SECS as usize + 1;

/// Status class of a finished request: `1xx`..`5xx`, or `failed` when no response
/// came back (connection failed, timed out, reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Class {
    Failed,
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Failed,
        Class::Informational,
        Class::Success,
        Class::Redirect,
        Class::ClientError,
        Class::ServerError,
    ];

    pub fn of(status: Option<u16>) -> Class {
        match status {
            None => Class::Failed,
            Some(100..=199) => Class::Informational,
            Some(200..=299) => Class::Success,
            Some(300..=399) => Class::Redirect,
            Some(400..=499) => Class::ClientError,
            Some(_) => Class::ServerError,
        }
    }

    /// Label used in metrics: `1xx`, ..., `5xx`, `failed`.
    pub fn label(self) -> &'static str {
        match self {
            Class::Failed => "failed",
            Class::Informational => "1xx",
            Class::Success => "2xx",
            Class::Redirect => "3xx",
            Class::ClientError => "4xx",
            Class::ServerError => "5xx",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Counted as an error in rates and the `errors` figure.
    pub fn is_error(self) -> bool {
        matches!(self, Class::Failed | Class::ServerError)
    }
}

/// One second of the recent window. Its counts are 32-bit, which no
/// second's requests can overflow: every backend, route and service keeps
/// [`SLOTS`] of these, 80 bytes each rather than 152 with 64-bit counts.
#[derive(Debug, Default)]
struct Slot {
    /// Which second (since the stats' epoch) this slot currently holds.
    second: AtomicU64,
    count: AtomicU32,
    errors: AtomicU32,
    buckets: [AtomicU32; BUCKETS_MS.len()],
}

/// Totals, histogram and recent window for one backend, service or route.
/// The in-flight counts come first: `BackendState` keeps them on the cache
/// line a least-request pick reads.
#[derive(Debug)]
#[repr(C)]
pub struct RequestStats {
    in_flight: AtomicI64,
    /// Hedges racing an attempt that is still counted in `in_flight` (see
    /// [`RequestStats::race`]).
    racing: AtomicI64,
    epoch: Instant,
    by_class: [AtomicU64; 6],
    slots: [Slot; SLOTS],
}

impl Default for RequestStats {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

/// The cumulative histogram, as Prometheus wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// (upper bound in seconds, cumulative count)
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl RequestStats {
    pub fn new(epoch: Instant) -> Self {
        RequestStats {
            epoch,
            by_class: Default::default(),
            in_flight: AtomicI64::new(0),
            racing: AtomicI64::new(0),
            slots: Default::default(),
        }
    }

    /// The time the window's seconds count from (given to [`RequestStats::new`]).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// A request started; pair with [`RequestStats::record`] when it ends.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended with `status` (None: no response) after `latency`.
    pub fn record(&self, status: Option<u16>, latency: Duration, now: Instant) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.record_finished(status, latency, now);
    }

    /// A started attempt is a hedge, racing another attempt of the same
    /// client request, which that attempt already counts in flight: it is
    /// counted apart, so that `in_flight` (what the autoscaler reads as
    /// demand) counts each client request once, while [`RequestStats::load`]
    /// (what balancing reads) counts it, since the instance is working on
    /// it. Then [`RequestStats::promote`] if it wins, and
    /// [`RequestStats::record_racing`] if it ends still racing.
    pub fn race(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.racing.fetch_add(1, Ordering::Relaxed);
    }

    /// A racing hedge won (or its rival failed): it now stands for the request.
    pub fn promote(&self) {
        self.racing.fetch_sub(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A racing hedge ended without winning.
    pub fn record_racing(&self, status: Option<u16>, latency: Duration, now: Instant) {
        self.racing.fetch_sub(1, Ordering::Relaxed);
        self.record_finished(status, latency, now);
    }

    /// Count a request that was never started with [`RequestStats::start`]
    /// (e.g. refused before it reached a backend).
    pub fn record_finished(&self, status: Option<u16>, latency: Duration, now: Instant) {
        let class = Class::of(status);
        self.by_class[class.index()].fetch_add(1, Ordering::Relaxed);
        let bucket = bucket_of(latency);

        let second = now.saturating_duration_since(self.epoch).as_secs();
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        if claim_second(&slot.second, second) {
            // A request recorded concurrently by another thread may be lost;
            // that is the price of not locking, and it only affects the window.
            slot.count.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for b in &slot.buckets {
                b.store(0, Ordering::Relaxed);
            }
        }
        slot.count.fetch_add(1, Ordering::Relaxed);
        if class.is_error() {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Client requests in flight, each counted once (a racing hedge is not).
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Attempts in flight, racing hedges included: the work an instance has.
    pub fn load(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed) + self.racing.load(Ordering::Relaxed)
    }

    pub fn total(&self, class: Class) -> u64 {
        self.by_class[class.index()].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self, now: Instant) -> StatsSnapshot {
        let current = now.saturating_duration_since(self.epoch).as_secs();
        // Full seconds only: the current second is still filling up.
        let oldest = current.saturating_sub(WINDOW_SECS);
        let mut count = 0;
        let mut errors = 0;
        let mut buckets = [0u64; BUCKETS_MS.len()];
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Relaxed);
            if second >= oldest && second < current {
                count += u64::from(slot.count.load(Ordering::Relaxed));
                errors += u64::from(slot.errors.load(Ordering::Relaxed));
                for (sum, b) in buckets.iter_mut().zip(&slot.buckets) {
                    *sum += u64::from(b.load(Ordering::Relaxed));
                }
            }
        }
        let seconds = (current - oldest).max(1) as f64;
        let requests_total: u64 = self
            .by_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        StatsSnapshot {
            in_flight: self.in_flight(),
            requests_total,
            errors_total: self.total(Class::Failed) + self.total(Class::ServerError),
            rate: count as f64 / seconds,
            error_rate: errors as f64 / seconds,
            p50_ms: percentile(&buckets, 0.50),
            p95_ms: percentile(&buckets, 0.95),
            p99_ms: percentile(&buckets, 0.99),
        }
    }
}

/// Every latency ever recorded, in [`BUCKETS_MS`] buckets, with their sum:
/// a Prometheus histogram.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency: Duration) {
        self.buckets[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn histogram(&self) -> Histogram {
        let mut cumulative = 0;
        let buckets = BUCKETS_MS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (bound / 1000.0, cumulative)
            })
            .collect();
        Histogram {
            buckets,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: cumulative,
        }
    }
}

/// For rings of one-second slots: move the slot whose second is held in
/// `cell` on to `second`. True when this caller did so and must clear the
/// slot's old counts; false when the slot already holds `second` (or another
/// thread just moved it).
pub(crate) fn claim_second(cell: &AtomicU64, second: u64) -> bool {
    let held = cell.load(Ordering::Relaxed);
    held != second
        && cell
            .compare_exchange(held, second, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
}

fn bucket_of(latency: Duration) -> usize {
    let ms = latency.as_secs_f64() * 1000.0;
    BUCKETS_MS
        .iter()
        .position(|&bound| ms <= bound)
        .unwrap_or(BUCKETS_MS.len() - 1)
}

/// The `q` quantile from bucket counts, interpolating linearly inside a bucket.
fn percentile(buckets: &[u64; BUCKETS_MS.len()], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, &count) in buckets.iter().enumerate() {
        let next = seen + count as f64;
        if next >= rank && count > 0 {
            let lower = if i == 0 { 0.0 } else { BUCKETS_MS[i - 1] };
            let upper = if BUCKETS_MS[i].is_finite() {
                BUCKETS_MS[i]
            } else {
                lower * 2.0
            };
            let within = (rank - seen) / count as f64;
            return Some(lower + (upper - lower) * within);
        }
        seen = next;
    }
    None
}

/// Per-service figures beyond request stats.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    pub requests: RequestStats,
    /// Every client request's time to response headers (or failure), for `/metrics`.
    pub durations: LatencyHistogram,
    /// Requests that waited for a ready instance (scale from zero), ever.
    pub held_total: AtomicU64,
    /// Requests waiting for a ready instance right now.
    pub held_now: AtomicI64,
    /// Requests that gave up waiting and got 503.
    pub hold_timeouts_total: AtomicU64,
    /// Extra attempts made on another instance.
    pub retries_total: AtomicU64,
    /// Retries and hedges refused by the retry budget.
    pub retries_refused_total: AtomicU64,
    /// Hedges sent: a second attempt beside one slower than the service's p99.
    pub hedges_total: AtomicU64,
    /// Hedges whose response was relayed (they beat the first attempt).
    pub hedges_won_total: AtomicU64,
    /// The service's recent time to response headers, for the hedge delay.
    pub latency: crate::proxy::sketch::LatencySketch,
    /// The service's retry budget, read on every request: kept here, with
    /// the counters that outlive table rebuilds, so the request path reaches
    /// it through its pool instead of a lookup by name.
    pub retry_budget: crate::proxy::retry::RetryBudget,
}

impl ServiceCounters {
    /// A client request [`RequestStats::start`]ed on `requests` ended.
    pub fn record(&self, status: Option<u16>, latency: Duration, now: Instant) {
        self.requests.record(status, latency, now);
        self.durations.observe(latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `BackendState` relies on the in-flight counts leading the stats, and
    /// on what every request's record reads and writes besides its window
    /// slot (the epoch and the totals) filling the next 64 bytes.
    #[test]
    fn the_in_flight_counts_lead_and_the_totals_follow() {
        use std::mem::{offset_of, size_of};
        assert_eq!(
            (
                offset_of!(RequestStats, in_flight),
                offset_of!(RequestStats, racing),
                offset_of!(RequestStats, epoch),
            ),
            (0, 8, 16)
        );
        assert_eq!(
            offset_of!(RequestStats, by_class) + size_of::<[AtomicU64; 6]>(),
            16 + 64
        );
    }

    #[test]
    fn classes() {
        assert_eq!(Class::of(None), Class::Failed);
        assert_eq!(Class::of(Some(204)), Class::Success);
        assert_eq!(Class::of(Some(503)), Class::ServerError);
        assert!(Class::of(Some(502)).is_error() && !Class::of(Some(404)).is_error());
    }

    #[test]
    fn totals_rate_and_percentiles_over_the_window() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        // 100 requests per second for 10 s: 90 fast (3 ms), 10 slow (300 ms).
        for s in 0..10 {
            let now = t0 + Duration::from_secs(s);
            for i in 0..100 {
                stats.start();
                let latency = if i < 90 {
                    Duration::from_millis(3)
                } else {
                    Duration::from_millis(300)
                };
                stats.record(Some(if i == 0 { 502 } else { 200 }), latency, now);
            }
        }
        let snap = stats.snapshot(t0 + Duration::from_secs(10));
        assert_eq!(snap.requests_total, 1000);
        assert_eq!(snap.errors_total, 10);
        assert_eq!(snap.in_flight, 0);
        assert!((snap.rate - 100.0).abs() < 1e-9, "{snap:?}");
        assert!((snap.error_rate - 1.0).abs() < 1e-9, "{snap:?}");
        let p50 = snap.p50_ms.unwrap();
        assert!((2.0..=5.0).contains(&p50), "{snap:?}");
        let p95 = snap.p95_ms.unwrap();
        assert!((200.0..=500.0).contains(&p95), "{snap:?}");
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        stats.record_finished(Some(200), Duration::from_millis(1), t0);
        // Early on the window is as long as the stats have existed.
        assert_eq!(stats.snapshot(t0 + Duration::from_secs(1)).rate, 1.0);
        assert_eq!(stats.snapshot(t0 + Duration::from_secs(10)).rate, 0.1);
        let later = stats.snapshot(t0 + Duration::from_secs(30));
        assert_eq!(later.rate, 0.0);
        assert_eq!(later.p50_ms, None);
        assert_eq!(later.requests_total, 1, "totals never decay");
    }

    #[test]
    fn histogram_is_cumulative() {
        let durations = LatencyHistogram::default();
        durations.observe(Duration::from_micros(300));
        durations.observe(Duration::from_millis(15));
        durations.observe(Duration::from_secs(60));
        let h = durations.histogram();
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], (0.0005, 1));
        assert_eq!(h.buckets[5], (0.02, 2));
        assert_eq!(h.buckets.last().unwrap().1, 3);
        assert!((h.sum_seconds - 60.0153).abs() < 1e-6, "{}", h.sum_seconds);
    }
}
