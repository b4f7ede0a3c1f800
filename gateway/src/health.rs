//! Instance health as the gateway judges it, on top of the registry's `ready`.
//!
//! Passive ([`record`]): every attempt's outcome is recorded. `--eject-after`
//! consecutive failures eject the instance for `--eject-base`, doubled for
//! each further ejection in a row, up to [`MAX_EJECTION`]. A failure is a
//! connect error, a reset before response headers, a response timeout, or a
//! 502/503/504 from the instance; a 503 from an instance that is already
//! draining is not (it is leaving, and saying so). A success clears the
//! failure count; the first success after an ejection has run out also
//! clears the ejection streak, so the next ejection starts at the base again.
//! Failures while ejected are ignored: they come from requests sent before.
//!
//! Active (optional, `--health-check-interval` > 0; [`spawn_active_checks`]):
//! `GET /healthz` on every ready instance each interval, at most
//! [`MAX_CONCURRENT_CHECKS`] at once. As pingora does, the
//! state flips only after a run of results: `--eject-after` failures in a row
//! eject the instance until a check passes; one passing check restores it.
//!
//! Ejected instances are skipped by every balancing policy unless all are
//! ejected (see [`balance`](crate::balance)).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backend::{Backend, Health};
use crate::config::Config;
use crate::proxy::HttpClient;
use crate::proxy::body::AttemptBody;
use crate::table::TableHandle;

/// Longest passive ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(30);
/// How long an active-check ejection is set for; it is lifted by the first
/// passing check, so this only matters if checks stop.
const ACTIVE_EJECTION: Duration = Duration::from_secs(3600);

/// When failures eject an instance and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject (0 turns ejection off).
    pub after: u32,
    pub base: Duration,
    pub max: Duration,
}

impl EjectionPolicy {
    pub fn from_config(config: &Config) -> Self {
        EjectionPolicy {
            after: config.eject_after,
            base: config.eject_base,
            max: MAX_EJECTION,
        }
    }

    /// Length of the ejection that follows `previous` ejections in a row.
    pub fn period(&self, previous: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << previous.min(20))
            .min(self.max)
    }
}

/// What one attempt said about an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// What an outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    Ejected {
        period: Duration,
        streak: u32,
    },
    /// First success after an ejection ran out.
    Recovered,
}

/// Apply one outcome to an instance's health (pure; [`record`] locks and logs).
pub fn apply(
    health: &mut Health,
    outcome: Outcome,
    now: Instant,
    policy: &EjectionPolicy,
) -> Transition {
    let ejected = health.ejected_until.is_some_and(|until| until > now);
    match outcome {
        Outcome::Success => {
            health.consecutive_failures = 0;
            if !ejected && health.ejections > 0 {
                health.ejections = 0;
                health.ejected_until = None;
                return Transition::Recovered;
            }
            Transition::Unchanged
        }
        Outcome::Failure if ejected || policy.after == 0 => Transition::Unchanged,
        Outcome::Failure => {
            health.consecutive_failures += 1;
            if health.consecutive_failures < policy.after {
                return Transition::Unchanged;
            }
            let period = policy.period(health.ejections);
            health.consecutive_failures = 0;
            health.ejections += 1;
            health.ejected_until = Some(now + period);
            Transition::Ejected {
                period,
                streak: health.ejections,
            }
        }
    }
}

/// Record an attempt's outcome on `backend` (a success also as its last
/// answer, [`BackendState::answered`](crate::backend::BackendState::answered)), logging ejections.
pub fn record(backend: &Backend, outcome: Outcome, now: Instant, policy: &EjectionPolicy) {
    if outcome == Outcome::Failure
        && let Some(unconfirmed) = &backend.unconfirmed
    {
        // Left the registry and now failing: not coming back; drop it.
        unconfirmed.fail();
    }
    if outcome == Outcome::Success {
        backend.state.answered(now);
        if backend.state.is_clean() {
            // Nothing else to change (and no lock taken: the common case).
            return;
        }
    }
    let transition = backend
        .state
        .update_health(|health| apply(health, outcome, now, policy));
    log(backend, transition);
}

