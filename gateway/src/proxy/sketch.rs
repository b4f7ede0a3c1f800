//! A service's recent time to response headers, summed up as one p99
//! figure the hedge delay is taken from (see [`hedge`](super::hedge)).
//!
//! A fixed log-linear histogram (four buckets per power of two of
//! microseconds, so a bucket is at most 25% wide) per one-second period,
//! two periods kept: the current one fills while the p99 of the one before
//! is read. The request path pays one atomic add per response and one
//! atomic load per hedge decision; the percentile is worked out once a
//! second, by the first response of a new period. A period with fewer than
//! [`MIN_SAMPLES`] responses keeps the previous estimate (a quiet service
//! keeps what it last knew). Lock-free: counts added by another thread while
//! a period turns over may be lost, as in the
//! [`RetryBudget`](super::retry::RetryBudget); the figure is an estimate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::claim_second;

/// Responses a period needs before its p99 replaces the estimate.
pub const MIN_SAMPLES: u64 = 10;
/// How long one period collects.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The percentile estimated.
pub const QUANTILE: f64 = 0.99;

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 2;
const SUB: u64 = 1 << SUB_BITS;
/// Up to 2^40 µs (12.7 days); longer waits land in the last bucket.
const MAX_POWER: u32 = 40;
const BUCKETS: usize = ((MAX_POWER - SUB_BITS + 1) * SUB as u32) as usize;

