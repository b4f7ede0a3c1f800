//! Peak-EWMA latency, as Finagle and Linkerd define it: a latency above the
//! current estimate replaces it at once (the "peak"), lower ones are blended
//! in with a weight that decays with the time since the last observation
//! (time constant `DECAY`). An instance nobody has measured yet is assumed
//! to cost `DEFAULT_RTT`, so a new instance is tried but not flooded.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time constant of the exponential decay.
pub const DECAY: Duration = Duration::from_secs(10);
/// Cost assumed for an instance with no observation yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

#[derive(Debug)]
pub struct PeakEwma {
    /// (estimate in nanoseconds, time of the last update)
    state: Mutex<(f64, Instant)>,
}

impl PeakEwma {
    pub fn new(now: Instant) -> Self {
        PeakEwma {
            state: Mutex::new((DEFAULT_RTT.as_nanos() as f64, now)),
        }
    }

    /// Fold in one observed round-trip time.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut state = self.state.lock().expect("ewma lock poisoned");
        let (estimate, last) = *state;
        let next = if rtt > estimate {
            rtt
        } else {
            let w = decay_weight(now.saturating_duration_since(last));
            estimate * w + rtt * (1.0 - w)
        };
        *state = (next, now.max(last));
    }

    /// The current estimate in nanoseconds.
    pub fn get_nanos(&self) -> f64 {
        self.state.lock().expect("ewma lock poisoned").0
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
        assert_eq!(e.get_nanos(), DEFAULT_RTT.as_nanos() as f64);
        e.observe(Duration::from_millis(200), t0);
        assert_eq!(e.get_nanos(), 200e6);
    }

    #[test]
    fn lower_latencies_pull_it_down_faster_the_longer_it_has_been() {
        let t0 = Instant::now();
        let soon = PeakEwma::new(t0);
        soon.observe(Duration::from_millis(100), t0);
        soon.observe(Duration::from_millis(10), t0 + Duration::from_millis(100));
        let late = PeakEwma::new(t0);
        late.observe(Duration::from_millis(100), t0);
        late.observe(Duration::from_millis(10), t0 + Duration::from_secs(10));
        // After one time constant the old estimate keeps e^-1 of its weight.
        let expected_late = 100e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!(
            (late.get_nanos() - expected_late).abs() < 1e3,
            "{}",
            late.get_nanos()
        );
        assert!(soon.get_nanos() > late.get_nanos());
        assert!(soon.get_nanos() < 100e6);
    }
}
