//! The request handler: from a client's request to an instance's response.
//!
//! [`Proxy::handle`] takes one request through these steps:
//! 1. Resolve the route in the current [`RoutingTable`] snapshot from the
//!    `Host` header (or the URI authority, for HTTP/2) and the path; 400 for
//!    a request it cannot route (CONNECT, `*`, a non-text Host).
//! 2. Refuse a declared body over `--max-body-bytes` (413).
//! 3. If the service has no ready instance, hold the request until one
//!    registers, up to `--hold-timeout` (scale from zero), else 503.
//! 4. Pick an instance with the route's policy, wait for a concurrency permit
//!    if limits are on ([`limit`]), and send the request on the pooled client
//!    with the response timeout ([`forward`]).
//! 5. On failure, retry on another instance when [`retry`] allows; record
//!    every attempt's outcome for passive [`health`](crate::health) and its
//!    latency in the instance's peak-EWMA. When the last failure could be
//!    retried but no other instance is left to try (a refused connection, so
//!    nothing was sent; or, for an idempotent request, a reset), hold the
//!    request until the registry offers an instance not tried yet, within
//!    the same `--hold-timeout`: the only instance of a service was killed
//!    and its replacement is on the way.
//! 6. Stream the response back with `x-shoal-instance` (and the sticky cookie
//!    when the policy asks), or join both sides of an upgrade ([`upgrade`]).
//!
//! Files: [`headers`] (rewriting), [`body`] (reclaimable, limited request
//! body), [`response`] (response body carrying the stats guards), [`record`]
//! (the guards), [`forward`] (one attempt), [`pool`] (keep-alive connections
//! to instances), [`retry`] (rule and budget),
//! [`limit`] (body size, per-instance concurrency), [`error`] (the gateway's
//! own JSON errors), [`upgrade`] (tunnels), [`live_map`] (state kept across
//! snapshots), [`timer`] (the response timer a connection's requests reuse).
//!
//! `x-shoal-instance` on a response the gateway made names the last instance
//! the request was sent to (the one that timed out or failed), or is `-` when
//! no instance was involved (400, 413 on Content-Length, hold timeout).

pub mod body;
pub mod error;
pub mod forward;
pub mod headers;
pub mod limit;
pub mod live_map;
pub mod pool;
pub mod record;
pub mod response;
pub mod retry;
pub mod timer;
pub mod upgrade;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{HOST, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use registry::InstanceState;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::backend::Backend;
use crate::balance::{PickContext, RequestView};
use crate::config::Config;
use crate::health::{self, EjectionPolicy, Outcome};
use crate::table::{RoutingTable, ServicePool, TableHandle};
use body::Reclaimable;
pub use error::GatewayError;
use forward::AttemptError;
pub use forward::HttpClient;
use limit::{InstanceLimit, Rejected};
use live_map::LiveMap;
use pool::{PooledBody, Upstream};
use record::{AttemptRecord, RequestRecord};
pub use response::ResponseBody;
use retry::{Failure, RetryBudget};
pub use timer::ResponseTimer;

/// Most retries a request gets, whatever the configuration says.
pub const MAX_RETRIES: u32 = 10;
const MAX_ATTEMPTS: usize = MAX_RETRIES as usize + 1;

/// The clock of the request path. Tokio's, so that tests on paused time
/// control it; the same as `Instant::now()` otherwise.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What the handler needs from the flags.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub hold_timeout: Duration,
    pub slow_start: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// `--try-timeout`, unless the route sets `try_timeout_ms`.
    pub try_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub max_body_bytes: u64,
    pub max_inflight_per_instance: u32,
    pub queue_per_instance: u32,
    pub ejection: EjectionPolicy,
}

impl ProxySettings {
    pub fn from_config(config: &Config) -> Self {
        ProxySettings {
            hold_timeout: config.hold_timeout,
            slow_start: config.slow_start,
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            try_timeout: config.try_timeout,
            idle_timeout: config.idle_timeout,
            retries: config.retries,
            max_body_bytes: config.max_body_bytes,
            max_inflight_per_instance: config.max_inflight_per_instance,
            queue_per_instance: config.queue_per_instance,
            ejection: EjectionPolicy::from_config(config),
        }
    }
}

/// The request handler; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    table: TableHandle,
    /// For the active health checks; requests go through `upstream`.
    client: HttpClient,
    upstream: Upstream,
    settings: ProxySettings,
    limits: LiveMap<InstanceLimit>,
}

