//! The request handler: from a client's request to an instance's response.
//!
//! [`Proxy::handle`] takes one request through these steps, each in a file
//! of its own, run in order by `Inner::serve`:
//! 1. Resolve ([`resolve`]): take the request apart and resolve its route in
//!    the current [`RoutingTable`](crate::table::RoutingTable) snapshot
//!    from the target's authority (absolute-form, HTTP/2) or the `Host`
//!    header, and the path; 400 for a request it cannot route or whose host
//!    is missing, doubled, malformed or ambiguous (the framing rules are in
//!    [`resolve`]'s doc). Refuse a declared body over `--max-body-bytes` (413).
//!    A route with `https_redirect` answers a plain-HTTP request with a 308
//!    to HTTPS here ([`redirect`]); a route with a `rate_limit` answers a
//!    request over it with 429 and `Retry-After`
//!    ([`rate_limit`](crate::rate_limit)).
//! 2. Hold ([`hold`]): if the service has no ready instance, hold the request
//!    until one registers, up to `--hold-timeout` (scale from zero), else 503.
//! 3. Attempt ([`attempt`]): pick an instance with the route's policy, wait
//!    for a concurrency permit if limits are on ([`limit`]), send the request
//!    on a pooled connection ([`pool`]) with the response (or per-try)
//!    timeout, and classify the result: on failure, retry on another
//!    instance when [`retry`] allows; record every attempt's outcome for
//!    passive [`health`](crate::health) and its latency in the instance's
//!    peak-EWMA.
//! 4. Hold again ([`hold`]): when the last failure could be retried but no
//!    other instance is left to try (a refused connection, so nothing was
//!    sent; or, for an idempotent request, a reset), hold the request until
//!    the registry offers an instance not tried yet, within the same
//!    `--hold-timeout`, then attempt again: the only instance of a service
//!    was killed and its replacement is on the way.
//! 5. Answer ([`answer`]): stream the response back with `x-shoal-instance`
//!    (and the sticky cookie when the policy asks), or join both sides of an
//!    upgrade ([`upgrade`]); or answer with the gateway's own error.
//!
//! Routes with `"upstream_protocol": "h2c"` are sent over the instance's
//! one multiplexed HTTP/2 connection ([`h2c`]), with a replayable body
//! so that a stream the instance refused unprocessed can be retried; a
//! gRPC call the gateway answers itself gets a gRPC status ([`grpc`]).
//!
//! Other files: [`headers`] (rewriting), [`forwarded`] (`X-Forwarded-*`,
//! `Forwarded`, `--trusted-proxies`), [`body`] (reclaimable, limited
//! request body), [`response`] (response body carrying the stats guards),
//! [`record`] (the guards), [`forward`] (the request an instance is sent,
//! and what a failed send means), [`limit`] (body size, per-instance
//! concurrency), [`error`] (the gateway's own JSON errors), [`live_map`]
//! (state kept across snapshots), [`timer`] (the response timer a
//! connection's requests reuse), [`trace`] (`x-request-id` and
//! `traceparent`: decided in step 1, set on the instance's request once its
//! headers are rewritten), [`hedge`] (an attempt slower than its
//! service's recent p99 raced by a second one; in step 3) and [`sketch`]
//! (that p99).
//!
//! `x-shoal-instance` on a response the gateway made names the last instance
//! the request was sent to (the one that timed out or failed), or is `-` when
//! no instance was involved (400, 413 on Content-Length, hold timeout).

pub mod answer;
pub mod attempt;
pub mod body;
pub mod error;
pub mod forward;
pub mod forwarded;
pub mod grpc;
pub mod h2c;
pub mod headers;
pub mod hedge;
pub mod hold;
pub mod limit;
pub mod live_map;
pub mod pool;
pub mod record;
pub mod redirect;
pub mod resolve;
pub mod response;
pub mod retry;
pub mod sketch;
pub mod timer;
pub mod trace;
pub mod upgrade;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use registry::model::UpstreamProtocol;
use tokio_util::sync::CancellationToken;