fn log(backend: &Backend, transition: Transition) {
    let (instance, service) = (backend.id(), &backend.instance.service);
    match transition {
        Transition::Unchanged => {}
        Transition::Ejected { period, streak } => warn!(
            instance,
            %service,
            period_ms = period.as_millis() as u64,
            streak,
            "instance ejected after consecutive failures"
        ),
        Transition::Recovered => info!(instance, %service, "ejected instance answers again"),
    }
}

/// Active-check results of one instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ActiveState {
    pub failures: u32,
    /// Ejected by these checks (and not by passive failures).
    pub ejected: bool,
}

/// What one check result asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveVerdict {
    Unchanged,
    Eject,
    Restore,
}

/// Pure threshold logic of the active checks.
pub fn judge(state: &mut ActiveState, passed: bool, threshold: u32) -> ActiveVerdict {
    if passed {
        state.failures = 0;
        if std::mem::take(&mut state.ejected) {
            return ActiveVerdict::Restore;
        }
        return ActiveVerdict::Unchanged;
    }
    state.failures = state.failures.saturating_add(1);
    if !state.ejected && threshold > 0 && state.failures >= threshold {
        state.ejected = true;
        return ActiveVerdict::Eject;
    }
    ActiveVerdict::Unchanged
}

/// Most active checks in flight at once. A round over 10,000 instances
/// then opens at most this many connections, not 10,000 at one instant
/// (file descriptors, and a burst of connects on the instances); healthy
/// instances on one network answer a round of 10,000 in about a second.
/// Instances that hang cost a round up to the check timeout per this many,
/// and the next round starts when the last ends.
pub const MAX_CONCURRENT_CHECKS: usize = 128;

/// Check every ready instance's `/healthz` each `interval` until `stop`, at
/// most [`MAX_CONCURRENT_CHECKS`] at once.
pub fn spawn_active_checks(
    table: TableHandle,
    client: HttpClient,
    interval: Duration,
    threshold: u32,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let span = info_span!("health_checks", interval_ms = interval.as_millis() as u64);
    tokio::spawn(
        async move {
            let timeout = interval.min(Duration::from_secs(5));
            let mut states: HashMap<String, ActiveState> = HashMap::new();
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let snapshot = table.load();
                let backends: Vec<Arc<Backend>> = snapshot
                    .pools
                    .values()
                    .flat_map(|pool| pool.ready.iter().cloned())
                    .collect();
                // A set: a scan per state was 10^8 comparisons a tick at 10,000 instances.
                let live: HashSet<&str> = backends.iter().map(|b| b.id()).collect();
                states.retain(|id, _| live.contains(id.as_str()));
                // Collected first: a stream over the closure does not
                // satisfy the spawned future's lifetime bounds.
                let round: Vec<_> = backends
                    .iter()
                    .map(|b| check(&client, b, timeout))
                    .collect();
                let results: Vec<bool> = futures::stream::iter(round)
                    .buffered(MAX_CONCURRENT_CHECKS)
                    .collect()
                    .await;
                for (backend, passed) in backends.iter().zip(results) {
                    let state = states.entry(backend.id().to_owned()).or_default();
                    let verdict = judge(state, passed, threshold);
                    apply_verdict(backend, verdict, crate::proxy::now());
                }
            }
        }
        .instrument(span),
    )
}

fn apply_verdict(backend: &Backend, verdict: ActiveVerdict, now: Instant) {
    let (instance, service) = (backend.id(), &backend.instance.service);
    match verdict {
        ActiveVerdict::Unchanged => {}
        ActiveVerdict::Eject => {
            let until = now + ACTIVE_EJECTION;
            backend.state.update_health(|health| {
                health.ejected_until = Some(health.ejected_until.map_or(until, |u| u.max(until)));
            });
            warn!(instance, %service, "instance ejected: /healthz failed repeatedly");
        }
        ActiveVerdict::Restore => {
            backend.state.update_health(|health| {
                health.ejected_until = None;
                health.consecutive_failures = 0;
            });
            info!(instance, %service, "instance restored: /healthz passes again");
        }
    }
}