/// The bucket for `micros`: exact below 4 µs, then four per power of two.
fn bucket_of(micros: u64) -> usize {
    let v = micros.clamp(1, (1 << MAX_POWER) - 1);
    let power = 63 - v.leading_zeros();
    if power < SUB_BITS {
        return v as usize;
    }
    let sub = (v >> (power - SUB_BITS)) & (SUB - 1);
    ((power - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The largest value in bucket `index`, in µs.
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let power = index / SUB + SUB_BITS as u64 - 1;
    let width = 1u64 << (power - SUB_BITS as u64);
    let lower = (SUB + index % SUB) * width;
    lower + width - 1
}

#[derive(Debug)]
struct Period {
    /// Which period since the epoch these counts belong to.
    number: AtomicU64,
    count: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Period {
    fn default() -> Self {
        Period {
            number: AtomicU64::new(0),
            count: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Period {
    fn clear(&self) {
        self.count.store(0, Ordering::Relaxed);
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
    }

    /// The upper bound of the bucket holding the `QUANTILE` rank, in µs.
    fn quantile(&self) -> Option<u64> {
        let count = self.count.load(Ordering::Relaxed);
        if count < MIN_SAMPLES {
            return None;
        }
        let rank = (QUANTILE * count as f64).ceil() as u64;
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(upper_bound(index));
            }
        }
        // Counts added while we read: the slowest bucket seen.
        self.buckets
            .iter()
            .rposition(|b| b.load(Ordering::Relaxed) > 0)
            .map(upper_bound)
    }
}

/// Recent time to response headers of one service's attempts.
#[derive(Debug)]
pub struct LatencySketch {
    epoch: Instant,
    /// The period being filled; the one that turns it over computes the estimate.
    current: AtomicU64,
    periods: [Period; 2],
    /// The latest estimate in µs; 0 while there is none.
    estimate: AtomicU64,
}

impl Default for LatencySketch {
    /// A sketch whose first period starts now.
    fn default() -> Self {
        LatencySketch::new(Instant::now())
    }
}

impl LatencySketch {
    pub fn new(now: Instant) -> Self {
        LatencySketch {
            epoch: now,
            current: AtomicU64::new(0),
            periods: Default::default(),
            estimate: AtomicU64::new(0),
        }
    }

    /// One attempt got its response headers `latency` after it was sent.
    #[inline]
    pub fn record(&self, latency: Duration, now: Instant) {
        let number = now.saturating_duration_since(self.epoch).as_secs() / PERIOD.as_secs();
        let period = &self.periods[(number % 2) as usize];
        if claim_second(&self.current, number) {
            self.turn_over(number);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        period.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        period.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Period `number` starts: estimate from the one just ended (if it is
    /// the one right before and has enough responses), then clear the slot
    /// `number` will fill.
    #[cold]
    fn turn_over(&self, number: u64) {
        let previous = &self.periods[((number + 1) % 2) as usize];
        if number > 0
            && previous.number.load(Ordering::Relaxed) == number - 1
            && let Some(p99) = previous.quantile()
        {
            self.estimate.store(p99.max(1), Ordering::Relaxed);
        }
        let next = &self.periods[(number % 2) as usize];
        next.clear();
        next.number.store(number, Ordering::Relaxed);
    }

    /// The latest p99 estimate, if a period has had enough responses.
    #[inline]
    pub fn p99(&self) -> Option<Duration> {
        match self.estimate.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    #[test]
    fn buckets_are_ordered_and_at_most_a_quarter_wide() {
        let mut last = 0;
        for micros in [
            1,
            2,
            3,
            4,
            5,
            7,
            8,
            9,
            15,
            16,
            100,
            999,
            1000,
            65_432,
            1 << 39,
        ] {
            let index = bucket_of(micros);
            assert!(index >= last, "{micros}");
            last = index;
            let upper = upper_bound(index);
            assert!(upper >= micros, "{micros} ≤ {upper}");
            assert!(
                (upper - micros) as f64 <= 0.25 * micros as f64,
                "{micros} in a bucket up to {upper}"
            );
            assert_eq!(bucket_of(upper), index, "{upper} is in its own bucket");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(0), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_is_the_last_full_periods_p99() {
        let sketch = LatencySketch::new(Instant::now());
        let fill = |slow: Duration| {
            // 990 fast responses, 10 slow: p99 is the fast ones' bucket top.
            for i in 0..1000 {
                let latency = if i < 990 {
                    Duration::from_micros(2000)
                } else {
                    slow
                };
                sketch.record(latency, Instant::now());
            }
        };
        fill(Duration::from_secs(3));
        assert_eq!(sketch.p99(), None, "the first period is still filling");
        advance(PERIOD).await;
        sketch.record(Duration::from_millis(2), Instant::now());
        let p99 = sketch.p99().expect("an estimate after one period");
        assert!(
            (Duration::from_micros(2000)..=Duration::from_micros(2500)).contains(&p99),
            "{p99:?}"
        );
        // Next period: 20% slow. The p99 follows them one period later.
        for i in 0..100 {
            let latency = if i < 80 { 2 } else { 300 };
            sketch.record(Duration::from_millis(latency), Instant::now());
        }
        advance(PERIOD).await;
        sketch.record(Duration::from_millis(2), Instant::now());
        let p99 = sketch.p99().unwrap();
        assert!(
            (Duration::from_millis(300)..=Duration::from_millis(375)).contains(&p99),
            "{p99:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_period_keeps_the_estimate_and_a_gap_is_not_read() {
        let sketch = LatencySketch::new(Instant::now());
        for _ in 0..50 {
            sketch.record(Duration::from_millis(4), Instant::now());
        }
        advance(PERIOD).await;
        // Too few responses in this period to replace the estimate.
        for _ in 0..(MIN_SAMPLES - 1) {
            sketch.record(Duration::from_millis(900), Instant::now());
        }
        let known = sketch.p99().unwrap();
        assert!(known <= Duration::from_millis(5), "{known:?}");
        advance(PERIOD).await;
        sketch.record(Duration::from_millis(1), Instant::now());
        assert_eq!(sketch.p99(), Some(known), "9 responses are not enough");
        // Many slow responses, then a silence of several periods: the slot
        // turned over after the gap holds an older period and is not read.
        for _ in 0..100 {
            sketch.record(Duration::from_millis(800), Instant::now());
        }
        advance(PERIOD * 5).await;
        sketch.record(Duration::from_millis(1), Instant::now());
        assert_eq!(sketch.p99(), Some(known), "periods apart are not read");
    }
}
