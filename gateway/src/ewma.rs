//! Peak-EWMA latency, as Finagle and Linkerd define it: a latency above the
//! current estimate replaces it at once (the "peak"), lower ones are blended
//! in with a weight that decays with the time since the last observation
//! (time constant `DECAY`). The first observation replaces the default
//! outright; until then [`PeakEwma::measured_nanos`] is `None` and the
//! balancer decides what an unmeasured instance costs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time constant of the exponential decay.
pub const DECAY: Duration = Duration::from_secs(10);
/// Cost assumed for an instance with no observation yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

#[derive(Debug)]
pub struct PeakEwma {
    /// (estimate in nanoseconds, time of the last update); the estimate is
    /// [`UNMEASURED`] until the first observation. Two fields, not three, so
    /// that the lock and its data take 32 bytes: `BackendState` keeps them on
    /// the cache line a pick reads.
    state: Mutex<(f64, Instant)>,
}

/// The estimate before the first observation.
const UNMEASURED: f64 = f64::NAN;

impl PeakEwma {
    pub fn new(now: Instant) -> Self {
        PeakEwma {
            state: Mutex::new((UNMEASURED, now)),
        }
    }

    /// Fold in one observed round-trip time.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut state = self.state.lock().expect("ewma lock poisoned");
        let (estimate, last) = *state;
        let next = if estimate.is_nan() || rtt > estimate {
            rtt
        } else {
            let w = decay_weight(now.saturating_duration_since(last));
            estimate * w + rtt * (1.0 - w)
        };
        *state = (next, now.max(last));
    }

    /// The estimate at `now` in nanoseconds ([`DEFAULT_RTT`] until the first observation).
    pub fn get_nanos(&self, now: Instant) -> f64 {
        self.measured_nanos(now)
            .unwrap_or(DEFAULT_RTT.as_nanos() as f64)
    }

    /// The estimate at `now` in nanoseconds, or `None` before the first
    /// observation. As in Finagle, reading decays the estimate toward zero
    /// with the time since the last observation, so an instance that stopped
    /// being picked because it looked slow becomes attractive again and gets
    /// re-measured, instead of being starved on a stale estimate.
    pub fn measured_nanos(&self, now: Instant) -> Option<f64> {
        let (estimate, last) = *self.state.lock().expect("ewma lock poisoned");
        (!estimate.is_nan()).then(|| estimate * decay_weight(now.saturating_duration_since(last)))
    }
}

/// Weight kept by the old estimate after `elapsed`: e^(-elapsed/DECAY).
fn decay_weight(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_default_and_jumps_to_peaks() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        assert_eq!(e.get_nanos(t0), DEFAULT_RTT.as_nanos() as f64);
        assert_eq!(e.measured_nanos(t0), None);
        e.observe(Duration::from_millis(200), t0);
        assert_eq!(e.measured_nanos(t0), Some(200e6));
        e.observe(Duration::from_millis(300), t0);
        assert_eq!(
            e.measured_nanos(t0),
            Some(300e6),
            "a peak replaces the estimate"
        );
        // The first observation replaces the default even when lower.
        let fast = PeakEwma::new(t0);
        fast.observe(Duration::from_millis(1), t0);
        assert_eq!(fast.measured_nanos(t0), Some(1e6));
    }

    #[test]
    fn lower_latencies_pull_it_down_faster_the_longer_it_has_been() {
        let t0 = Instant::now();
        let (soon_at, late_at) = (
            t0 + Duration::from_millis(100),
            t0 + Duration::from_secs(10),
        );
        let soon = PeakEwma::new(t0);
        soon.observe(Duration::from_millis(100), t0);
        soon.observe(Duration::from_millis(10), soon_at);
        let late = PeakEwma::new(t0);
        late.observe(Duration::from_millis(100), t0);
        late.observe(Duration::from_millis(10), late_at);
        // After one time constant the old estimate keeps e^-1 of its weight.
        let expected_late = 100e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!(
            (late.get_nanos(late_at) - expected_late).abs() < 1e3,
            "{}",
            late.get_nanos(late_at)
        );
        assert!(soon.get_nanos(soon_at) > late.get_nanos(late_at));
        assert!(soon.get_nanos(soon_at) < 100e6);
    }

    #[test]
    fn an_estimate_nobody_refreshes_decays_toward_zero() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(Duration::from_millis(100), t0);
        let later = e.get_nanos(t0 + DECAY);
        assert!((later - 100e6 * (-1f64).exp()).abs() < 1e3, "{later}");
    }
}
