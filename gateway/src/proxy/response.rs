//! The body of every response the proxy returns: an instance's body streamed
//! through as it arrives, or a small body the gateway made (errors). It
//! carries the request's and the attempt's [`record`](super::record) guards,
//! so stats are recorded when the last byte has gone (or the client left).
//! An instance's body is a [`PooledBody`], which drives its connection and
//! returns it to its [`pool`](super::pool) once read to the end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::body::BoxError;
use super::pool::PooledBody;
use super::record::{AttemptRecord, RequestRecord};

enum Kind {
    Full(Option<Bytes>),
    Instance(PooledBody),
}

/// A response body from an instance or from the gateway.
pub struct ResponseBody {
    kind: Kind,
    request: Option<RequestRecord>,
    attempt: Option<AttemptRecord>,
}

impl ResponseBody {
    /// A body the gateway made.
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            request: None,
            attempt: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// An instance's body, streamed; the records are written when it ends.
    pub fn from_instance(body: PooledBody, request: RequestRecord, attempt: AttemptRecord) -> Self {
        ResponseBody {
            kind: Kind::Instance(body),
            request: Some(request),
            attempt: Some(attempt),
        }
    }

    /// The same body with nothing in it: its records stay.
    pub fn emptied(mut self) -> Self {
        self.kind = Kind::Full(None);
        self
    }

    /// Attach the records to a body (e.g. the gateway's own response after an attempt).
    pub fn with_records(
        mut self,
        request: Option<RequestRecord>,
        attempt: Option<AttemptRecord>,
    ) -> Self {
        self.request = request;
        self.attempt = attempt;
        self
    }

    /// Record the request and the attempt, with one clock reading.
    fn finish(&mut self) {
        let now = super::now();
        if let Some(request) = self.request.take() {
            request.finish(now);
        }
        if let Some(attempt) = self.attempt.take() {
            attempt.finish(now);
        }
    }
}

impl Drop for ResponseBody {
    /// A body hyper never polled because it knew it was empty (HEAD, 204,
    /// 304, `Content-Length: 0`) is still recorded.
    fn drop(&mut self) {
        let ended = matches!(&self.kind, Kind::Instance(body) if body.is_end_stream());
        if ended {
            self.finish();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Instance(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BoxError::from))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                // The access log's `bytes` (with the log off: one `Option` check).
                if let Some(log) = this.request.as_mut().and_then(RequestRecord::log)
                    && let Some(data) = frame.data_ref()
                {
                    log.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                // The instance cut the body off: the exchange failed after all.
                if let Some(r) = &mut this.request {
                    r.set_status(None);
                }
                if let Some(a) = &mut this.attempt {
                    a.set_status(None);
                }
                this.finish();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Instance(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Instance(body) => body.size_hint(),
        }
    }
}