/// One `GET /healthz`; true on a 2xx within `timeout`.
async fn check(client: &HttpClient, backend: &Backend, timeout: Duration) -> bool {
    let addr = &backend.instance.addr;
    let request = match Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}/healthz"))
        .header(http::header::HOST, addr.as_str())
        .header(http::header::USER_AGENT, "shoal-gateway-health")
        .body(AttemptBody::empty())
    {
        Ok(request) => request,
        Err(e) => {
            warn!(instance = backend.id(), %addr, error = %e, "cannot build a health check request for this address");
            return false;
        }
    };
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status();
        // Read the (small) body so the connection can be reused.
        response.into_body().collect().await?;
        Ok::<StatusCode, Box<dyn std::error::Error + Send + Sync>>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) if status.is_success() => true,
        Ok(Ok(status)) => {
            debug!(instance = backend.id(), %status, "health check failed");
            false
        }
        Ok(Err(e)) => {
            debug!(instance = backend.id(), error = %e, "health check failed");
            false
        }
        Err(_) => {
            debug!(
                instance = backend.id(),
                timeout_ms = timeout.as_millis() as u64,
                "health check timed out"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::get;
    use registry::model::BalancePolicy;
    use registry::{Instance, InstanceState};
    use tokio::time::advance;

    use crate::table::{Defaults, LiveState};
    use crate::testing::serve_router;

    fn policy() -> EjectionPolicy {
        EjectionPolicy {
            after: 3,
            base: Duration::from_secs(1),
            max: MAX_EJECTION,
        }
    }

    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn fail(h: &mut Health, times: u32) -> Transition {
        let mut last = Transition::Unchanged;
        for _ in 0..times {
            last = apply(h, Outcome::Failure, now(), &policy());
        }
        last
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let p = policy();
        let periods: Vec<u64> = (0..8).map(|n| p.period(n).as_secs()).collect();
        assert_eq!(periods, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(p.period(u32::MAX), MAX_EJECTION);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_with_growing_back_off() {
        let mut h = Health::default();
        assert_eq!(fail(&mut h, 2), Transition::Unchanged);
        assert_eq!(
            fail(&mut h, 1),
            Transition::Ejected {
                period: Duration::from_secs(1),
                streak: 1
            }
        );
        // Failures of requests sent before the ejection do not extend it.
        assert_eq!(fail(&mut h, 5), Transition::Unchanged);
        advance(Duration::from_millis(999)).await;
        assert!(h.ejected_until.unwrap() > now(), "still ejected");
        advance(Duration::from_millis(1)).await;
        assert!(h.ejected_until.unwrap() <= now(), "back after 1 s");

        // Still failing: the next ejection is twice as long, and so on.
        assert_eq!(
            fail(&mut h, 3),
            Transition::Ejected {
                period: Duration::from_secs(2),
                streak: 2
            }
        );
        advance(Duration::from_secs(2)).await;
        assert_eq!(
            fail(&mut h, 3),
            Transition::Ejected {
                period: Duration::from_secs(4),
                streak: 3
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_counts() {
        let mut h = Health::default();
        fail(&mut h, 2);
        assert_eq!(
            apply(&mut h, Outcome::Success, now(), &policy()),
            Transition::Unchanged
        );
        assert_eq!(
            fail(&mut h, 2),
            Transition::Unchanged,
            "the count started over"
        );
        fail(&mut h, 1);
        assert_eq!(h.ejections, 1);
        // A success while ejected (a request sent before) keeps the ejection.
        apply(&mut h, Outcome::Success, now(), &policy());
        assert!(h.ejected_until.unwrap() > now());
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            apply(&mut h, Outcome::Success, now(), &policy()),
            Transition::Recovered
        );
        assert_eq!((h.ejections, h.ejected_until), (0, None));
        assert_eq!(
            fail(&mut h, 3),
            Transition::Ejected {
                period: Duration::from_secs(1),
                streak: 1
            },
            "after a recovery the back-off starts at the base again"
        );
    }

    #[test]
    fn zero_threshold_never_ejects() {
        let mut h = Health::default();
        let off = EjectionPolicy {
            after: 0,
            ..policy()
        };
        for _ in 0..100 {
            assert_eq!(
                apply(&mut h, Outcome::Failure, Instant::now(), &off),
                Transition::Unchanged
            );
        }
    }

    #[test]
    fn active_checks_flip_after_a_run_and_one_pass_restores() {
        let mut s = ActiveState::default();
        assert_eq!(judge(&mut s, false, 3), ActiveVerdict::Unchanged);
        assert_eq!(judge(&mut s, false, 3), ActiveVerdict::Unchanged);
        assert_eq!(
            judge(&mut s, true, 3),
            ActiveVerdict::Unchanged,
            "a pass resets the run"
        );
        assert_eq!(judge(&mut s, false, 3), ActiveVerdict::Unchanged);
        assert_eq!(judge(&mut s, false, 3), ActiveVerdict::Unchanged);
        assert_eq!(judge(&mut s, false, 3), ActiveVerdict::Eject);
        assert_eq!(
            judge(&mut s, false, 3),
            ActiveVerdict::Unchanged,
            "ejected once"
        );
        assert_eq!(judge(&mut s, true, 3), ActiveVerdict::Restore);
        assert_eq!(judge(&mut s, true, 3), ActiveVerdict::Unchanged);
    }

    /// A table of `n` ready instances of `app` (`i-0`..), all at `addr`.
    fn table_of(n: usize, addr: SocketAddr) -> TableHandle {
        let instances: BTreeMap<String, Instance> = (0..n)
            .map(|i| {
                let mut instance = Instance::new("app", addr.to_string());
                instance.id = format!("i-{i}");
                instance.state = InstanceState::Ready;
                (format!("/shoal/instances/app/i-{i}"), instance)
            })
            .collect();
        let defaults = Defaults {
            service: "app".into(),
            policy: BalancePolicy::RoundRobin,
        };
        let table = LiveState::default().build(
            &instances,
            &BTreeMap::new(),
            &defaults,
            true,
            1,
            Instant::now(),
        );
        TableHandle::new(table).0
    }

    fn checks(table: TableHandle, interval: Duration, stop: &CancellationToken) -> JoinHandle<()> {
        let client = crate::proxy::forward::client(Duration::from_secs(1), Duration::from_secs(4));
        spawn_active_checks(table, client, interval, 2, stop.clone())
    }

    #[tokio::test]
    async fn a_failing_healthz_ejects_after_the_threshold_and_one_pass_restores() {
        let sick = Arc::new(AtomicBool::new(true));
        let answers = sick.clone();
        let addr = serve_router(Router::new().route(
            "/healthz",
            get(move || {
                let sick = answers.load(Ordering::SeqCst);
                async move {
                    match sick {
                        true => StatusCode::SERVICE_UNAVAILABLE,
                        false => StatusCode::OK,
                    }
                }
            }),
        ))
        .await;
        let table = table_of(1, addr);
        let backend = table.load().pool("app").unwrap().all[0].clone();
        let stop = CancellationToken::new();
        let task = checks(table, Duration::from_millis(20), &stop);
        crate::testing::poll("ejected by failing checks", async || {
            match backend.state.is_ejected(crate::proxy::now()) {
                true => Ok(()),
                false => Err(format!("{:?}", backend.state.health())),
            }
        })
        .await;
        sick.store(false, Ordering::SeqCst);
        crate::testing::poll("restored by a passing check", async || {
            match backend.state.is_ejected(crate::proxy::now()) {
                false => Ok(()),
                true => Err(format!("{:?}", backend.state.health())),
            }
        })
        .await;
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_round_keeps_at_most_the_concurrency_limit_of_checks_in_flight() {
        #[derive(Default)]
        struct Seen {
            now: AtomicUsize,
            most: AtomicUsize,
            total: AtomicUsize,
        }
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        let addr = serve_router(Router::new().route(
            "/healthz",
            get(move || {
                let seen = counts.clone();
                async move {
                    let now = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    seen.now.fetch_sub(1, Ordering::SeqCst);
                    seen.total.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            }),
        ))
        .await;
        let instances = 3 * MAX_CONCURRENT_CHECKS;
        let stop = CancellationToken::new();
        // One round: the first tick is at once, the next an hour later.
        let task = checks(table_of(instances, addr), Duration::from_secs(3600), &stop);
        crate::testing::poll("a round over every instance", async || {
            match seen.total.load(Ordering::SeqCst) {
                n if n >= instances => Ok(()),
                n => Err(format!("{n} of {instances} checked")),
            }
        })
        .await;
        let most = seen.most.load(Ordering::SeqCst);
        assert!(
            (2..=MAX_CONCURRENT_CHECKS).contains(&most),
            "{most} checks in flight at once"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
