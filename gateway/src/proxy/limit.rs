//! Request limits: the body size (`--max-body-bytes`, checked on
//! `Content-Length` up front and while streaming, see [`body`](super::body))
//! and per-instance concurrency (`--max-inflight-per-instance`, 0 = none)
//! with a bounded FIFO queue (`--queue-per-instance`).
//!
//! A request whose instance is at its limit waits in that instance's queue,
//! at most until its response timeout; a request that finds the queue full,
//! or times out in it, gets 503 with `Retry-After: 1`. The permit is held
//! until the response body has been sent, so a streaming response counts
//! against the limit for as long as it streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::GatewayError;

/// 413 when the declared body is larger than `limit`.
pub fn check_content_length(headers: &HeaderMap, limit: u64) -> Result<(), GatewayError> {
    let declared = super::headers::get(headers, &CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > limit => Err(GatewayError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Why a request was not admitted to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    QueueFull,
    /// Waited in the queue for the whole allowed time.
    Timeout,
}

/// One instance's concurrency limit and queue.
#[derive(Debug)]
pub struct InstanceLimit {
    permits: Arc<Semaphore>,
    queued: AtomicU32,
    queue: u32,
}

impl InstanceLimit {
    pub fn new(max_in_flight: u32, queue: u32) -> Self {
        InstanceLimit {
            permits: Arc::new(Semaphore::new(max_in_flight as usize)),
            queued: AtomicU32::new(0),
            queue,
        }
    }

    /// A permit at once, or after waiting in the queue up to `wait`.
    pub async fn acquire(&self, wait: Duration) -> Result<OwnedSemaphorePermit, Rejected> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejected::QueueFull);
        }
        // Leave the queue however this ends, including when the client goes away.
        struct Leave<'a>(&'a AtomicU32);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _leave = Leave(&self.queued);
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout if it were.
            Ok(Err(_)) | Err(_) => Err(Rejected::Timeout),
        }
    }

    /// Requests waiting right now.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_over_the_limit_is_refused() {
        let mut h = HeaderMap::new();
        assert!(check_content_length(&h, 10).is_ok());
        h.insert(CONTENT_LENGTH, "10".parse().unwrap());
        assert!(check_content_length(&h, 10).is_ok());
        h.insert(CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(
            check_content_length(&h, 10),
            Err(GatewayError::BodyTooLarge { limit: 10 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_queue_in_order_and_overflow_is_refused() {
        let limit = Arc::new(InstanceLimit::new(1, 1));
        let first = limit.acquire(Duration::from_secs(1)).await.unwrap();
        let waiting = {
            let limit = limit.clone();
            tokio::spawn(async move { limit.acquire(Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(limit.queued(), 1);
        assert_eq!(
            limit.acquire(Duration::from_secs(1)).await.unwrap_err(),
            Rejected::QueueFull
        );
        drop(first);
        let second = waiting
            .await
            .unwrap()
            .expect("admitted once the first finished");
        assert_eq!(limit.queued(), 0);
        let started = tokio::time::Instant::now();
        assert_eq!(
            limit.acquire(Duration::from_millis(300)).await.unwrap_err(),
            Rejected::Timeout
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(limit.queued(), 0, "a timed-out request leaves the queue");
        drop(second);
        assert!(limit.acquire(Duration::ZERO).await.is_ok());
    }
}
