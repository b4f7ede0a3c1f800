//! Weighted round-robin, the policy of the source notes. The order is nginx's
//! "smooth" weighted round-robin (weights 5,1,1 give a a b a c a a, not
//! a a a a a b c), computed once per table snapshot; the request path only
//! bumps an atomic cursor, which the route keeps across snapshots. Ejected or already-tried backends are skipped, and a
//! backend in slow start is skipped with probability 1 − warmth.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use super::{Eligible, PickContext};
use crate::backend::Backend;

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<usize>,
    /// Shared with the snapshots before and after this one (see
    /// [`Balancer::new`](super::Balancer::new)).
    cursor: Arc<AtomicUsize>,
}

impl RoundRobin {
    pub fn new(backends: &[Arc<Backend>], cursor: Arc<AtomicUsize>) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.instance.weight.max(1)).collect();
        RoundRobin {
            schedule: smooth_schedule(&weights),
            cursor,
        }
    }

    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &Eligible,
        ctx: &PickContext,
    ) -> Option<usize> {
        if self.schedule.is_empty() {
            return eligible.first();
        }
        let mut rng = None;
        for _ in 0..self.schedule.len() {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
            let index = self.schedule[slot];
            if !eligible.contains(index) {
                continue;
            }
            let warmth = backends[index].state.warmth(ctx.now, ctx.slow_start);
            if warmth < 1.0 && rng.get_or_insert_with(rand::rng).random::<f64>() > warmth {
                continue;
            }
            return Some(index);
        }
        // Every eligible backend is cold and lost its draws: take the first.
        eligible.first()
    }
}

/// nginx's smooth weighted round-robin over one full cycle (length = Σ w / gcd).
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| (w / divisor) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .expect("non-empty");
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testing::{backend, backends};
    use super::*;

    fn ctx(now: Instant) -> PickContext {
        PickContext {
            now,
            slow_start: Duration::from_secs(10),
        }
    }

    fn counts(
        rr: &RoundRobin,
        b: &[Arc<Backend>],
        tried: &[usize],
        n: usize,
        now: Instant,
    ) -> Vec<usize> {
        let eligible = Eligible::new(b, tried, now);
        let mut counts = vec![0; b.len()];
        for _ in 0..n {
            counts[rr.pick(b, &eligible, &ctx(now)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_take_turns_exactly() {
        let b = backends(3);
        let rr = RoundRobin::new(&b, Default::default());
        assert_eq!(counts(&rr, &b, &[], 300, Instant::now()), [100, 100, 100]);
    }

    #[test]
    fn weights_are_smooth_and_proportional() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 4]), [1, 0, 1]);
        let long_ago = Instant::now() - Duration::from_secs(60);
        let b = vec![backend("a", 1, long_ago), backend("b", 3, long_ago)];
        let rr = RoundRobin::new(&b, Default::default());
        assert_eq!(counts(&rr, &b, &[], 400, Instant::now()), [100, 300]);
    }

    #[test]
    fn skips_tried_and_ejected_backends() {
        let b = backends(3);
        let rr = RoundRobin::new(&b, Default::default());
        let now = Instant::now();
        assert_eq!(counts(&rr, &b, &[1], 100, now), [50, 0, 50]);
        b[2].state.health.lock().unwrap().ejected_until = Some(now + Duration::from_secs(1));
        assert_eq!(counts(&rr, &b, &[1], 10, now), [10, 0, 0]);
    }

    #[test]
    fn a_new_backend_ramps_up() {
        let now = Instant::now();
        let b = vec![
            backend("old", 1, now - Duration::from_secs(60)),
            backend("new", 1, now),
        ];
        let rr = RoundRobin::new(&b, Default::default());
        let cold = counts(&rr, &b, &[], 2000, now);
        // At 10% warmth the newcomer gets about 0.1 / 1.1 of the traffic.
        assert!((100..=300).contains(&cold[1]), "{cold:?}");
        let warm = counts(&rr, &b, &[], 2000, now + Duration::from_secs(10));
        assert_eq!(warm, [1000, 1000]);
    }
}
