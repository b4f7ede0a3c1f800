//! Stats for one request and for each of its attempts, kept by guards: every
//! `start` is matched by exactly one `record`, also when the client goes away
//! mid-request and the handler future or the response body is dropped.
//!
//! A guard records when it is dropped, which is when the response body has
//! been sent (it travels inside [`ResponseBody`](super::response::ResponseBody)),
//! so in-flight counts cover streaming responses and latency is the whole
//! exchange. A request dropped before any outcome is recorded as 499 ("client
//! closed request", as nginx logs it): neither the gateway nor the instance
//! failed, so it is not an error.
//!
//! The request's guard also carries what the gateway says about the request
//! beyond the stats: its `x-request-id` on its way to the response (see
//! [`trace`](super::trace)), and, with `--access-log`, its
//! [access log entry](crate::access_log::Entry), written when it records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::OwnedSemaphorePermit;

use super::trace::TraceIds;
use crate::access_log::Entry;
use crate::backend::Backend;
use crate::stats::{RequestStats, ServiceCounters};

/// Status recorded when the client went away before an outcome.
pub const CLIENT_CLOSED: u16 = 499;

/// One client request, in its route's and its service's stats.
#[derive(Debug)]
pub struct RequestRecord {
    route: Arc<RequestStats>,
    service: Arc<ServiceCounters>,
    started: Instant,
    status: Option<u16>,
    recorded: bool,
    /// With `--trace-headers`: the request's ids, set on the instance's
    /// request, then the `x-request-id` the response gets. Boxed, like the
    /// log entry, so that with both off the guard (which travels in the
    /// response body) grows by two pointers only.
    trace: Option<Box<TraceIds>>,
    /// With `--access-log`: the request's line in the making.
    log: Option<Box<Entry>>,
}

impl RequestRecord {
    pub fn start(route: &Arc<RequestStats>, service: &Arc<ServiceCounters>, now: Instant) -> Self {
        route.start();
        service.requests.start();
        RequestRecord {
            route: route.clone(),
            service: service.clone(),
            started: now,
            status: Some(CLIENT_CLOSED),
            recorded: false,
            trace: None,
            log: None,
        }
    }

    /// Write `entry` to the access log when the request is recorded.
    pub fn log_to(&mut self, entry: Box<Entry>) {
        self.log = Some(entry);
    }

    /// The access log entry, when the log is on.
    #[inline(always)]
    pub fn log(&mut self) -> Option<&mut Entry> {
        self.log.as_deref_mut()
    }

    /// The request's ids: for the instance's request, the response and the log.
    pub fn set_trace(&mut self, ids: TraceIds) {
        if let Some(log) = self.log() {
            log.request_id = Some(ids.request_id.clone());
            log.traceparent = Some(ids.traceparent.clone());
        }
        self.trace = Some(Box::new(ids));
    }

    /// The request's ids, when `--trace-headers` is on.
    #[inline(always)]
    pub fn trace(&self) -> Option<&TraceIds> {
        self.trace.as_deref()
    }

    /// The `x-request-id` for the response (once).
    #[inline(always)]
    pub fn take_request_id(&mut self) -> Option<HeaderValue> {
        self.trace.take().map(|ids| ids.request_id)
    }

    /// One more attempt was started (for the log's `retries`).
    #[inline(always)]
    pub fn attempted(&mut self) {
        if let Some(log) = self.log() {
            log.attempts += 1;
        }
    }

    /// The request was held for `held` (for the log's `held_ms`).
    pub fn held(&mut self, held: Duration) {
        if let Some(log) = self.log() {
            log.held += held;
        }
    }

    /// Its answer came from, or its last attempt went to, `instance`; with
    /// the time since the attempt's `sent_at` when the instance answered.
    #[inline(always)]
    pub fn answered_by(&mut self, instance: &HeaderValue, sent_at: Option<Instant>) {
        if let Some(log) = self.log() {
            log.instance = Some(instance.clone());
            log.upstream = sent_at.map(|at| super::now().saturating_duration_since(at));
        }
    }

    /// The status the client got (None: the response was cut off).
    pub fn set_status(&mut self, status: Option<u16>) {
        self.status = status;
    }

    /// Record it now, with a clock reading the caller already has.
    pub fn finish(mut self, now: Instant) {
        self.record(now);
    }

    fn record(&mut self, now: Instant) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let latency = now.saturating_duration_since(self.started);
        self.route.record(self.status, latency, now);
        self.service.record(self.status, latency, now);
        if let Some(log) = self.log.take() {
            log.finish(self.status, latency);
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(super::now());
        }
    }
}

