//! Step 3 of a request: attempts on the instances of one table snapshot.
//!
//! An [`Exchange`] is one request on its way through the handler: what it
//! carries from step to step (its parts and rewritten headers, the
//! reclaimable body, the client side of an upgrade, the instances it failed
//! on). A [`Plan`] is what one table says about it: the route's entry, the
//! response and per-try timeouts, the retries allowed and the attempts made
//! so far. One attempt is four steps, which `Inner::serve` runs in order:
//! [`Exchange::pick`] an instance not tried yet, [`Inner::admit`] it past
//! the concurrency limit, send the [`Exchange::outgoing`] request to it [`within`] the
//! per-try timeout, then [`Exchange::classify`] the result into an
//! [`Attempted`]: an answer to relay, an error to answer with, another try,
//! or no attempt left. The steps are plain functions, and the two waits
//! (admit, send) are awaited by `serve` itself, so that a request is one
//! state machine, not one nested in another. When none is left, [`Exchange::hold_again`] says whether to wait for another
//! instance (step 4), and [`Exchange::give_up`] makes the error from the
//! last failure.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use registry::InstanceState;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tracing::debug;

use super::answer::fail;
use super::body::{AttemptBody, Reclaimable};
use super::error::GatewayError;
use super::forward::{self, AttemptError};
use super::limit::{InstanceLimit, Rejected};
use super::pool::{PooledBody, SendError};
use super::record::{AttemptRecord, RequestRecord};
use super::response::ResponseBody;
use super::retry::{self, Failure};
use super::{Inner, MAX_ATTEMPTS, MAX_RETRIES, now};
use crate::backend::Backend;
use crate::balance::{PickContext, RequestView};
use crate::health::{self, Outcome};
use crate::table::{RouteEntry, RoutingTable};

/// One request on its way through the handler, across hold rounds.
pub(super) struct Exchange<'a> {
    pub proxy: &'a Inner,
    pub started: Instant,
    /// The request's one clock reading, until the first attempt uses it;
    /// later attempts (after a failure or a hold) read the clock again.
    pub clock: Option<Instant>,
    /// Method, URI, and the headers as the instance gets them.
    pub parts: Parts,
    pub body: Reclaimable<Incoming>,
    pub client_upgrade: Option<OnUpgrade>,
    /// Instances this request failed on, across hold rounds.
    pub failed_on: Vec<Arc<Backend>>,
    /// The one retry after a reset, a draining 503 or a per-try timeout was
    /// used before the latest hold.
    pub second_chance_used: bool,
}

/// What one table snapshot says about the request: its route and the
/// attempts made on that route's instances.
pub(super) struct Plan<'t> {
    pub entry: &'t RouteEntry,
    /// The response timeout (the route's `timeout_ms`, else `--response-timeout`).
    pub timeout: Duration,
    /// Each attempt's limit: the per-try timeout when it is shorter.
    pub attempt_timeout: Duration,
    /// The path and query the instance is sent.
    pub path_and_query: PathAndQuery,
    pub attempts: Attempts,
}

/// Where the attempts of one request stand.
pub(super) struct Attempts {
    tried: [usize; MAX_ATTEMPTS],
    pub made: usize,
    pub max: usize,
    /// The one retry after a reset or a draining 503 has been used.
    second_chance_used: bool,
    /// The last failure and the instance it happened on.
    last_failure: Option<(Failure, String, Arc<Backend>)>,
    /// A hedge was sent (at most one per round of attempts).
    pub hedged: bool,
}

impl Attempts {
    fn tried(&self) -> &[usize] {
        &self.tried[..self.made]
    }
}

/// The instance picked for one attempt.
pub(super) struct Pick {
    pub backend: Arc<Backend>,
    /// The instance's `x-shoal-instance` value.
    pub instance: HeaderValue,
    /// Whether the policy asks for the sticky cookie.
    set_cookie: bool,
    /// The attempt's clock reading: the pick's, unless it waited for a
    /// concurrency permit.
    pub sent_at: Instant,
}

