//! The request body on its way to an instance: streamed, never buffered,
//! limited to `--max-body-bytes`, and reclaimable for a retry as long as no
//! attempt has started reading it.
//!
//! [`Reclaimable`] holds the client's body in a take-once slot. Each attempt
//! gets an [`AttemptBody`] pointing at the slot; the first poll takes the body
//! out. When an attempt fails before its body was polled (connection refused,
//! a pooled connection found closed), the body is still in the slot and the
//! next attempt can send it: that is what makes retrying a POST safe. Once
//! taken it can never be sent again, so a second attempt gets `None`. An
//! empty body needs no slot and can be sent any number of times.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Boxed error, as hyper wants them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an attempt's body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("request body already sent on an earlier attempt")]
    AlreadyUsed,
    #[error("reading the client's request body failed: {0}")]
    Client(#[source] BoxError),
}

type Slot<B> = Arc<Mutex<Option<B>>>;

/// The client's request body, shared by the attempts of one request.
#[derive(Debug)]
pub struct Reclaimable<B> {
    /// `None` for an empty body.
    slot: Option<Slot<B>>,
    hint: SizeHint,
    limit: u64,
}

impl<B: Body> Reclaimable<B> {
    /// Hold `body`; attempts will refuse to send more than `limit` bytes of it.
    pub fn new(body: B, limit: u64) -> Self {
        let hint = body.size_hint();
        let slot = (!body.is_end_stream()).then(|| Arc::new(Mutex::new(Some(body))));
        Reclaimable { slot, hint, limit }
    }

    /// The body for the next attempt, or `None` when an earlier attempt
    /// already started sending it (it cannot be sent twice).
    pub fn attempt(&self) -> Option<AttemptBody<B>> {
        let Some(slot) = &self.slot else {
            return Some(AttemptBody::empty());
        };
        if slot.lock().expect("body slot poisoned").is_none() {
            return None;
        }
        Some(AttemptBody {
            state: State::Waiting(slot.clone()),
            hint: self.hint,
            limit: self.limit,
            sent: 0,
        })
    }

    /// Whether the body is empty: any number of attempts can send it at once
    /// (a hedge needs that).
    pub fn is_empty(&self) -> bool {
        self.slot.is_none()
    }

    /// Whether another attempt could still send the body.
    pub fn is_available(&self) -> bool {
        self.slot
            .as_ref()
            .is_none_or(|slot| slot.lock().expect("body slot poisoned").is_some())
    }
}

enum State<B> {
    Empty,
    /// Not polled yet: the body is still in the shared slot.
    Waiting(Slot<B>),
    Streaming(B),
    Done,
}

/// One attempt's request body.
pub struct AttemptBody<B> {
    state: State<B>,
    hint: SizeHint,
    limit: u64,
    sent: u64,
}

impl<B> AttemptBody<B> {
    /// A body with nothing in it (health checks, bodiless requests).
    pub fn empty() -> Self {
        AttemptBody {
            state: State::Empty,
            hint: SizeHint::with_exact(0),
            limit: 0,
            sent: 0,
        }
    }
}

impl<B> Body for AttemptBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Empty | State::Done => return Poll::Ready(None),
                State::Waiting(slot) => {
                    let taken = slot.lock().expect("body slot poisoned").take();
                    match taken {
                        Some(body) => this.state = State::Streaming(body),
                        None => {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(BodyError::AlreadyUsed)));
                        }
                    }
                }
                State::Streaming(body) => {
                    return match Pin::new(body).poll_frame(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(None) => {
                            this.state = State::Done;
                            Poll::Ready(None)
                        }
                        Poll::Ready(Some(Err(e))) => {
                            this.state = State::Done;
                            Poll::Ready(Some(Err(BodyError::Client(e.into()))))
                        }
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(data) = frame.data_ref() {
                                this.sent += data.len() as u64;
                                if this.sent > this.limit {
                                    this.state = State::Done;
                                    return Poll::Ready(Some(Err(BodyError::TooLarge {
                                        limit: this.limit,
                                    })));
                                }
                            }
                            Poll::Ready(Some(Ok(frame)))
                        }
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Empty | State::Done => true,
            State::Waiting(_) => false,
            State::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Empty | State::Done => SizeHint::with_exact(0),
            State::Waiting(_) => self.hint,
            State::Streaming(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn full(s: &'static str) -> Full<Bytes> {
        Full::new(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn a_body_never_polled_can_be_sent_by_the_next_attempt() {
        let body = Reclaimable::new(full("hello"), 100);
        let first = body.attempt().unwrap();
        assert_eq!(first.size_hint().exact(), Some(5));
        drop(first); // e.g. connection refused: never polled
        assert!(body.is_available());
        let second = body.attempt().unwrap();
        let bytes = second.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
    }

    #[tokio::test]
    async fn a_polled_body_is_not_sent_twice() {
        let body = Reclaimable::new(full("hello"), 100);
        let mut first = body.attempt().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        drop(first);
        assert!(!body.is_available());
        assert!(body.attempt().is_none());
    }

    #[tokio::test]
    async fn two_live_attempts_never_both_send() {
        let body = Reclaimable::new(full("hello"), 100);
        let a = body.attempt().unwrap();
        let b = body.attempt().unwrap();
        assert_eq!(a.collect().await.unwrap().to_bytes(), "hello");
        assert!(matches!(b.collect().await, Err(BodyError::AlreadyUsed)));
    }

    #[tokio::test]
    async fn an_empty_body_can_always_be_sent_again() {
        let body = Reclaimable::new(Full::new(Bytes::new()), 100);
        for _ in 0..3 {
            let attempt = body.attempt().unwrap();
            assert!(attempt.is_end_stream());
            assert!(attempt.collect().await.unwrap().to_bytes().is_empty());
        }
    }

    #[tokio::test]
    async fn the_limit_is_enforced_while_streaming() {
        let chunks = futures::stream::iter(
            ["1234", "5678", "9"].map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c)))),
        );
        let body = Reclaimable::new(StreamBody::new(chunks), 8);
        let attempt = body.attempt().unwrap();
        assert!(attempt.size_hint().exact().is_none());
        let err = attempt.collect().await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 8 }), "{err}");
    }
}