/// One attempt on one instance, in the instance's stats; holds the
/// instance's concurrency permit (if limits are on) until it is recorded.
#[derive(Debug)]
pub struct AttemptRecord {
    backend: Arc<Backend>,
    started: Instant,
    status: Option<u16>,
    recorded: bool,
    /// A hedge racing the request's first attempt (see
    /// [`RequestStats::race`](crate::stats::RequestStats::race)).
    racing: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AttemptRecord {
    pub fn start(
        backend: Arc<Backend>,
        permit: Option<OwnedSemaphorePermit>,
        now: Instant,
    ) -> Self {
        backend.state.stats.start();
        AttemptRecord {
            backend,
            started: now,
            status: Some(CLIENT_CLOSED),
            recorded: false,
            racing: false,
            _permit: permit,
        }
    }

    /// This attempt is a hedge racing the request's first attempt: not a
    /// second client request in flight until it wins ([`AttemptRecord::won`]).
    pub fn race(&mut self) {
        if !std::mem::replace(&mut self.racing, true) {
            self.backend.state.stats.race();
        }
    }

    /// This racing hedge won, or its rival failed: it stands for the request.
    pub fn won(&mut self) {
        if std::mem::replace(&mut self.racing, false) {
            self.backend.state.stats.promote();
        }
    }

    /// The instance's status, or None when it gave none (failed, timed out, cut off).
    pub fn set_status(&mut self, status: Option<u16>) {
        self.status = status;
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// When the attempt was sent.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Record it now, with a clock reading the caller already has.
    pub fn finish(mut self, now: Instant) {
        self.record(now);
    }

    fn record(&mut self, now: Instant) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let latency = now.saturating_duration_since(self.started);
        let stats = &self.backend.state.stats;
        if self.racing {
            stats.record_racing(self.status, latency, now);
        } else {
            stats.record(self.status, latency, now);
        }
    }
}

impl Drop for AttemptRecord {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(super::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::backends;
    use crate::stats::Class;

    #[test]
    fn every_start_is_recorded_once_even_when_dropped_early() {
        let route = Arc::new(RequestStats::default());
        let service = Arc::new(ServiceCounters::default());
        let backend = backends(1).remove(0);
        let now = Instant::now();

        let mut request = RequestRecord::start(&route, &service, now);
        let mut attempt = AttemptRecord::start(backend.clone(), None, now);
        assert_eq!((route.in_flight(), backend.state.stats.in_flight()), (1, 1));
        attempt.set_status(Some(200));
        request.set_status(Some(200));
        drop(attempt);
        drop(request);
        assert_eq!((route.in_flight(), backend.state.stats.in_flight()), (0, 0));
        assert_eq!(route.total(Class::Success), 1);
        assert_eq!(service.requests.total(Class::Success), 1);
        assert_eq!(service.durations.histogram().count, 1);
        assert_eq!(backend.state.stats.total(Class::Success), 1);

        // A client that leaves mid-request: recorded as 499, not as an error.
        let request = RequestRecord::start(&route, &service, now);
        let attempt = AttemptRecord::start(backend.clone(), None, now);
        drop((request, attempt));
        assert_eq!(route.total(Class::ClientError), 1);
        assert_eq!(service.durations.histogram().count, 2);
        assert_eq!(backend.state.stats.total(Class::ClientError), 1);
        assert_eq!((route.in_flight(), backend.state.stats.in_flight()), (0, 0));
    }

    #[test]
    fn a_racing_hedge_is_load_but_not_a_second_request_until_it_wins() {
        let backend = backends(1).remove(0);
        let (stats, now) = (&backend.state.stats, Instant::now());
        let counts = || (stats.in_flight(), stats.load(), backend.state.in_flight());

        let mut losing = AttemptRecord::start(backend.clone(), None, now);
        losing.race();
        assert_eq!(counts(), (0, 1, 1), "racing: load, not demand");
        drop(losing);
        assert_eq!(counts(), (0, 0, 0));
        assert_eq!(stats.total(Class::ClientError), 1, "recorded as cancelled");

        let mut winning = AttemptRecord::start(backend.clone(), None, now);
        winning.race();
        winning.won();
        assert_eq!(counts(), (1, 1, 1), "it now stands for the request");
        winning.set_status(Some(200));
        winning.finish(now);
        assert_eq!(counts(), (0, 0, 0));
        assert_eq!(stats.total(Class::Success), 1);
    }
}