/// What one attempt came to.
pub(super) enum Attempted {
    /// The instance answered: relay its response.
    Answered(Answer),
    /// The gateway answers itself: this error, naming this instance.
    Failed(GatewayError, HeaderValue, Option<AttemptRecord>),
    /// Try another instance.
    Again,
    /// No attempt is left to make on this table.
    NoneLeft,
}

/// An instance's response, with what relaying it needs.
pub(super) struct Answer {
    pub response: Response<PooledBody>,
    /// The instance's `x-shoal-instance` value.
    pub instance: HeaderValue,
    /// Whether the policy asks for the sticky cookie.
    pub set_cookie: bool,
    pub attempt: AttemptRecord,
}

impl<'a> Exchange<'a> {
    /// The plan for the request on `entry`, `entry`'s table being the
    /// latest one read; the request is counted in its service's retry budget.
    #[inline(always)]
    pub fn plan<'t>(&self, entry: &'t RouteEntry) -> Plan<'t> {
        let settings = &self.proxy.settings;
        let pool = &entry.pool;
        pool.counters
            .retry_budget
            .deposit(tokio::time::Instant::from_std(
                self.clock.unwrap_or_else(now),
            ));
        let timeout = entry
            .route
            .timeout_ms
            .map_or(settings.response_timeout, Duration::from_millis);
        let attempt_timeout = entry
            .route
            .try_timeout_ms
            .map(Duration::from_millis)
            .or(settings.try_timeout)
            .map_or(timeout, |per_try| per_try.min(timeout));
        let retries = entry
            .route
            .retries
            .unwrap_or(settings.retries)
            .min(MAX_RETRIES);
        let mut attempts = Attempts {
            tried: [0; MAX_ATTEMPTS],
            made: 0,
            max: 1 + retries as usize,
            second_chance_used: self.second_chance_used,
            last_failure: None,
            hedged: false,
        };
        // Instances that failed before the hold are not tried again (found by
        // binary search: the table keeps a pool's backends sorted by id).
        for failed in &self.failed_on {
            if attempts.made < MAX_ATTEMPTS
                && let Ok(index) = pool.ready.binary_search_by(|b| b.id().cmp(failed.id()))
                && !attempts.tried().contains(&index)
            {
                attempts.tried[attempts.made] = index;
                attempts.made += 1;
            }
        }
        attempts.max = (attempts.made + 1 + retries as usize).min(MAX_ATTEMPTS);
        Plan {
            entry,
            timeout,
            attempt_timeout,
            path_and_query: forward::forward_path_and_query(entry, &self.parts.uri),
            attempts,
        }
    }

    /// An attempt's first step: pick an instance not tried yet; `None` when
    /// no attempt is left to make on `plan`.
    #[inline(always)]
    pub fn pick(&mut self, plan: &mut Plan<'_>) -> Option<Pick> {
        let attempts = &mut plan.attempts;
        if attempts.made >= attempts.max {
            return None;
        }
        let entry = plan.entry;
        let pool = &entry.pool;
        let view = RequestView {
            path: entry.path_after_prefix(self.parts.uri.path()),
            query: self.parts.uri.query(),
            headers: &self.parts.headers,
        };
        let at = self.clock.take().unwrap_or_else(now);
        let ctx = PickContext {
            now: at,
            slow_start: self.proxy.settings.slow_start,
        };
        let pick = entry
            .balancer
            .pick(&pool.ready, &view, attempts.tried(), &ctx)?;
        let backend = pool.ready[pick.index].clone();
        attempts.tried[attempts.made] = pick.index;
        attempts.made += 1;
        Some(Pick {
            instance: backend.id_header(),
            backend,
            set_cookie: pick.set_cookie,
            sent_at: at,
        })
    }

    /// The gateway's answer when `pick`'s instance is at its concurrency
    /// limit and its queue is full or the wait for a permit timed out.
    #[cold]
    pub fn overloaded(
        &self,
        plan: &Plan<'_>,
        pick: &Pick,
        rejected: Rejected,
        record: RequestRecord,
    ) -> Response<ResponseBody> {
        let pool = &plan.entry.pool;
        let backend = &pick.backend;
        debug!(instance = backend.id(), service = %pool.service, ?rejected, "instance at its concurrency limit");
        let e = GatewayError::Overloaded {
            service: pool.service.clone(),
            instance: backend.id().to_owned(),
        };
        fail(e, Some(&pick.instance), record, None)
    }

    /// The request `pick`'s instance is sent, with `body`: copied, not
    /// taken, since a refused connection may be followed by a hold and
    /// another attempt.
    #[inline(always)]
    pub fn outgoing(
        &self,
        plan: &Plan<'_>,
        body: AttemptBody<Incoming>,
    ) -> Request<AttemptBody<Incoming>> {
        forward::request(
            &self.parts.method,
            plan.path_and_query.clone(),
            self.parts.headers.clone(),
            body,
        )
    }

    /// Once admitted (with `permit` when limits are on): the attempt's
    /// record and its deadline, counted from the attempt's clock reading.
    #[inline(always)]
    pub fn start(
        &self,
        plan: &Plan<'_>,
        pick: &mut Pick,
        permit: Option<OwnedSemaphorePermit>,
    ) -> (AttemptRecord, tokio::time::Instant) {
        if permit.is_some() {
            pick.sent_at = now();
        }
        let attempt = AttemptRecord::start(pick.backend.clone(), permit, pick.sent_at);
        let deadline = tokio::time::Instant::from_std(pick.sent_at) + plan.attempt_timeout;
        (attempt, deadline)
    }

    /// An attempt's last step: what the instance's `result` (`None`: no
    /// response headers before the deadline) comes to.
    #[inline(always)]
    pub fn classify(
        &mut self,
        plan: &mut Plan<'_>,
        pick: Pick,
        mut attempt: AttemptRecord,
        result: Option<Result<Response<PooledBody>, SendError>>,
    ) -> Attempted {
        let Pick {
            backend,
            instance,
            set_cookie,
            sent_at,
        } = pick;
        let pool = &plan.entry.pool;
        let now = now();
        let ejection = &self.proxy.settings.ejection;

        match result {
            Some(Ok(response)) => {
                let latency = now.saturating_duration_since(sent_at);
                backend.state.rtt.observe(latency, now);
                pool.counters
                    .latency
                    .record(latency, tokio::time::Instant::from_std(now));
                let status = response.status();
                let leaving_503 =
                    status == StatusCode::SERVICE_UNAVAILABLE && self.proxy.is_leaving(&backend);
                let outcome = if failure_status(status) && !leaving_503 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                health::record(&backend, outcome, now, ejection);
                if leaving_503 && self.retry_allowed(Failure::DrainingUnavailable, plan) {
                    debug!(instance = backend.id(), service = %pool.service, "503 from a draining instance; retrying on another");
                    plan.attempts.second_chance_used = true;
                    attempt.set_status(Some(status.as_u16()));
                    drop(response);
                    return Attempted::Again;
                }
                Attempted::Answered(Answer {
                    response,
                    instance,
                    set_cookie,
                    attempt,
                })
            }
            Some(Err(error)) => match forward::classify(&error) {
                AttemptError::BodyTooLarge { limit } => {
                    attempt.set_status(Some(StatusCode::PAYLOAD_TOO_LARGE.as_u16()));
                    Attempted::Failed(
                        GatewayError::BodyTooLarge { limit },
                        instance,
                        Some(attempt),
                    )
                }
                AttemptError::ClientBody(cause) => {
                    Attempted::Failed(GatewayError::ClientBody(cause), instance, Some(attempt))
                }
                AttemptError::Failed(failure, cause) => {
                    health::record(&backend, Outcome::Failure, now, ejection);
                    attempt.set_status(None);
                    debug!(instance = backend.id(), service = %pool.service, ?failure, %cause, "attempt failed");
                    self.failed_on.push(backend.clone());
                    let retry = self.retry_allowed(failure, plan);
                    plan.attempts.last_failure = Some((failure, cause, backend));
                    if !retry {
                        return Attempted::NoneLeft;
                    }
                    if !failure.unprocessed() {
                        plan.attempts.second_chance_used = true;
                    }
                    Attempted::Again
                }
            },
            None => {
                // No response headers in time. The peak-EWMA learns how slow it was.
                let attempt_timeout = plan.attempt_timeout;
                backend.state.rtt.observe(attempt_timeout, now);
                health::record(&backend, Outcome::Failure, now, ejection);
                attempt.set_status(None);
                let per_try = attempt_timeout < plan.timeout;
                if per_try && self.retry_allowed(Failure::TryTimeout, plan) {
                    debug!(instance = backend.id(), service = %pool.service, try_timeout_ms = attempt_timeout.as_millis() as u64, "no response headers within the per-try timeout; retrying on another instance");
                    self.failed_on.push(backend.clone());
                    plan.attempts.second_chance_used = true;
                    plan.attempts.last_failure = Some((
                        Failure::TryTimeout,
                        format!(
                            "no response headers within {} ms",
                            attempt_timeout.as_millis()
                        ),
                        backend,
                    ));
                    return Attempted::Again;
                }
                debug!(instance = backend.id(), service = %pool.service, timeout_ms = attempt_timeout.as_millis() as u64, "no response headers in time");
                let e = GatewayError::Timeout {
                    service: pool.service.clone(),
                    instance: backend.id().to_owned(),
                    after: attempt_timeout,
                };
                Attempted::Failed(e, instance, Some(attempt))
            }
        }
    }

    /// Whether the request may be sent twice: its method is idempotent, or
    /// its route says every request on it is.
    fn idempotent(&self, plan: &Plan<'_>) -> bool {
        plan.entry.route.idempotent || retry::is_idempotent(&self.parts.method)
    }

    /// Whether one more attempt may be made after `failure` (the retry
    /// rule, then attempts, instances and body left, then the budget),
    /// taking a retry token if so.
    fn retry_allowed(&self, failure: Failure, plan: &Plan<'_>) -> bool {
        let attempts = &plan.attempts;
        let pool = &plan.entry.pool;
        if !retry::may_retry(failure, self.idempotent(plan), attempts.second_chance_used) {
            return false;
        }
        if attempts.made >= attempts.max
            || attempts.made >= pool.ready.len()
            || !self.body.is_available()
        {
            return false;
        }
        if pool
            .counters
            .retry_budget
            .try_withdraw(tokio::time::Instant::now())
        {
            pool.counters.retries_total.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            pool.counters
                .retries_refused_total
                .fetch_add(1, Ordering::Relaxed);
            debug!(service = %pool.service, "retry budget spent; not retrying");
            false
        }
    }

    /// With no attempt left on `plan`: how long to hold the request for an
    /// instance not tried yet, if the last failure could be retried (a
    /// refused connection, so nothing was sent; or, for an idempotent
    /// request, its one second chance), the body can be sent again and
    /// time is left of `--hold-timeout`.
    pub fn hold_again(&mut self, plan: &Plan<'_>) -> Option<Duration> {
        let attempts = &plan.attempts;
        let retriable = attempts.last_failure.as_ref().is_some_and(|(failure, ..)| {
            retry::may_retry(*failure, self.idempotent(plan), attempts.second_chance_used)
        });
        let left = self
            .proxy
            .settings
            .hold_timeout
            .saturating_sub(now().saturating_duration_since(self.started));
        if !(retriable
            && self.body.is_available()
            && self.failed_on.len() < MAX_ATTEMPTS
            && !left.is_zero())
        {
            return None;
        }
        if let Some((failure, ..)) = &attempts.last_failure
            && !failure.unprocessed()
        {
            self.second_chance_used = true;
        }
        Some(left)
    }

    /// The gateway's answer when no attempt on `plan` succeeded and the
    /// request is not held again: the last failure, as the client sees it.
    pub fn give_up(&self, plan: Plan<'_>, record: RequestRecord) -> Response<ResponseBody> {
        let service = &plan.entry.pool.service;
        match plan.attempts.last_failure {
            // Retried after a per-try timeout, with no instance left to try.
            Some((Failure::TryTimeout, _, backend)) => {
                let e = GatewayError::Timeout {
                    service: service.clone(),
                    instance: backend.id().to_owned(),
                    after: plan.attempt_timeout,
                };
                fail(e, Some(&backend.id_header()), record, None)
            }
            Some((Failure::Reset, cause, backend)) => {
                let e = GatewayError::BadGateway {
                    service: service.clone(),
                    instance: backend.id().to_owned(),
                    cause,
                };
                fail(e, Some(&backend.id_header()), record, None)
            }
            Some((_, cause, backend)) => {
                let e = GatewayError::Unreachable {
                    service: service.clone(),
                    attempts: plan.attempts.made,
                    cause,
                };
                fail(e, Some(&backend.id_header()), record, None)
            }
            None => {
                // Only when the route changed to another service, still without
                // instances, while this request was held.
                let e = GatewayError::NoInstance {
                    service: service.clone(),
                    waited: now().saturating_duration_since(self.started),
                };
                fail(e, None, record, None)
            }
        }
    }
}

