//! Weighted round-robin, the policy of the source notes. The order is nginx's
//! "smooth" weighted round-robin (weights 5,1,1 give a a b a c a a, not
//! a a a a a b c), computed once per table snapshot; the request path only
//! bumps an atomic cursor, which the route keeps across snapshots. Ejected or
//! already-tried backends are skipped, and a backend in slow start is skipped
//! with probability 1 − warmth.
//!
//! Cost: a pick is O(1) (a cursor bump and the slot's eligibility). Building
//! the schedule is O(n) when every weight is equal (then it is simply
//! 0, 1, …, n−1, what the smooth algorithm gives too); otherwise nginx's
//! algorithm costs O(length × n), so above [`SMOOTH_BUDGET`] steps the
//! schedule is built by earliest-deadline-first instead (O(length × log n),
//! the same shares, interleaved almost as smoothly), and weights are scaled
//! down so the schedule has at most [`MAX_SCHEDULE`] slots.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use super::{Eligible, PickContext};
use crate::backend::Backend;

/// Most steps nginx's smooth algorithm may take to build a schedule.
pub const SMOOTH_BUDGET: usize = 1 << 22;
/// Most slots a schedule has (4 bytes each).
pub const MAX_SCHEDULE: usize = 1 << 20;

#[derive(Debug)]
pub struct RoundRobin {
    /// The service's (see [`Prepared`](super::Prepared)).
    schedule: Arc<Schedule>,
    /// Shared with the snapshots before and after this one (see
    /// [`Balancer::new`](super::Balancer::new)).
    cursor: Arc<AtomicUsize>,
}

/// The order backends take turns in, one full cycle.
#[derive(Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Equal weights: 0, 1, …, n − 1.
    Even(usize),
    Listed(Vec<u32>),
}

impl Schedule {
    pub fn of_backends(backends: &[Arc<Backend>]) -> Schedule {
        let weights: Vec<u32> = backends.iter().map(|b| b.instance.weight.max(1)).collect();
        Schedule::of(&weights)
    }

    fn of(weights: &[u32]) -> Schedule {
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Schedule::Even(weights.len());
        }
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let mut weights: Vec<u64> = weights.iter().map(|&w| (w / divisor) as u64).collect();
        let total: u64 = weights.iter().sum();
        if total as usize > MAX_SCHEDULE {
            let scale = MAX_SCHEDULE as f64 / total as f64;
            for w in &mut weights {
                *w = ((*w as f64 * scale).round() as u64).max(1);
            }
        }
        let length: u64 = weights.iter().sum();
        if (length as usize).saturating_mul(weights.len()) <= SMOOTH_BUDGET {
            Schedule::Listed(smooth_schedule(&weights))
        } else {
            Schedule::Listed(earliest_deadline_schedule(&weights))
        }
    }

    fn len(&self) -> usize {
        match self {
            Schedule::Even(n) => *n,
            Schedule::Listed(slots) => slots.len(),
        }
    }

    fn at(&self, slot: usize) -> usize {
        match self {
            Schedule::Even(_) => slot,
            Schedule::Listed(slots) => slots[slot] as usize,
        }
    }
}

impl RoundRobin {
    pub fn new(schedule: Arc<Schedule>, cursor: Arc<AtomicUsize>) -> Self {
        RoundRobin { schedule, cursor }
    }

    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &Eligible,
        ctx: &PickContext,
    ) -> Option<usize> {
        let len = self.schedule.len();
        let mut rng = None;
        let mut first_accepted = None;
        for _ in 0..len {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
            let index = self.schedule.at(slot);
            if !eligible.accepts(index) {
                continue;
            }
            first_accepted.get_or_insert(index);
            let warmth = backends[index].state.warmth(ctx.now, ctx.slow_start);
            if warmth < 1.0 && rng.get_or_insert_with(rand::rng).random::<f64>() > warmth {
                continue;
            }
            return Some(index);
        }
        // Every eligible backend is cold and lost its draws: take the first.
        // Or none was healthy: any untried one, at random (panic mode).
        first_accepted.or_else(|| {
            let list = eligible.list();
            (!list.is_empty()).then(|| list[rand::rng().random_range(0..list.len())])
        })
    }
}

/// nginx's smooth weighted round-robin over one full cycle (length = Σ w);
/// weights already divided by their gcd.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let weights: Vec<i64> = weights.iter().map(|&w| w as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], Reverse(i)))
            .expect("non-empty");
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

/// Earliest deadline first: backend i's k-th turn is due at (k + oᵢ) / wᵢ,
/// with offsets oᵢ in [0, 1) spread by the golden ratio so that backends of
/// equal weight do not all fall due at once; turns are taken in order of due
/// time (ties: lower index). Each backend gets exactly wᵢ of the Σ w slots,
/// evenly spaced over the cycle.
fn earliest_deadline_schedule(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    // f64 due times: 53 bits are ample to order at most 2^20 turns.
    let offset = |i: usize| (i as f64 * 0.618_033_988_749_894_9).fract();
    let mut due: BinaryHeap<Reverse<(Due, u32)>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Reverse((Due(offset(i) / w as f64), i as u32)))
        .collect();
    let mut turns = vec![0u64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    while schedule.len() < total as usize {
        let Reverse((_, i)) = due.pop().expect("every backend stays queued");
        schedule.push(i);
        let k = &mut turns[i as usize];
        *k += 1;
        let w = weights[i as usize];
        if *k < w {
            due.push(Reverse((
                Due((*k as f64 + offset(i as usize)) / w as f64),
                i,
            )));
        }
    }
    schedule
}

