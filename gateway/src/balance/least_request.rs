//! Power of two choices over peak-EWMA latency × (in-flight + 1) ÷ weight:
//! sample two eligible backends at random and take the cheaper. Cheap (no
//! global scan), and it avoids the herd behaviour of always picking the single
//! least-loaded backend. Slow start is probabilistic: a cold winner keeps the
//! pick with probability equal to its warmth, else the warmer one gets it.
//! A pick is O(1) while most backends are eligible (see [`two_candidates`]).
//!
//! **Where the two come from.** With up to [`WINDOW`] backends, from all of
//! them. With more, a route's picks draw from a window of [`WINDOW`]
//! consecutive backends that moves on by one each pick (the route's
//! rotation, as round-robin's cursor): every backend spends the same number
//! of picks in the window, so each is a candidate as often as with draws
//! from the whole set, and the comparison between two random candidates,
//! which is what keeps load off a slow or busy instance, is the same. What
//! changes is the memory a pick reads: with thousands of instances a
//! candidate drawn from anywhere has its entry and state (about ten cache
//! lines, on pages of their own) cold, while a window's were read a few
//! picks before. Traffic in flight is not narrowed to the window: requests
//! started over the last k picks are spread over k + [`WINDOW`] instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use super::{Eligible, PickContext};
use crate::backend::Backend;
use crate::ewma::DEFAULT_RTT;

/// The latency P2C assumes for each of two candidates. An instance not
/// measured yet is assumed as fast as the one it is compared with, so that
/// in-flight counts decide and a new instance gets its first requests at once;
/// with neither measured, both cost [`DEFAULT_RTT`].
fn latencies(a: &Backend, b: &Backend, now: std::time::Instant) -> (f64, f64) {
    let (ma, mb) = (
        a.state.rtt.measured_nanos(now),
        b.state.rtt.measured_nanos(now),
    );
    let default = DEFAULT_RTT.as_nanos() as f64;
    (ma.or(mb).unwrap_or(default), mb.or(ma).unwrap_or(default))
}

/// peak-EWMA × (in-flight + 1) ÷ weight; lower is better.
pub fn cost(backend: &Backend, latency_nanos: f64) -> f64 {
    latency_nanos * (backend.state.in_flight() as f64 + 1.0) / backend.weight as f64
}

/// How many random draws a pick spends looking for an eligible candidate
/// before it lists the eligible set instead.
const DRAWS: usize = 8;

/// How many consecutive backends a pick draws its candidates from when a
/// route has more (see the module's doc).
pub const WINDOW: usize = 64;

/// Where a pick draws its two candidates from.
#[derive(Debug, Clone, Copy)]
pub enum Draw<'a> {
    /// Anywhere among the backends.
    Anywhere,
    /// The [`WINDOW`] backends from this rotation's position on, which the
    /// pick moves on by one (everywhere when there are no more than that).
    Window(&'a AtomicUsize),
}

pub fn pick(
    backends: &[Arc<Backend>],
    eligible: &Eligible,
    ctx: &PickContext,
    draw: Draw<'_>,
) -> Option<usize> {
    let mut rng = rand::rng();
    let (a, b) = match two_candidates(eligible, &mut rng, draw) {
        Some(pair) => pair,
        None => {
            // Most backends are tried or ejected: draw from the listed set.
            let list = eligible.list();
            match list.len() {
                0 => return None,
                1 => return Some(list[0]),
                n => {
                    let first = rng.random_range(0..n);
                    let second = (first + rng.random_range(1..n)) % n;
                    (list[first], list[second])
                }
            }
        }
    };
    let (la, lb) = latencies(&backends[a], &backends[b], ctx.now);
    let (winner, other) = if cost(&backends[b], lb) < cost(&backends[a], la) {
        (b, a)
    } else {
        (a, b)
    };
    // Slow start: a cold winner keeps the pick with probability = its warmth.
    let warmth = |i: usize| backends[i].state.warmth(ctx.now, ctx.slow_start);
    let w = warmth(winner);
    if w < 1.0 && warmth(other) > w && rng.random::<f64>() > w {
        Some(other)
    } else {
        Some(winner)
    }
}