use crate::access_log::{AccessLog, Entry};
use crate::config::Config;
use crate::health::EjectionPolicy;
use crate::rate_limit::Verdict;
use crate::table::{self, TableHandle};
use answer::{fail, respond};
use attempt::{Attempted, Exchange, answered, within};
pub use error::GatewayError;
pub use forward::HttpClient;
pub use forwarded::{Peer, TrustedProxies};
pub use hedge::HedgePolicy;
use limit::InstanceLimit;
use live_map::LiveMap;
use pool::Upstream;
use record::RequestRecord;
use resolve::HostSource;
pub use response::ResponseBody;
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
    /// `--upstream-idle-timeout`: idle connections to instances.
    pub upstream_idle_timeout: Duration,
    pub retries: u32,
    pub max_body_bytes: u64,
    pub max_inflight_per_instance: u32,
    pub queue_per_instance: u32,
    pub ejection: EjectionPolicy,
    pub hedge: HedgePolicy,
    /// `--trusted-proxies`.
    pub trusted_proxies: TrustedProxies,
    /// `--trace-headers`: set `x-request-id` and `traceparent` ([`trace`]).
    pub trace_headers: bool,
    /// `--access-log`, when on (opened by the caller: it can fail).
    pub access_log: Option<AccessLog>,
    /// The `--tls-listen` port, for `https_redirect` routes' `Location`
    /// (443 when unset).
    pub https_port: Option<u16>,
    /// Live gateways in the registry (at least 1), which `shared` rate
    /// limits are divided by; kept up to date by the caller.
    pub live_gateways: Arc<AtomicUsize>,
}

