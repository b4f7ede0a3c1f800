//! The request body on its way to an instance: streamed, never buffered,
//! limited to `--max-body-bytes`, and reclaimable for a retry as long as no
//! attempt has started reading it.
//!
//! [`Reclaimable`] holds the client's body in a shared slot. Each attempt
//! gets an [`AttemptBody`] pointing at the slot; the first poll takes the body
//! out. When an attempt fails before its body was polled (connection refused,
//! a pooled connection found closed), the body is still in the slot and the
//! next attempt can send it: that is what makes retrying a POST safe. Once
//! taken it can never be sent again, so a second attempt gets `None`. An
//! empty body needs no slot and can be sent any number of times.
//!
//! **Replay** ([`Reclaimable::replayable`], h2c routes only): an HTTP/2
//! client starts sending a body as soon as its stream opens, so by the time
//! an instance refuses the stream unprocessed (`REFUSED_STREAM`, or a
//! `GOAWAY` below its id) the body has been taken. With replay on, the
//! frames an attempt takes are also kept (the `Bytes` are shared, not
//! copied) up to a limit, and the client's body goes back to the slot when
//! the attempt ends: the next attempt sends the kept frames again, then
//! goes on with the client's body. The body still streams: nothing waits
//! for it to be complete. Past the limit the kept frames are dropped and
//! the body can no longer be sent again, as without replay. Whether a
//! failed attempt may be retried at all is [`retry`](super::retry)'s call,
//! not this module's.
//!
//! An attempt on an HTTP/2 connection is streamed by hyper's own send task
//! once the body is not complete at once, so the attempt's failure (a
//! reset, say) can reach the proxy before that task has dropped the body
//! and handed it back. A failed attempt therefore waits, briefly, for the
//! hand-back ([`Reclaimable::handed_back`]) before the retry decision looks
//! at [`Reclaimable::is_available`].

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// How long a failed attempt waits for its body to be handed back
/// ([`Reclaimable::handed_back`]): hyper's send task drops it within a
/// scheduler turn or two of the failure.
pub const HAND_BACK_WAIT: Duration = Duration::from_millis(100);

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

/// The client's body and what attempts took of it, shared by the attempts.
struct Shared<B> {
    /// The client's body, while no attempt holds it (and it has not ended).
    source: Option<B>,
    /// Some attempt took `source` at least once.
    taken: bool,
    /// `source` was read to its end (by an attempt that kept its frames).
    ended: bool,
    /// With replay on: the frames taken so far; `None` when replay is off,
    /// or the frames went past the limit.
    kept: Option<Kept>,
}

/// Frames taken from the client's body, to send again.
#[derive(Default)]
struct Kept {
    frames: Vec<KeptFrame>,
    bytes: u64,
    limit: u64,
}

#[derive(Clone)]
enum KeptFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl KeptFrame {
    fn to_frame(&self) -> Frame<Bytes> {
        match self {
            KeptFrame::Data(data) => Frame::data(data.clone()),
            KeptFrame::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

impl<B> Shared<B> {
    /// Whether an attempt is streaming the client's body and will hand it
    /// back when it ends (replay on, the body neither ended nor past the
    /// limit).
    fn out_with_an_attempt(&self) -> bool {
        self.taken && self.source.is_none() && !self.ended && self.kept.is_some()
    }

    /// Whether a new attempt could send the whole body.
    fn is_available(&self) -> bool {
        if !self.taken {
            return self.source.is_some();
        }
        self.kept.is_some() && (self.source.is_some() || self.ended)
    }

    /// Keep `frame` if replay is on and it fits, else stop keeping.
    fn keep(&mut self, frame: &Frame<Bytes>) {
        let Some(kept) = &mut self.kept else { return };
        let copy = if let Some(data) = frame.data_ref() {
            kept.bytes += data.len() as u64;
            KeptFrame::Data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            KeptFrame::Trailers(trailers.clone())
        } else {
            return;
        };
        if kept.bytes > kept.limit {
            self.kept = None;
        } else {
            kept.frames.push(copy);
        }
    }
}

/// The shared state, and the signal that an attempt handed the body back.
struct SlotCell<B> {
    shared: Mutex<Shared<B>>,
    handed_back: Notify,
}

impl<B> SlotCell<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<B>> {
        self.shared.lock().expect("body slot poisoned")
    }
}

type Slot<B> = Arc<SlotCell<B>>;

/// The client's request body, shared by the attempts of one request.
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
        let slot = (!body.is_end_stream()).then(|| {
            Arc::new(SlotCell {
                shared: Mutex::new(Shared {
                    source: Some(body),
                    taken: false,
                    ended: false,
                    kept: None,
                }),
                handed_back: Notify::new(),
            })
        });
        Reclaimable { slot, hint, limit }
    }
}