impl Proxy {
    pub fn new(table: TableHandle, settings: ProxySettings) -> Self {
        let client = forward::client(settings.connect_timeout, settings.idle_timeout);
        Proxy {
            inner: Arc::new(Inner {
                table,
                client,
                upstream: Upstream::new(settings.connect_timeout, settings.idle_timeout),
                settings,
                limits: LiveMap::default(),
            }),
        }
    }

    /// A pooled client to instances, for the active health checks.
    pub fn client(&self) -> HttpClient {
        self.inner.client.clone()
    }

    pub fn table(&self) -> &TableHandle {
        &self.inner.table
    }

    /// Serve one request from a client whose `X-Forwarded-For` entry is
    /// `client_ip`. Never fails: every problem becomes a JSON error response.
    /// `timer` is the client connection's response timer, reused by its
    /// requests.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client_ip: HeaderValue,
        timer: &ResponseTimer,
    ) -> Response<ResponseBody> {
        // Boxed once here, so that the layers above (and hyper) move a
        // pointer rather than the whole request state.
        Box::pin(self.inner.serve(request, client_ip, timer)).await
    }
}

/// Where the attempts of one request stand.
struct Attempts {
    tried: [usize; MAX_ATTEMPTS],
    made: usize,
    max: usize,
    /// The one retry after a reset or a draining 503 has been used.
    second_chance_used: bool,
    /// The last failure and the instance it happened on.
    last_failure: Option<(Failure, String, Arc<Backend>)>,
}

impl Attempts {
    fn tried(&self) -> &[usize] {
        &self.tried[..self.made]
    }
}