/// A due time; totally ordered (never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Due(f64);

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
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
        let rr = RoundRobin::new(Arc::new(Schedule::of_backends(&b)), Default::default());
        assert_eq!(counts(&rr, &b, &[], 300, Instant::now()), [100, 100, 100]);
    }

    #[test]
    fn weights_are_smooth_and_proportional() {
        assert_eq!(
            Schedule::of(&[5, 1, 1]),
            Schedule::Listed(vec![0, 0, 1, 0, 2, 0, 0])
        );
        assert_eq!(Schedule::of(&[2, 4]), Schedule::Listed(vec![1, 0, 1]));
        let long_ago = Instant::now() - Duration::from_secs(60);
        let b = vec![backend("a", 1, long_ago), backend("b", 3, long_ago)];
        let rr = RoundRobin::new(Arc::new(Schedule::of_backends(&b)), Default::default());
        assert_eq!(counts(&rr, &b, &[], 400, Instant::now()), [100, 300]);
    }

    #[test]
    fn skips_tried_and_ejected_backends() {
        let b = backends(3);
        let rr = RoundRobin::new(Arc::new(Schedule::of_backends(&b)), Default::default());
        let now = Instant::now();
        assert_eq!(counts(&rr, &b, &[1], 100, now), [50, 0, 50]);
        b[2].state
            .update_health(|h| h.ejected_until = Some(now + Duration::from_secs(1)));
        assert_eq!(counts(&rr, &b, &[1], 10, now), [10, 0, 0]);
    }

    #[test]
    fn a_new_backend_ramps_up() {
        let now = Instant::now();
        let b = vec![
            backend("old", 1, now - Duration::from_secs(60)),
            backend("new", 1, now),
        ];
        let rr = RoundRobin::new(Arc::new(Schedule::of_backends(&b)), Default::default());
        let cold = counts(&rr, &b, &[], 2000, now);
        // At 10% warmth the newcomer gets about 0.1 / 1.1 of the traffic.
        assert!((100..=300).contains(&cold[1]), "{cold:?}");
        let warm = counts(&rr, &b, &[], 2000, now + Duration::from_secs(10));
        assert_eq!(warm, [1000, 1000]);
    }

    #[test]
    fn when_every_backend_is_ejected_they_still_share_the_load() {
        let b = backends(3);
        let now = Instant::now();
        for backend in &b {
            backend
                .state
                .update_health(|h| h.ejected_until = Some(now + Duration::from_secs(1)));
        }
        let rr = RoundRobin::new(Arc::new(Schedule::of_backends(&b)), Default::default());
        let all = counts(&rr, &b, &[], 3000, now);
        assert!(all.iter().all(|&c| (850..=1150).contains(&c)), "{all:?}");
        let untried = counts(&rr, &b, &[0], 1000, now);
        assert!(
            untried[0] == 0 && (400..=600).contains(&untried[1]),
            "{untried:?}"
        );
    }

    #[test]
    fn large_weighted_sets_keep_exact_shares_spread_over_the_cycle() {
        let mut weights = vec![1u32; 5000];
        weights[0] = 8;
        weights[1] = 3;
        let Schedule::Listed(slots) = Schedule::of(&weights) else {
            panic!("unequal weights need a listed schedule")
        };
        assert_eq!(slots.len(), 5009);
        let turns = |i: u32| slots.iter().filter(|&&s| s == i).count();
        assert_eq!((turns(0), turns(1), turns(2), turns(4999)), (8, 3, 1, 1));
        // Backend 0's turns are spread: no gap between them beyond twice the even gap.
        let at: Vec<usize> = (0..slots.len()).filter(|&p| slots[p] == 0).collect();
        let widest = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(widest <= 2 * slots.len() / 8, "{at:?}");
    }

    #[test]
    fn huge_weight_totals_are_scaled_to_a_bounded_schedule() {
        let mut weights = vec![1000u32; 3000];
        weights[0] = 999;
        let schedule = Schedule::of(&weights);
        assert!(
            schedule.len() <= MAX_SCHEDULE + weights.len(),
            "{}",
            schedule.len()
        );
        let Schedule::Listed(slots) = schedule else {
            panic!("unequal weights need a listed schedule")
        };
        let turns = |i: u32| slots.iter().filter(|&&s| s == i).count();
        // 999 : 1000 rounds to equal shares at this scale, never to zero.
        assert!(turns(0) >= 1 && turns(0).abs_diff(turns(1)) <= 1);
    }

    #[test]
    fn equal_weights_need_no_listed_schedule() {
        assert_eq!(Schedule::of(&[4; 10_000]), Schedule::Even(10_000));
    }
}
