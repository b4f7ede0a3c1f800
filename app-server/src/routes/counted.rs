//! The request counter behind `/load`, as a `tower` layer put on each
//! application handler ([`Counted`]): a request is in flight from the call
//! until its response is ready, and its latency goes into the window.
//!
//! It is a layer of its own rather than axum's `middleware::from_fn`
//! (which boxes a future and a `Next` per request) or a `route_layer`
//! (axum boxes a route again, every request, for each layer put on it):
//! on a handler it wraps the handler's future in place, in the one box
//! axum makes for the handler anyway.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::stats::{InFlight, Stats};

/// Counts the requests of the handler it is put on (`handler.layer(..)`).
#[derive(Debug, Clone)]
pub struct Counted {
    stats: Arc<Stats>,
}

impl Counted {
    pub fn new(stats: Arc<Stats>) -> Counted {
        Counted { stats }
    }
}

impl<S> Layer<S> for Counted {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> CountedService<S> {
        CountedService {
            inner,
            stats: self.stats.clone(),
        }
    }
}

/// A handler's service with its requests counted.
#[derive(Debug, Clone)]
pub struct CountedService<S> {
    inner: S,
    stats: Arc<Stats>,
}

impl<S> Service<Request> for CountedService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Counting<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Counting<S::Future> {
        Counting {
            in_flight: Some(self.stats.begin()),
            response: self.inner.call(request),
        }
    }
}

/// A counted request's response to come. Dropped before it is ready (the
/// client went away), the request is no longer in flight and records no
/// latency.
#[derive(Debug)]
pub struct Counting<F> {
    response: F,
    in_flight: Option<InFlight>,
}

impl<F> Future for Counting<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let response = ready!(Pin::new(&mut self.response).poll(cx));
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.finish();
        }
        Poll::Ready(response)
    }
}
