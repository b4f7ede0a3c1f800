//! Crash-loop back-off, per service. The first crashes are replaced at once;
//! from the [`THRESHOLD`]th crash in a row, replacements wait 1 s, 2 s, 4 s …
//! up to [`MAX_DELAY`]. A streak ends when a replacement has stayed up for
//! [`WINDOW`] past its delay, so a service that crashes once an hour is
//! always replaced at once. It also ends with the crash of an instance that
//! had served: seen `ready`, and up for at least [`SERVED_FOR`]. Such an
//! instance did its job for a while, and delaying its replacement only leaves the service short (what
//! the back-off is for is a program that cannot start or dies at once, which
//! would otherwise be restarted in a hot loop). Times are
//! `tokio::time::Instant`, so the rules are tested on paused time.

use std::time::Duration;

use tokio::time::Instant;

/// Crashes within the window before replacements are delayed.
pub const THRESHOLD: u32 = 3;
/// A crash more than this long (plus the last delay) after the previous one starts a new streak.
pub const WINDOW: Duration = Duration::from_secs(30);
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// An instance seen ready and up for this long before it failed has served:
/// its crash ends the streak.
pub const SERVED_FOR: Duration = Duration::from_secs(1);

/// Whether an instance that failed had served (see [`SERVED_FOR`]).
pub fn served(seen_ready: bool, up_for: Duration) -> bool {
    seen_ready && up_for >= SERVED_FOR
}

#[derive(Debug, Clone, Default)]
pub struct Backoff {
    streak: u32,
    last_crash: Option<Instant>,
    last_delay: Duration,
}

impl Backoff {
    /// Record a crash at `now` of an instance that had [`served`] or not (a
    /// start that failed has not); returns how long to wait before
    /// replacing it.
    pub fn on_crash(&mut self, now: Instant, served: bool) -> Duration {
        let continues = self
            .last_crash
            .is_some_and(|last| now.duration_since(last) < WINDOW + self.last_delay);
        // A crash after serving is replaced at once and starts no streak.
        self.streak = match (served, continues) {
            (true, _) => 0,
            (false, true) => self.streak + 1,
            (false, false) => 1,
        };
        self.last_crash = Some(now);
        self.last_delay = if self.streak < THRESHOLD {
            Duration::ZERO
        } else {
            let doublings = (self.streak - THRESHOLD).min(16);
            (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
        };
        self.last_delay
    }

    /// Crashes in the current streak.
    pub fn streak(&self) -> u32 {
        self.streak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn three_crashes_in_a_row_start_an_exponential_delay() {
        let mut b = Backoff::default();
        let mut delays = Vec::new();
        for _ in 0..9 {
            // Ready, but up for 0.9 s only: not long enough to have served.
            let delay = b.on_crash(Instant::now(), served(true, Duration::from_millis(900)));
            delays.push(delay.as_secs());
            // The replacement starts after the delay and crashes 2 s later.
            tokio::time::advance(delay + Duration::from_secs(2)).await;
        }
        assert_eq!(delays, [0, 0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.streak(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replacement_that_stays_up_ends_the_streak() {
        let mut b = Backoff::default();
        for _ in 0..4 {
            b.on_crash(Instant::now(), false);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(b.on_crash(Instant::now(), false), Duration::from_secs(4));
        // Up for the window past its 4 s delay: the next crash is a first one.
        tokio::time::advance(WINDOW + Duration::from_secs(4)).await;
        assert_eq!(b.on_crash(Instant::now(), false), Duration::ZERO);
        assert_eq!(b.streak(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn instances_that_served_are_replaced_at_once_however_often_they_crash() {
        let mut b = Backoff::default();
        let mut delays = Vec::new();
        for i in 0..20 {
            // Every instance serves 1–3 s, then dies (the source notes' experiment).
            let up_for = Duration::from_secs(1 + i % 3);
            delays.push(b.on_crash(Instant::now(), served(true, up_for)));
            tokio::time::advance(up_for).await;
        }
        assert!(delays.iter().all(|d| d.is_zero()), "{delays:?}");
        // Up long enough but never seen ready: not served.
        assert!(!served(false, Duration::from_secs(60)));
        // Two that die at once (never ready) after one that served: no delay
        // yet; a third in a row starts the back-off.
        assert_eq!(b.on_crash(Instant::now(), false), Duration::ZERO);
        assert_eq!(b.on_crash(Instant::now(), false), Duration::ZERO);
        assert_eq!(b.on_crash(Instant::now(), false), FIRST_DELAY);
    }
}
