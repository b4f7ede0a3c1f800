//! Power of two choices over peak-EWMA latency × (in-flight + 1), divided by
//! the slow-start warmth: sample two eligible backends at random and take the
//! cheaper. Cheap (no global scan), and it avoids the herd behaviour of
//! always picking the single least-loaded backend.

use std::sync::Arc;

use rand::Rng;

use super::{Eligible, PickContext};
use crate::backend::Backend;

/// The cost P2C compares; lower is better.
pub fn cost(backend: &Backend, ctx: &PickContext) -> f64 {
    let state = &backend.state;
    let load = state.rtt.get_nanos() * (state.in_flight() as f64 + 1.0);
    load / (state.warmth(ctx.now, ctx.slow_start) * backend.instance.weight as f64)
}

pub fn pick(backends: &[Arc<Backend>], eligible: &Eligible, ctx: &PickContext) -> Option<usize> {
    let candidates = eligible.indices();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (candidates[a], candidates[b]);
            Some(if cost(&backends[b], ctx) < cost(&backends[a], ctx) {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testing::{backend, backends};
    use super::*;

    fn ctx() -> PickContext {
        PickContext {
            now: Instant::now(),
            slow_start: Duration::from_secs(10),
        }
    }

    #[test]
    fn prefers_fewer_requests_in_flight() {
        let b = backends(2);
        for _ in 0..5 {
            b[0].state.stats.start();
        }
        let eligible = Eligible::new(&b, &[], Instant::now());
        for _ in 0..100 {
            assert_eq!(pick(&b, &eligible, &ctx()), Some(1));
        }
    }

    #[test]
    fn prefers_lower_latency() {
        let b = backends(2);
        let now = Instant::now();
        b[1].state.rtt.observe(Duration::from_millis(500), now);
        let eligible = Eligible::new(&b, &[], now);
        for _ in 0..100 {
            assert_eq!(pick(&b, &eligible, &ctx()), Some(0));
        }
    }

    #[test]
    fn spreads_evenly_when_equal() {
        let b = backends(4);
        let eligible = Eligible::new(&b, &[], Instant::now());
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[pick(&b, &eligible, &ctx()).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..=1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_cold_backend_costs_more_until_warm() {
        let now = Instant::now();
        let warm = backend("warm", 1, now - Duration::from_secs(60));
        let cold = backend("cold", 1, now);
        let c = ctx();
        assert!(cost(&cold, &c) > 5.0 * cost(&warm, &c));
        let later = PickContext {
            now: now + Duration::from_secs(10),
            ..c
        };
        assert_eq!(cost(&cold, &later), cost(&warm, &later));
    }
}