impl<B> Reclaimable<B> {
    /// Keep up to `limit` bytes of what attempts send, so that a later
    /// attempt can send the body again (see the module doc). Only before
    /// the first attempt.
    pub fn replayable(&mut self, limit: u64) {
        if let Some(slot) = &self.slot {
            let mut shared = slot.lock();
            if !shared.taken {
                shared.kept = Some(Kept {
                    limit,
                    ..Kept::default()
                });
            }
        }
    }

    /// The body for the next attempt, or `None` when an earlier attempt
    /// already started sending it and it cannot be sent again.
    pub fn attempt(&self) -> Option<AttemptBody<B>> {
        let Some(slot) = &self.slot else {
            return Some(AttemptBody::empty());
        };
        if !slot.lock().is_available() {
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
            .is_none_or(|slot| slot.lock().is_available())
    }

    /// After a failed attempt: wait, at most `within`, until no attempt is
    /// streaming the body any more, so that one ending in another task
    /// (hyper's HTTP/2 send task) has handed it back before a retry is
    /// decided. Immediate when nothing is out (replay off, the body sent
    /// whole, or never taken).
    pub async fn handed_back(&self, within: Duration) {
        let Some(slot) = &self.slot else { return };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = slot.handed_back.notified();
            tokio::pin!(notified);
            // Registered before the check: a hand-back in between still wakes it.
            notified.as_mut().enable();
            if !slot.lock().out_with_an_attempt() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

enum State<B> {
    Empty,
    /// Not polled yet: the body is still in the shared slot.
    Waiting(Slot<B>),
    /// Sending: first the frames earlier attempts took (`replayed` of them
    /// so far), then the client's body, if this attempt holds it. `slot`
    /// only with replay on: without it, the body is polled with no lock.
    Streaming {
        slot: Option<Slot<B>>,
        replayed: usize,
        source: Option<B>,
    },
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

    /// Stop: the client's body goes back to the slot for another attempt
    /// when replay kept what this one sent.
    fn finish(&mut self) {
        if let State::Streaming {
            slot: Some(slot),
            source: Some(source),
            ..
        } = std::mem::replace(&mut self.state, State::Done)
        {
            let mut shared = slot.lock();
            if shared.kept.is_some() {
                shared.source = Some(source);
                drop(shared);
                slot.handed_back.notify_waiters();
            }
        }
    }
}

impl<B> Drop for AttemptBody<B> {
    /// An attempt that ends while it holds the client's body hands it back
    /// when replay is on.
    fn drop(&mut self) {
        if let State::Streaming {
            slot: Some(_),
            source: Some(_),
            ..
        } = self.state
        {
            self.finish();
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
        let frame = loop {
            match &mut this.state {
                State::Empty | State::Done => return Poll::Ready(None),
                State::Waiting(slot) => {
                    let mut shared = slot.lock();
                    if !shared.is_available() {
                        drop(shared);
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(BodyError::AlreadyUsed)));
                    }
                    shared.taken = true;
                    let source = shared.source.take();
                    let replay = shared.kept.is_some();
                    drop(shared);
                    let slot = replay.then(|| slot.clone());
                    this.state = State::Streaming {
                        slot,
                        replayed: 0,
                        source,
                    };
                }
                State::Streaming {
                    slot,
                    replayed,
                    source,
                } => {
                    if let Some(slot) = slot {
                        let shared = slot.lock();
                        if let Some(kept) = &shared.kept
                            && let Some(frame) = kept.frames.get(*replayed)
                        {
                            *replayed += 1;
                            break frame.to_frame();
                        }
                    }
                    let Some(body) = source else {
                        // Every frame was replayed and the body had ended.
                        this.state = State::Done;
                        return Poll::Ready(None);
                    };
                    match Pin::new(body).poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(None) => {
                            if let Some(slot) = slot {
                                slot.lock().ended = true;
                            }
                            *source = None;
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Poll::Ready(Some(Err(e))) => {
                            if let Some(slot) = slot {
                                // Broken: no attempt can send it whole again.
                                slot.lock().kept = None;
                            }
                            *source = None;
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(BodyError::Client(e.into()))));
                        }
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(slot) = slot {
                                let mut shared = slot.lock();
                                shared.keep(&frame);
                                if let Some(kept) = &shared.kept {
                                    *replayed = kept.frames.len();
                                }
                            }
                            break frame;
                        }
                    }
                }
            }
        };
        if let Some(data) = frame.data_ref() {
            this.sent += data.len() as u64;
            if this.sent > this.limit {
                this.finish();
                return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Empty | State::Done => true,
            State::Waiting(_) => false,
            State::Streaming { source, .. } => source.as_ref().is_some_and(B::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Empty | State::Done => SizeHint::with_exact(0),
            State::Waiting(_) | State::Streaming { source: None, .. } => self.hint,
            State::Streaming {
                source: Some(body), ..
            } => body.size_hint(),
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

    fn chunks(
        parts: &'static [&'static str],
    ) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        StreamBody::new(futures::stream::iter(parts.iter().map(|c| {
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(c.as_bytes())))
        })))
    }

    #[tokio::test]
    async fn with_replay_a_body_taken_by_a_failed_attempt_is_sent_again_whole() {
        let mut body = Reclaimable::new(chunks(&["ab", "cd", "ef"]), 100);
        body.replayable(1024);
        let mut first = body.attempt().unwrap();
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        // Refused after one frame: the attempt ends, the rest stays unread.
        drop(first);
        assert!(body.is_available());
        let second = body.attempt().unwrap();
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcdef");
        // Read to its end: still available, all from the kept frames.
        assert!(body.is_available());
        let third = body.attempt().unwrap();
        assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn with_replay_a_live_attempt_still_owns_the_unread_rest() {
        let mut body = Reclaimable::new(chunks(&["ab", "cd"]), 100);
        body.replayable(1024);
        let mut first = body.attempt().unwrap();
        first.frame().await.unwrap().unwrap();
        assert!(!body.is_available(), "the first attempt still streams it");
        let second = body.attempt();
        assert!(second.is_none());
        drop(first);
        assert!(body.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_for_a_body_handed_back_by_another_task() {
        let mut body = Reclaimable::new(chunks(&["ab", "cd"]), 100);
        body.replayable(1024);
        let mut first = body.attempt().unwrap();
        first.frame().await.unwrap().unwrap();
        // hyper's send task still holds the attempt when its failure is seen.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(first);
        });
        assert!(!body.is_available());
        let started = tokio::time::Instant::now();
        body.handed_back(Duration::from_millis(500)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        assert!(body.is_available());
        sender.await.unwrap();
        assert_eq!(
            body.attempt().unwrap().collect().await.unwrap().to_bytes(),
            "abcd"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_for_a_hand_back_is_bounded_and_skipped_when_nothing_is_out() {
        let mut body = Reclaimable::new(chunks(&["ab", "cd"]), 100);
        body.replayable(1024);
        let started = tokio::time::Instant::now();
        body.handed_back(Duration::from_millis(500)).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "never taken");

        let mut held = body.attempt().unwrap();
        held.frame().await.unwrap().unwrap();
        body.handed_back(Duration::from_millis(500)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(500), "still out");
        assert!(!body.is_available());
        drop(held);

        // Without replay nothing comes back, so nothing is waited for.
        let plain = Reclaimable::new(chunks(&["ab"]), 100);
        let mut taken = plain.attempt().unwrap();
        taken.frame().await.unwrap().unwrap();
        let again = tokio::time::Instant::now();
        plain.handed_back(Duration::from_millis(500)).await;
        assert_eq!(again.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn past_the_replay_limit_a_body_is_not_sent_twice() {
        let mut body = Reclaimable::new(chunks(&["abcd", "efgh"]), 100);
        body.replayable(6);
        let first = body.attempt().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcdefgh");
        assert!(!body.is_available());
        assert!(body.attempt().is_none());
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