/// A status an instance answers when it could not serve the request
/// (bad gateway, unavailable, timeout): counted as a failure, and retried.
fn failure_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// Whether an attempt ended in response headers that are not a failure
/// status: no retry can follow it.
pub(super) fn answered(result: &Option<Result<Response<PooledBody>, SendError>>) -> bool {
    matches!(result, Some(Ok(response)) if !failure_status(response.status()))
}

/// `send`'s output, or `None` if `expiry` fires first. A plain future
/// over both (no state machine of its own): the request's one async fn
/// awaits it.
#[inline]
pub(super) fn within<F: Future>(
    mut send: Pin<&mut F>,
    mut expiry: Pin<&mut Sleep>,
) -> impl Future<Output = Option<F::Output>> {
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(sent) = send.as_mut().poll(cx) {
            return Poll::Ready(Some(sent));
        }
        expiry.as_mut().poll(cx).map(|()| None)
    })
}

impl Inner {
    /// Whether the latest table shows `backend` draining or gone.
    fn is_leaving(&self, backend: &Backend) -> bool {
        let table = self.table.load();
        let current = table.pool(&backend.instance.service).and_then(|pool| {
            let found = pool.all.binary_search_by(|b| b.id().cmp(backend.id()));
            found.ok().map(|index| &pool.all[index])
        });
        current.is_none_or(|b| b.instance.state == InstanceState::Draining)
    }

    /// A concurrency permit for `backend` when limits are on (ready at once
    /// when they are off).
    pub(super) fn admit(
        &self,
        backend: &Backend,
        table: &RoutingTable,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<OwnedSemaphorePermit>, Rejected>> + use<> {
        let max = self.settings.max_inflight_per_instance;
        if max == 0 {
            return futures::future::Either::Left(std::future::ready(Ok(None)));
        }
        let limit = self.limits.get_or_insert(
            backend.id(),
            || InstanceLimit::new(max, self.settings.queue_per_instance),
            |id| {
                table
                    .pools
                    .values()
                    .any(|p| p.all.iter().any(|b| b.id() == id))
            },
        );
        futures::future::Either::Right(Box::pin(async move { limit.acquire(wait).await.map(Some) }))
    }
}