/// Two distinct backends drawn uniformly among those [`Eligible::accepts`]
/// within `draw`'s span (rejection sampling: the same distribution as
/// drawing from the listed set, in O(1) while most backends are eligible).
/// `None` when the draws keep failing, or when fewer than two backends
/// could be eligible.
fn two_candidates(
    eligible: &Eligible,
    rng: &mut impl Rng,
    draw: Draw<'_>,
) -> Option<(usize, usize)> {
    let n = eligible.backends();
    if n < 2 {
        return None;
    }
    let (start, span) = match draw {
        Draw::Window(rotation) if n > WINDOW => {
            (rotation.fetch_add(1, Ordering::Relaxed) % n, WINDOW)
        }
        _ => (0, n),
    };
    let at = |offset: usize| (start + offset) % n;
    let first = (0..DRAWS)
        .map(|_| rng.random_range(0..span))
        .find(|&o| eligible.accepts(at(o)))?;
    let second = (0..DRAWS)
        .map(|_| (first + rng.random_range(1..span)) % span)
        .find(|&o| eligible.accepts(at(o)))?;
    Some((at(first), at(second)))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testing::{backend, backends};
    use super::*;
    use crate::backend::Backend;

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
            assert_eq!(pick(&b, &eligible, &ctx(), Draw::Anywhere), Some(1));
        }
    }

    #[test]
    fn prefers_lower_latency() {
        let b = backends(2);
        let now = Instant::now();
        b[0].state.rtt.observe(Duration::from_millis(5), now);
        b[1].state.rtt.observe(Duration::from_millis(500), now);
        let eligible = Eligible::new(&b, &[], now);
        for _ in 0..100 {
            assert_eq!(pick(&b, &eligible, &ctx(), Draw::Anywhere), Some(0));
        }
    }

    #[test]
    fn an_unmeasured_instance_gets_requests_at_once() {
        // Sequential traffic (nothing in flight): a measured fast instance must
        // not starve a newcomer that has the default cost.
        let b = backends(2);
        let now = Instant::now();
        b[0].state.rtt.observe(Duration::from_millis(1), now);
        let eligible = Eligible::new(&b, &[], now);
        let newcomer = (0..1000)
            .filter(|_| pick(&b, &eligible, &ctx(), Draw::Anywhere) == Some(1))
            .count();
        assert!((400..=600).contains(&newcomer), "{newcomer} of 1000");
    }

    #[test]
    fn an_instance_left_alone_becomes_attractive_again() {
        let b = backends(2);
        let t0 = Instant::now();
        b[0].state.rtt.observe(Duration::from_millis(2), t0);
        b[1].state.rtt.observe(Duration::from_millis(1), t0);
        let eligible = Eligible::new(&b, &[], t0);
        assert!(
            (0..100).all(|_| pick(&b, &eligible, &ctx(), Draw::Anywhere) == Some(1)),
            "b0 looks twice as slow"
        );
        // b1 keeps being picked and measured at 1 ms; b0's stale 2 ms decays
        // (2 ms × e^-1 ≈ 0.74 ms after 10 s) until b0 wins again and is re-measured.
        let later = t0 + Duration::from_secs(10);
        b[1].state.rtt.observe(Duration::from_millis(1), later);
        let at = PickContext {
            now: later,
            ..ctx()
        };
        assert!((0..100).all(|_| pick(&b, &eligible, &at, Draw::Anywhere) == Some(0)));
    }

    #[test]
    fn spreads_evenly_when_equal() {
        let b = backends(4);
        let eligible = Eligible::new(&b, &[], Instant::now());
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[pick(&b, &eligible, &ctx(), Draw::Anywhere).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..=1200).contains(&c)),
            "{counts:?}"
        );
    }

    /// Picks from a window over `n` backends, the rotation starting at 0.
    fn window_counts(b: &[Arc<Backend>], picks: usize) -> Vec<usize> {
        let rotation = AtomicUsize::new(0);
        let eligible = Eligible::new(b, &[], Instant::now());
        let mut counts = vec![0; b.len()];
        for _ in 0..picks {
            counts[pick(b, &eligible, &ctx(), Draw::Window(&rotation)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn candidates_come_from_the_window_which_moves_on_by_one() {
        let b = backends(1000);
        let eligible = Eligible::new(&b, &[], Instant::now());
        let rotation = AtomicUsize::new(500);
        for _ in 0..200 {
            let at = rotation.load(Ordering::Relaxed);
            let picked = pick(&b, &eligible, &ctx(), Draw::Window(&rotation)).unwrap();
            assert!(
                (at..at + WINDOW).contains(&picked),
                "{picked} outside {at}.."
            );
            assert_eq!(rotation.load(Ordering::Relaxed), at + 1);
        }
        // The window wraps around the end of the backends.
        let rotation = AtomicUsize::new(990);
        let wrapped: Vec<usize> = (0..500)
            .map(|_| {
                rotation.store(990, Ordering::Relaxed);
                pick(&b, &eligible, &ctx(), Draw::Window(&rotation)).unwrap()
            })
            .collect();
        let window = |i: usize| (990..1000).contains(&i) || i < 990 + WINDOW - 1000;
        assert!(wrapped.iter().all(|&i| window(i)), "{wrapped:?}");
        assert!(wrapped.iter().any(|&i| i < 10), "never past the end");
    }

    #[test]
    fn with_no_more_backends_than_the_window_a_pick_draws_from_all_of_them() {
        let b = backends(WINDOW);
        let eligible = Eligible::new(&b, &[], Instant::now());
        let rotation = AtomicUsize::new(0);
        let mut seen = vec![false; WINDOW];
        for _ in 0..WINDOW * 100 {
            seen[pick(&b, &eligible, &ctx(), Draw::Window(&rotation)).unwrap()] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
        assert_eq!(rotation.load(Ordering::Relaxed), 0, "no window was used");
    }

    #[test]
    fn a_window_spreads_evenly_over_many_backends() {
        let b = backends(4 * WINDOW);
        let counts = window_counts(&b, 4 * WINDOW * 200);
        // About 200 each (each backend spends WINDOW picks of every sweep in
        // the window); 140..=260 is over four standard deviations.
        assert!(
            counts.iter().all(|&c| (140..=260).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_window_keeps_load_off_a_slow_or_busy_instance() {
        let b = backends(4 * WINDOW);
        let now = Instant::now();
        for backend in &b {
            backend.state.rtt.observe(Duration::from_millis(5), now);
        }
        b[7].state.rtt.observe(Duration::from_millis(500), now);
        for _ in 0..5 {
            b[100].state.stats.start();
        }
        let counts = window_counts(&b, 4 * WINDOW * 50);
        assert_eq!((counts[7], counts[100]), (0, 0), "{counts:?}");
        // The others share what those two lose.
        assert!(counts[8] > 0 && counts[99] > 0 && counts[101] > 0);
    }

    #[test]
    fn a_cold_backend_gets_a_small_share_until_warm() {
        let now = Instant::now();
        let b = vec![
            backend("warm", 1, now - Duration::from_secs(60)),
            backend("cold", 1, now),
        ];
        let eligible = Eligible::new(&b, &[], now);
        let cold = (0..4000)
            .filter(|_| pick(&b, &eligible, &ctx(), Draw::Anywhere) == Some(1))
            .count();
        // Wins half the comparisons, keeps 10% of those: about 5%.
        assert!((80..=350).contains(&cold), "{cold} of 4000");
        let later = PickContext {
            now: now + Duration::from_secs(10),
            ..ctx()
        };
        let warm = (0..4000)
            .filter(|_| pick(&b, &eligible, &later, Draw::Anywhere) == Some(1))
            .count();
        assert!((1700..=2300).contains(&warm), "{warm} of 4000");
    }
}