impl Inner {
    async fn serve(
        &self,
        mut request: Request<Incoming>,
        client_ip: HeaderValue,
        timer: &ResponseTimer,
    ) -> Response<ResponseBody> {
        let started = now();
        if request.method() == Method::CONNECT || !request.uri().path().starts_with('/') {
            return GatewayError::BadRequest(
                "the gateway proxies origin-form requests (GET /path); CONNECT and `*` are not supported".into(),
            )
            .to_response(None);
        }
        let upgrade = headers::is_upgrade(request.version(), request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();

        let host_header = headers::get(&parts.headers, &HOST).cloned();
        let authority = parts.uri.authority().cloned();
        let host = match (&host_header, &authority) {
            (Some(value), _) => match value.to_str() {
                Ok(host) => Some(host),
                Err(_) => {
                    return GatewayError::BadRequest(
                        "the Host header is not valid text; send a host name such as api.example.com".into(),
                    )
                    .to_response(None);
                }
            },
            (None, Some(authority)) => Some(authority.as_str()),
            (None, None) => None,
        };

        let first_table = self.table.load();
        let first = first_table.resolve(host, parts.uri.path());
        // Replaced when the request is held and a newer table answers.
        let mut table = first_table.clone();
        let record = RequestRecord::start(&first.stats, &first.pool.counters, started);
        if let Err(e) = limit::check_content_length(&parts.headers, self.settings.max_body_bytes) {
            return fail(e, None, record, None);
        }
        // The first attempt reuses the request's clock reading; later ones
        // (after a failure or a hold) read the clock again.
        let mut clock = Some(started);
        if first.pool.ready.is_empty() {
            let pool = first.pool.clone();
            clock = None;
            // Boxed, here and on the other rare paths: the request's future
            // is moved several times on its way into hyper, so what it
            // carries inline is copied on every request.
            match Box::pin(self.hold(&pool)).await {
                Some(ready) => table = ready,
                None => {
                    let e = GatewayError::NoInstance {
                        service: pool.service.clone(),
                        waited: self.settings.hold_timeout,
                    };
                    return fail(e, None, record, None);
                }
            }
        }
        headers::prepare_request(&mut parts.headers, &parts.uri, upgrade, &client_ip);
        let body = Reclaimable::new(body, self.settings.max_body_bytes);
        let mut client_upgrade = client_upgrade;
        let headers = parts.headers;
        // Instances this request failed on, across hold rounds.
        let mut failed_on: Vec<Arc<Backend>> = Vec::new();
        let mut second_chance_used = false;
        'hold: loop {
            let entry = if Arc::ptr_eq(&table, &first_table) {
                first
            } else {
                table.resolve(host, parts.uri.path())
            };
            let pool = &entry.pool;

            let budget = &pool.counters.retry_budget;
            budget.deposit(tokio::time::Instant::from_std(clock.unwrap_or_else(now)));

            let timeout = entry
                .route
                .timeout_ms
                .map_or(self.settings.response_timeout, Duration::from_millis);
            // Each attempt's limit: the per-try timeout when it is shorter.
            let attempt_timeout = entry
                .route
                .try_timeout_ms
                .map(Duration::from_millis)
                .or(self.settings.try_timeout)
                .map_or(timeout, |per_try| per_try.min(timeout));
            let retries = entry
                .route
                .retries
                .unwrap_or(self.settings.retries)
                .min(MAX_RETRIES);
            let path_and_query = forward::forward_path_and_query(entry, &parts.uri);
            let mut attempts = Attempts {
                tried: [0; MAX_ATTEMPTS],
                made: 0,
                max: 1 + retries as usize,
                second_chance_used,
                last_failure: None,
            };
            // Instances that failed before the hold are not tried again.
            for (index, backend) in pool.ready.iter().enumerate() {
                if attempts.made < MAX_ATTEMPTS && failed_on.iter().any(|r| r.id() == backend.id())
                {
                    attempts.tried[attempts.made] = index;
                    attempts.made += 1;
                }
            }
            attempts.max = (attempts.made + 1 + retries as usize).min(MAX_ATTEMPTS);

            loop {
                if attempts.made >= attempts.max {
                    break;
                }
                let view = RequestView {
                    path: entry.path_after_prefix(parts.uri.path()),
                    query: parts.uri.query(),
                    headers: &headers,
                };
                let at = clock.take().unwrap_or_else(now);
                let ctx = PickContext {
                    now: at,
                    slow_start: self.settings.slow_start,
                };
                let Some(pick) = entry
                    .balancer
                    .pick(&pool.ready, &view, attempts.tried(), &ctx)
                else {
                    break;
                };
                let backend = pool.ready[pick.index].clone();
                attempts.tried[attempts.made] = pick.index;
                attempts.made += 1;
                let instance_header = backend.id_header.clone();

                let permit = match self.admit(&backend, &table, timeout).await {
                    Ok(permit) => permit,
                    Err(rejected) => {
                        debug!(instance = backend.id(), service = %pool.service, ?rejected, "instance at its concurrency limit");
                        let e = GatewayError::Overloaded {
                            service: pool.service.clone(),
                            instance: backend.id().to_owned(),
                        };
                        return fail(e, Some(&instance_header), record, None);
                    }
                };
                let Some(attempt_body) = body.attempt() else {
                    break; // not reached: a retry is only chosen while the body is available
                };
                // Copied, not taken: a refused connection may be followed by a
                // hold and another attempt.
                let attempt_headers = headers.clone();
                let outgoing = forward::request(
                    &parts.method,
                    path_and_query.clone(),
                    attempt_headers,
                    attempt_body,
                );
                let sent_at = if permit.is_some() { now() } else { at };
                let mut attempt = AttemptRecord::start(backend.clone(), permit, sent_at);
                // The timeout counts from the attempt's clock reading.
                let mut expiry =
                    timer.start(tokio::time::Instant::from_std(sent_at) + attempt_timeout);
                let result = {
                    let send =
                        self.upstream
                            .send(&backend, outgoing, sent_at, client_upgrade.is_some());
                    tokio::pin!(send);
                    std::future::poll_fn(|cx| {
                        if let Poll::Ready(sent) = send.as_mut().poll(cx) {
                            return Poll::Ready(Some(sent));
                        }
                        expiry.as_mut().poll(cx).map(|()| None)
                    })
                    .await
                };
                timer.finish(expiry);
                let now = now();

                match result {
                    Some(Ok(response)) => {
                        backend
                            .state
                            .rtt
                            .observe(now.saturating_duration_since(sent_at), now);
                        let status = response.status();
                        let leaving_503 =
                            status == StatusCode::SERVICE_UNAVAILABLE && self.is_leaving(&backend);
                        let outcome = if matches!(status.as_u16(), 502..=504) && !leaving_503 {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        health::record(&backend, outcome, now, &self.settings.ejection);
                        if leaving_503
                            && self.retry_allowed(
                                Failure::DrainingUnavailable,
                                &parts.method,
                                &attempts,
                                pool,
                                &body,
                                budget,
                            )
                        {
                            debug!(instance = backend.id(), service = %pool.service, "503 from a draining instance; retrying on another");
                            attempts.second_chance_used = true;
                            attempt.set_status(Some(status.as_u16()));
                            continue;
                        }
                        return respond(
                            response,
                            &pool.service,
                            instance_header,
                            pick.set_cookie,
                            record,
                            attempt,
                            client_upgrade.take(),
                        );
                    }
                    Some(Err(error)) => match forward::classify(&error) {
                        AttemptError::BodyTooLarge { limit } => {
                            attempt.set_status(Some(StatusCode::PAYLOAD_TOO_LARGE.as_u16()));
                            return fail(
                                GatewayError::BodyTooLarge { limit },
                                Some(&instance_header),
                                record,
                                Some(attempt),
                            );
                        }
                        AttemptError::ClientBody(cause) => {
                            return fail(
                                GatewayError::ClientBody(cause),
                                Some(&instance_header),
                                record,
                                Some(attempt),
                            );
                        }
                        AttemptError::Failed(failure, cause) => {
                            health::record(
                                &backend,
                                Outcome::Failure,
                                now,
                                &self.settings.ejection,
                            );
                            attempt.set_status(None);
                            debug!(instance = backend.id(), service = %pool.service, ?failure, %cause, "attempt failed");
                            failed_on.push(backend.clone());
                            let retry = self.retry_allowed(
                                failure,
                                &parts.method,
                                &attempts,
                                pool,
                                &body,
                                budget,
                            );
                            attempts.last_failure = Some((failure, cause, backend));
                            if !retry {
                                break;
                            }
                            if failure != Failure::NotSent {
                                attempts.second_chance_used = true;
                            }
                        }
                    },
                    None => {
                        // No response headers in time. The peak-EWMA learns how slow it was.
                        backend.state.rtt.observe(attempt_timeout, now);
                        health::record(&backend, Outcome::Failure, now, &self.settings.ejection);
                        attempt.set_status(None);
                        let per_try = attempt_timeout < timeout;
                        if per_try
                            && self.retry_allowed(
                                Failure::TryTimeout,
                                &parts.method,
                                &attempts,
                                pool,
                                &body,
                                budget,
                            )
                        {
                            debug!(instance = backend.id(), service = %pool.service, try_timeout_ms = attempt_timeout.as_millis() as u64, "no response headers within the per-try timeout; retrying on another instance");
                            failed_on.push(backend.clone());
                            attempts.second_chance_used = true;
                            attempts.last_failure = Some((
                                Failure::TryTimeout,
                                format!(
                                    "no response headers within {} ms",
                                    attempt_timeout.as_millis()
                                ),
                                backend,
                            ));
                            continue;
                        }
                        debug!(instance = backend.id(), service = %pool.service, timeout_ms = attempt_timeout.as_millis() as u64, "no response headers in time");
                        let e = GatewayError::Timeout {
                            service: pool.service.clone(),
                            instance: backend.id().to_owned(),
                            after: attempt_timeout,
                        };
                        return fail(e, Some(&instance_header), record, Some(attempt));
                    }
                }
            }

            // The last failure could be retried, but no instance was left to
            // try: wait for one not tried yet.
            let retriable = attempts.last_failure.as_ref().is_some_and(|(failure, ..)| {
                retry::may_retry(*failure, &parts.method, attempts.second_chance_used)
            });
            let left = self
                .settings
                .hold_timeout
                .saturating_sub(now().saturating_duration_since(started));
            if retriable && body.is_available() && failed_on.len() < MAX_ATTEMPTS && !left.is_zero()
            {
                if let Some((failure, ..)) = &attempts.last_failure
                    && *failure != Failure::NotSent
                {
                    second_chance_used = true;
                }
                let failed_ids: Vec<&str> = failed_on.iter().map(|b| b.id()).collect();
                if let Some(newer) = Box::pin(self.hold_for_another(pool, &failed_ids, left)).await
                {
                    table = newer;
                    continue 'hold;
                }
            }

            break match attempts.last_failure {
                // Retried after a per-try timeout, with no instance left to try.
                Some((Failure::TryTimeout, _, backend)) => {
                    let e = GatewayError::Timeout {
                        service: pool.service.clone(),
                        instance: backend.id().to_owned(),
                        after: attempt_timeout,
                    };
                    fail(e, Some(&backend.id_header), record, None)
                }
                Some((Failure::Reset, cause, backend)) => {
                    let e = GatewayError::BadGateway {
                        service: pool.service.clone(),
                        instance: backend.id().to_owned(),
                        cause,
                    };
                    fail(e, Some(&backend.id_header), record, None)
                }
                Some((_, cause, backend)) => {
                    let e = GatewayError::Unreachable {
                        service: pool.service.clone(),
                        attempts: attempts.made,
                        cause,
                    };
                    fail(e, Some(&backend.id_header), record, None)
                }
                None => {
                    // Only when the route changed to another service, still without
                    // instances, while this request was held.
                    let e = GatewayError::NoInstance {
                        service: pool.service.clone(),
                        waited: now().saturating_duration_since(started),
                    };
                    fail(e, None, record, None)
                }
            };
        }
    }

    /// After a retriable failure with no instance left to try: wait, up to
    /// `timeout`, for `pool`'s service to have a ready instance that is not
    /// one of `failed`; the table that has one.
    async fn hold_for_another(
        &self,
        pool: &ServicePool,
        failed: &[&str],
        timeout: Duration,
    ) -> Option<Arc<RoutingTable>> {
        debug!(service = %pool.service, ?failed, "no instance left to retry on; holding the request for another");
        self.hold_until(pool, timeout, |p| {
            p.ready.iter().any(|b| !failed.contains(&b.id()))
        })
        .await
    }

    /// Wait for `pool`'s service to have a ready instance; the table that has one.
    async fn hold(&self, pool: &ServicePool) -> Option<Arc<RoutingTable>> {
        debug!(service = %pool.service, "no ready instance; holding the request");
        self.hold_until(pool, self.settings.hold_timeout, |p| !p.ready.is_empty())
            .await
    }

    /// Wait, up to `timeout`, until `pool`'s service satisfies `accept`; the
    /// table where it does. Counted as held while waiting (also when the
    /// client goes away meanwhile), and as a hold timeout if it never does.
    async fn hold_until(
        &self,
        pool: &ServicePool,
        timeout: Duration,
        accept: impl Fn(&ServicePool) -> bool,
    ) -> Option<Arc<RoutingTable>> {
        let counters = &pool.counters;
        counters.held_total.fetch_add(1, Ordering::Relaxed);
        counters.held_now.fetch_add(1, Ordering::Relaxed);
        struct Unhold<'a>(&'a std::sync::atomic::AtomicI64);
        impl Drop for Unhold<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _unhold = Unhold(&counters.held_now);
        let table = self.table.wait_for(&pool.service, timeout, accept).await;
        if table.is_none() {
            counters.hold_timeouts_total.fetch_add(1, Ordering::Relaxed);
            debug!(service = %pool.service, timeout_ms = timeout.as_millis() as u64, "held until the timeout; giving up");
        }
        table
    }

