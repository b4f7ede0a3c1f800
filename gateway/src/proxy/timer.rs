//! The response timer, kept per client connection and reused by its
//! requests.
//!
//! A `tokio::time::timeout` per attempt registers a new timer with tokio's
//! timer wheel and removes it again when the response comes: two trips to
//! the wheel per request. A connection's requests (one at a time on HTTP/1)
//! instead reset the timer the previous one left behind, which for a
//! deadline later than the old one is one atomic update. A timer left
//! registered after its request may fire later with no one waiting; that
//! wakes the connection once, to no effect.

use std::pin::Pin;
use std::sync::Mutex;

use tokio::time::{Instant, Sleep};

/// A connection's idle response timer, if a request left one.
#[derive(Debug, Default)]
pub struct ResponseTimer {
    idle: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ResponseTimer {
    /// A timer that fires at `deadline`: the idle one reset, or a new one
    /// (the first request, or one running beside another on HTTP/2).
    pub fn start(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let idle = self
            .idle
            .lock()
            .expect("response timer lock poisoned")
            .take();
        match idle {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Hand the timer back for the connection's next request, moved on to
    /// `not_before` if it was set earlier (a hedge time, tens of
    /// milliseconds away): left there, it would fire on the idle connection
    /// and wake it for nothing. Moving a timer later is one atomic update.
    pub fn finish(&self, mut sleep: Pin<Box<Sleep>>, not_before: Instant) {
        if sleep.deadline() < not_before {
            sleep.as_mut().reset(not_before);
        }
        let mut idle = self.idle.lock().expect("response timer lock poisoned");
        if idle.is_none() {
            *idle = Some(sleep);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_fires_at_its_new_deadline() {
        let timer = ResponseTimer::default();
        let first = timer.start(Instant::now() + Duration::from_secs(1));
        timer.finish(first, Instant::now());
        let mut second = timer.start(Instant::now() + Duration::from_secs(5));
        assert_eq!(second.deadline(), Instant::now() + Duration::from_secs(5));
        let start = Instant::now();
        second.as_mut().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        timer.finish(second, Instant::now());
        // Elapsed, then reset to an earlier deadline than it last had.
        let third = timer.start(Instant::now() + Duration::from_millis(10));
        let start = Instant::now();
        third.await;
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_handed_back_early_is_moved_to_the_later_deadline() {
        let timer = ResponseTimer::default();
        let hedge_time = timer.start(Instant::now() + Duration::from_millis(10));
        let deadline = Instant::now() + Duration::from_secs(30);
        timer.finish(hedge_time, deadline);
        let idle = timer
            .idle
            .lock()
            .unwrap()
            .take()
            .expect("kept for the next request");
        assert_eq!(idle.deadline(), deadline);
    }
}