impl ProxySettings {
    pub fn from_config(config: &Config) -> Self {
        ProxySettings {
            hold_timeout: config.hold_timeout,
            slow_start: config.slow_start,
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            try_timeout: config.try_timeout,
            upstream_idle_timeout: config.upstream_idle_timeout,
            retries: config.retries,
            max_body_bytes: config.max_body_bytes,
            max_inflight_per_instance: config.max_inflight_per_instance,
            queue_per_instance: config.queue_per_instance,
            ejection: EjectionPolicy::from_config(config),
            hedge: HedgePolicy::from_config(config),
            trusted_proxies: TrustedProxies::new(config.trusted_proxies.clone()),
            trace_headers: config.trace_headers,
            access_log: None,
            https_port: None,
            live_gateways: Arc::new(AtomicUsize::new(1)),
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
        let client = forward::client(settings.connect_timeout, settings.upstream_idle_timeout);
        Proxy {
            inner: Arc::new(Inner {
                table,
                client,
                upstream: Upstream::new(settings.connect_timeout, settings.upstream_idle_timeout),
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

    /// Start closing idle connections to instances past
    /// `--upstream-idle-timeout`, traffic or not, until `stop`
    /// ([`pool::spawn_idle_sweeper`]).
    pub fn spawn_idle_sweeper(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        pool::spawn_idle_sweeper(
            self.inner.table.clone(),
            self.inner.settings.upstream_idle_timeout,
            stop,
        )
    }

    /// Serve one request from a client connection's `peer`. Never fails:
    /// every problem becomes a JSON error response (for a gRPC call, a
    /// gRPC status: [`grpc`]). `timer` is the client
    /// connection's response timer, reused by its requests.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: &Peer,
        timer: &ResponseTimer,
    ) -> Response<ResponseBody> {
        // gRPC calls are POSTs: other requests skip the header lookup.
        let grpc = request.method() == http::Method::POST && grpc::is_grpc(request.headers());
        // Boxed once here, so that the layers above (and hyper) move a
        // pointer rather than the whole request state.
        let mut response = Box::pin(self.inner.serve(request, peer, timer)).await;
        // The gateway's own answer to a gRPC call: in gRPC's terms.
        if grpc && let Some(error) = response.extensions_mut().remove::<GatewayError>() {
            response = grpc::trailers_only(&error, response);
        }
        response
    }
}

impl Inner {
    /// One request, step by step (see the module doc).
    async fn serve(
        &self,
        request: Request<Incoming>,
        peer: &Peer,
        timer: &ResponseTimer,
    ) -> Response<ResponseBody> {
        let started = now();
        // 1. Resolve the route.
        let source = match HostSource::of(&request) {
            Ok(source) => source,
            Err(e) => return e.to_response(None),
        };
        let mut exchange = match Exchange::new(self, started, request) {
            Ok(exchange) => exchange,
            Err(e) => return e.to_response(None),
        };
        let host = source.host();
        let first_table = self.table.load();
        let first = first_table.resolve(host, exchange.parts.uri.path());
        let mut record = RequestRecord::start(&first.stats, &first.pool.counters, started);
        if let Some(log) = &self.settings.access_log {
            record.log_to(self.log_entry(log, peer, &exchange.parts, host, first));
        }
        if self.settings.trace_headers {
            record.set_trace(trace::read(&exchange.parts.headers));
        }
        if first.route.https_redirect {
            let trusted = self.settings.trusted_proxies.contains(peer.ip);
            if redirect::wanted(peer, trusted, &exchange.parts.headers) {
                let port = self.settings.https_port.unwrap_or(443);
                return match redirect::location(host, &exchange.parts.uri, port) {
                    Ok(location) => answer::redirect(redirect::STATUS, location, record),
                    Err(e) => fail(e, None, record, None),
                };
            }
        }
        if let Some(limiter) = &first.limiter {
            let parts = &exchange.parts;
            let trusted = &self.settings.trusted_proxies;
            let client = || forwarded::client_address(peer.ip, &parts.headers, trusted);
            let key = limiter.key(client, &parts.headers);
            let gateways = self.settings.live_gateways.load(Ordering::Relaxed);
            if let Verdict::Limited { retry_after } = limiter.check(key, started, gateways) {
                let e = GatewayError::RateLimited {
                    route: first.name.clone(),
                    per_second: limiter.limit().per_second,
                    retry_after,
                };
                return fail(e, None, record, None);
            }
        }
        if let Err(e) =
            limit::check_content_length(&exchange.parts.headers, self.settings.max_body_bytes)
        {
            return fail(e, None, record, None);
        }
        let h2c = first.route.upstream_protocol == UpstreamProtocol::H2c;
        if h2c && exchange.client_upgrade.is_some() {
            let e = GatewayError::BadRequest(format!(
                "route `{}` speaks h2c to its instances, which cannot carry an HTTP/1.1 upgrade (WebSocket); send the upgrade to a route with \"upstream_protocol\": \"http1\"",
                first.name
            ));
            return fail(e, None, record, None);
        }
        if h2c || first.route.idempotent {
            // A stream the instance refused unprocessed, or (idempotent
            // route) a request cut off, can be sent again with its body.
            exchange.body.replayable(h2c::REPLAY_LIMIT);
        }

        // 2. Hold while the service has no ready instance. The first attempt
        // reuses the request's clock reading, unless the request was held.
        // Replaced when the request is held and a newer table answers.
        let mut table = first_table.clone();
        if first.pool.ready.is_empty() {
            let pool = first.pool.clone();
            exchange.clock = None;
            // Boxed, here and on the other rare paths: the request's future
            // is moved several times on its way into hyper, so what it
            // carries inline is copied on every request.
            let held = Box::pin(self.hold(&pool)).await;
            record.held(now().saturating_duration_since(started));
            match held {
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
        let parts = &mut exchange.parts;
        let upgrade = exchange.client_upgrade.is_some();
        let trusted = self.settings.trusted_proxies.contains(peer.ip);
        headers::prepare_request(&mut parts.headers, &parts.uri, upgrade, peer, trusted);
        if let Some(ids) = record.trace() {
            trace::set(&mut parts.headers, ids);
        }
        loop {
            let entry = if Arc::ptr_eq(&table, &first_table) {
                first
            } else {
                table.resolve(host, exchange.parts.uri.path())
            };
            // 3. Attempts on this table's instances: pick, admit, send, classify.
            let mut plan = exchange.plan(entry);
            while let Some(mut pick) = exchange.pick(&mut plan) {
                let permit = match self.admit(&pick.backend, &table, plan.timeout).await {
                    Ok(permit) => permit,
                    Err(rejected) => return exchange.overloaded(&plan, &pick, rejected, record),
                };
                let Some(body) = exchange.body.attempt() else {
                    break; // not reached: a retry is only chosen while the body is available
                };
                let outgoing = exchange.outgoing(&plan, body);
                let (attempt, deadline) = exchange.start(&plan, &mut pick, permit);
                record.attempted();
                let hedge_at = exchange.hedge_at(&plan, &pick, deadline);
                let mut expiry = timer.start(hedge_at.unwrap_or(deadline));
                let (result, hedge) = {
                    let send = self.upstream.send(
                        &pick.backend,
                        outgoing,
                        pick.sent_at,
                        upgrade,
                        entry.route.upstream_protocol,
                    );
                    tokio::pin!(send);
                    match within(send.as_mut(), expiry.as_mut()).await {
                        // The hedge time passed with no response headers.
                        None if hedge_at.is_some() => {
                            let race = self.hedge(
                                &mut exchange,
                                &mut plan,
                                &table,
                                &pick,
                                send,
                                expiry.as_mut(),
                                deadline,
                            );
                            let raced = Box::pin(race).await;
                            if let Some(log) = record.log() {
                                log.hedged |= plan.attempts.hedged;
                            }
                            raced
                        }
                        result => (result, None),
                    }
                };
                timer.finish(expiry, deadline);
                let (pick, attempt) = match hedge {
                    Some((hedge, record, first_failed)) => {
                        exchange.outrun(&plan, pick, attempt, first_failed);
                        (hedge, record)
                    }
                    None => (pick, attempt),
                };
                if !answered(&result) {
                    // A retry may need the body back from hyper's send task.
                    // Boxed: a failure path, kept out of every request's future.
                    Box::pin(exchange.body.handed_back(body::HAND_BACK_WAIT)).await;
                }
                match exchange.classify(&mut plan, pick, attempt, result) {
                    // 5. Answer.
                    Attempted::Answered(answer) => {
                        let upgrade = exchange.client_upgrade.take();
                        return respond(answer, &entry.pool.service, record, upgrade);
                    }
                    Attempted::Failed(e, instance, attempt) => {
                        return fail(e, Some(&instance), record, attempt);
                    }
                    Attempted::Again => {}
                    Attempted::NoneLeft => break,
                }
            }
            // 4. Hold again, for an instance not tried yet.
            if let Some(left) = exchange.hold_again(&plan) {
                let failed: Vec<&str> = exchange.failed_on.iter().map(|b| b.id()).collect();
                let holding = now();
                let held = Box::pin(self.hold_for_another(&entry.pool, &failed, left)).await;
                record.held(now().saturating_duration_since(holding));
                if let Some(newer) = held {
                    table = newer;
                    continue;
                }
            }
            // 5. Answer with the last failure.
            return exchange.give_up(plan, record);
        }
    }

    /// The access log entry of a request arriving from `peer` (before its
    /// headers are rewritten: the client address may come from them).
    #[cold]
    fn log_entry(
        &self,
        log: &AccessLog,
        peer: &Peer,
        parts: &http::request::Parts,
        host: Option<&str>,
        route: &table::RouteEntry,
    ) -> Box<Entry> {
        let client =
            forwarded::client_address(peer.ip, &parts.headers, &self.settings.trusted_proxies);
        let mut entry = Entry::start(
            log,
            client,
            &parts.method,
            host,
            parts.uri.path(),
            &route.name,
            &route.pool.service,
        );
        // The client's ids, as they pass through; with --trace-headers the
        // ones the instance gets replace them.
        entry.request_id = headers::get(&parts.headers, &trace::X_REQUEST_ID).cloned();
        entry.traceparent = headers::get(&parts.headers, &trace::TRACEPARENT).cloned();
        entry
    }
}