    /// Whether one more attempt may be made after `failure` (the retry
    /// rule, then attempts, instances and body left, then the budget),
    /// taking a retry token if so.
    fn retry_allowed(
        &self,
        failure: Failure,
        method: &Method,
        attempts: &Attempts,
        pool: &ServicePool,
        body: &Reclaimable<Incoming>,
        budget: &RetryBudget,
    ) -> bool {
        if !retry::may_retry(failure, method, attempts.second_chance_used) {
            return false;
        }
        if attempts.made >= attempts.max
            || attempts.made >= pool.ready.len()
            || !body.is_available()
        {
            return false;
        }
        if budget.try_withdraw(tokio::time::Instant::now()) {
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

    /// Whether the latest table shows `backend` draining or gone.
    fn is_leaving(&self, backend: &Backend) -> bool {
        let table = self.table.load();
        let current = table
            .pool(&backend.instance.service)
            .and_then(|pool| pool.all.iter().find(|b| b.id() == backend.id()));
        current.is_none_or(|b| b.instance.state == InstanceState::Draining)
    }

    /// A concurrency permit for `backend` when limits are on (ready at once
    /// when they are off).
    fn admit(
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

/// The instance's response on its way to the client.
fn respond(
    mut response: Response<PooledBody>,
    service: &str,
    instance: HeaderValue,
    set_cookie: bool,
    mut record: RequestRecord,
    mut attempt: AttemptRecord,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ResponseBody> {
    let status = response.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            attempt.set_status(Some(status.as_u16()));
            let id = attempt.backend().id().to_owned();
            let e = GatewayError::BadGateway {
                service: service.to_owned(),
                instance: id,
                cause: "101 Switching Protocols to a request that asked for no upgrade".into(),
            };
            return fail(e, Some(&instance), record, Some(attempt));
        };
        let instance_upgrade = hyper::upgrade::on(&mut response);
        upgrade::spawn_tunnel(
            client_upgrade,
            instance_upgrade,
            attempt.backend().id(),
            service,
        );
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    if set_cookie {
        parts.headers.append(
            SET_COOKIE,
            headers::sticky_cookie(service, attempt.backend().id()),
        );
    }
    parts.headers.insert(headers::X_SHOAL_INSTANCE, instance);
    record.set_status(Some(status.as_u16()));
    attempt.set_status(Some(status.as_u16()));
    Response::from_parts(parts, ResponseBody::from_instance(body, record, attempt))
}

/// A response the gateway made, with the request (and attempt) recorded.
fn fail(
    error: GatewayError,
    instance: Option<&HeaderValue>,
    mut record: RequestRecord,
    attempt: Option<AttemptRecord>,
) -> Response<ResponseBody> {
    record.set_status(Some(error.status().as_u16()));
    let response = error.to_response(instance);
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_records(Some(record), attempt))
}
