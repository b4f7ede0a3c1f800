//! Hedged requests ("backup requests", as Finagle calls them; "The Tail at
//! Scale", Dean & Barroso): when an attempt has waited longer than its
//! service's recent p99 time to response headers, the request is also sent
//! to another instance and the first response headers win.
//!
//! The rule ([`HedgePolicy::delay`], [`Exchange::hedge_at`]):
//! - only for idempotent methods ([`retry::is_idempotent`]) with an empty
//!   body (a streamed body cannot be sent twice), not for upgrades, and
//!   not on routes whose policy ties a request to one instance
//!   (consistent-hash, sticky): a hedge there would answer a key from
//!   another instance while its own is merely slow (the full suite's
//!   `balancing::consistent_hash_places_keys…` saw 1 of 1,000 keys answered
//!   elsewhere). A failed attempt there is still retried on the next
//!   instance, as before;
//! - the delay is the service's p99 ([`LatencySketch`](super::sketch::LatencySketch)) clamped to
//!   `--hedge-min-delay`..`--hedge-max-delay`; `--hedge-max-delay` until the
//!   sketch has an estimate; no hedge when the attempt's own deadline
//!   (response or per-try timeout) comes first;
//! - at most one hedge per round of attempts, only when an instance not
//!   tried yet is ready and an attempt is left (`--retries`), and only with
//!   a hedge token from the service's
//!   [`RetryBudget`](super::retry::RetryBudget): a retry token, within 2% of
//!   the last 10 s of requests plus one (no token, no hedge: counted in
//!   `retries_refused_total`), unless the first attempt's instance is
//!   ejected while the request waits on it ([`Budget::FirstEjected`]: then
//!   it is hedged at once, like a retry after a failure); with
//!   concurrency limits on, only when the other instance has a free permit
//!   at once;
//! - a request whose hedge the budget refused counts once as a failure of
//!   its instance if that instance has failed since its last answer and
//!   has answered nothing since the request was sent
//!   ([`Watch::until_ejected`]): a frozen instance is then ejected by the
//!   requests it holds, however few races the budget allowed, and a busy
//!   one, which answers the requests queued before, is not.
//!
//! The race ([`Inner::hedge`]): both attempts run until one has response
//! headers, which is relayed; the other is dropped, and with it its
//! connection (never returned to the pool mid-request). A failed attempt
//! (reset, refused) leaves the other to finish alone. When the hedge wins,
//! the first instance is recorded as failed for passive health (so a frozen
//! instance, which loses every race, is ejected after `--eject-after`
//! lost races in a row: the same evidence) and its peak-EWMA learns how
//! long it kept the request. A hedge the first attempt outran is recorded
//! as cancelled (499), not as the instance's failure. While it races, a
//! hedge is load on its instance (least-request sees it) but not a second
//! client request in flight (the `in_flight` the autoscaler scales on), so
//! a hedge never reads as extra demand; it counts as the request's once it
//! wins.
//!
//! Cost when no hedge fires: one atomic load and a comparison per request
//! (the attempt's timer is set to the hedge time instead of the deadline),
//! and one atomic add per response into the sketch; the race itself is a
//! boxed future entered only when the hedge time passes.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use http::Response;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::attempt::{Exchange, Pick, Plan};
use super::pool::{PooledBody, SendError};
use super::record::AttemptRecord;
use super::retry;
use super::{Inner, now};
use crate::backend::Backend;
use crate::config::Config;
use crate::health::{self, Outcome};
use crate::table::RoutingTable;

/// An attempt's result: response headers, a failed send, or (`None`) no
/// headers before its deadline.
pub(super) type Sent = Option<Result<Response<PooledBody>, SendError>>;

/// When to hedge (`--hedge`, `--hedge-min-delay`, `--hedge-max-delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgePolicy {
    pub enabled: bool,
    /// The shortest delay, whatever the p99: below it a hedge would chase noise.
    pub min_delay: Duration,
    /// The longest delay, and the delay before the service has an estimate.
    pub max_delay: Duration,
}

/// Hedging on, with the flags' defaults (see `Config::hedge`).
impl Default for HedgePolicy {
    fn default() -> Self {
        HedgePolicy {
            enabled: true,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl HedgePolicy {
    pub fn from_config(config: &Config) -> Self {
        HedgePolicy {
            enabled: config.hedge,
            min_delay: config.hedge_min_delay,
            max_delay: config.hedge_max_delay,
        }
    }

    /// How long an attempt waits before a hedge, given the service's p99.
    pub fn delay(&self, p99: Option<Duration>) -> Duration {
        p99.map_or(self.max_delay, |p| p.clamp(self.min_delay, self.max_delay))
    }
}

impl Exchange<'_> {
    /// When the attempt `pick` (deadline `deadline`) should be hedged, if it
    /// may be (see the module doc; the budget is asked only when it fires).
    #[inline(always)]
    pub fn hedge_at(&self, plan: &Plan<'_>, pick: &Pick, deadline: Instant) -> Option<Instant> {
        let policy = &self.proxy.settings.hedge;
        let attempts = &plan.attempts;
        let pool = &plan.entry.pool;
        if !policy.enabled
            || plan.entry.balancer.has_affinity()
            || attempts.hedged
            || attempts.made >= attempts.max
            || attempts.made >= pool.ready.len()
            || !retry::is_idempotent(&self.parts.method)
            || !self.body.is_empty()
            || self.client_upgrade.is_some()
        {
            return None;
        }
        let at = Instant::from_std(pick.sent_at) + policy.delay(pool.counters.latency.p99());
        (at < deadline).then_some(at)
    }

    /// The first attempt `pick` (with `attempt`) lost the race to a hedge,
    /// or failed while the hedge was on its way (`failed`).
    #[cold]
    pub fn outrun(&self, plan: &Plan<'_>, pick: Pick, mut attempt: AttemptRecord, failed: bool) {
        let now = now();
        let backend = &pick.backend;
        let waited = now.saturating_duration_since(pick.sent_at);
        backend.state.rtt.observe(waited, now);
        health::record(
            backend,
            Outcome::Failure,
            now,
            &self.proxy.settings.ejection,
        );
        if failed {
            attempt.set_status(None);
        }
        debug!(instance = backend.id(), service = %plan.entry.pool.service, waited_ms = waited.as_millis() as u64, failed, "outrun by a hedge");
    }
}

/// How the race ended.
enum Race {
    /// The first attempt's response, or its failure after the hedge's.
    First(Result<Response<PooledBody>, SendError>),
    /// The hedge's response, or its failure after the first one also failed.
    Hedge(Result<Response<PooledBody>, SendError>),
    /// The deadline came with at least one attempt still waiting.
    Expired,
}

impl Inner {
    /// The hedge time of the first attempt `first` (on its way in `send`)
    /// has passed: send the hedge, if the budget, an instance and a permit
    /// allow, and race the two until `deadline`. Returns the deciding
    /// result, with the hedge's pick and record when it is the hedge's, and
    /// whether the first attempt failed (the caller then calls
    /// [`Exchange::outrun`] for the first attempt).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn hedge<F>(
        &self,
        exchange: &mut Exchange<'_>,
        plan: &mut Plan<'_>,
        table: &RoutingTable,
        first: &Pick,
        mut send: Pin<&mut F>,
        mut expiry: Pin<&mut Sleep>,
        deadline: Instant,
    ) -> (Sent, Option<(Pick, AttemptRecord, bool)>)
    where
        F: Future<Output = Result<Response<PooledBody>, SendError>>,
    {
        expiry.as_mut().reset(deadline);
        plan.attempts.hedged = true;
        let mut budget = Budget::Ask;
        let (mut hedge, permit) = loop {
            match self.hedge_pick(exchange, plan, table, budget).await {
                Ok(picked) => break picked,
                Err(NoHedge::Budget) if budget == Budget::Ask => {
                    let watch = Watch {
                        first: &first.backend,
                        sent_at: first.sent_at,
                        recheck: self.settings.hedge.min_delay,
                        ejection: &self.settings.ejection,
                    };
                    match watch.until_ejected(send.as_mut(), expiry.as_mut()).await {
                        Waited::Done(sent) => return (*sent, None),
                        Waited::Ejected => budget = Budget::FirstEjected,
                    }
                }
                Err(_) => return (super::attempt::within(send, expiry).await, None),
            }
        };
        let counters = &plan.entry.pool.counters;
        counters.hedges_total.fetch_add(1, Ordering::Relaxed);
        let (mut record, _) = exchange.start(plan, &mut hedge, permit);
        record.race();
        debug!(instance = hedge.backend.id(), service = %plan.entry.pool.service, "hedging");
        let outgoing = exchange.outgoing(plan, super::body::AttemptBody::empty());
        let (race, first_failed, hedge_failed) = {
            let other = self.upstream.send(
                &hedge.backend,
                outgoing,
                hedge.sent_at,
                false,
                plan.entry.route.upstream_protocol,
            );
            let mut other = std::pin::pin!(other);
            let (mut first_failed, mut hedge_failed) = (false, false);
            let race = std::future::poll_fn(|cx| {
                if !first_failed && let Poll::Ready(sent) = send.as_mut().poll(cx) {
                    match decides(sent, hedge_failed) {
                        Some(result) => return Poll::Ready(Race::First(result)),
                        None => first_failed = true,
                    }
                }
                if !hedge_failed && let Poll::Ready(sent) = other.as_mut().poll(cx) {
                    match decides(sent, first_failed) {
                        Some(result) => return Poll::Ready(Race::Hedge(result)),
                        None => hedge_failed = true,
                    }
                }
                expiry.as_mut().poll(cx).map(|()| Race::Expired)
            })
            .await;
            (race, first_failed, hedge_failed)
        };
        let ejection = &self.settings.ejection;
        match race {
            Race::Hedge(result) => {
                if result.is_ok() {
                    counters.hedges_won_total.fetch_add(1, Ordering::Relaxed);
                }
                record.won();
                (Some(result), Some((hedge, record, first_failed)))
            }
            // The first attempt failed; the hedge ran out of time.
            Race::Expired if first_failed => {
                record.won();
                (None, Some((hedge, record, true)))
            }
            Race::First(result) => {
                if hedge_failed {
                    health::record(&hedge.backend, Outcome::Failure, now(), ejection);
                    record.set_status(None);
                }
                (Some(result), None)
            }
            Race::Expired => {
                if hedge_failed {
                    health::record(&hedge.backend, Outcome::Failure, now(), ejection);
                }
                record.set_status(None);
                (None, None)
            }
        }
    }

    /// The hedge's instance and its permit: a token from the budget (unless
    /// the first attempt's instance has been ejected meanwhile), an instance
    /// not tried yet, a permit at once if limits are on.
    async fn hedge_pick(
        &self,
        exchange: &mut Exchange<'_>,
        plan: &mut Plan<'_>,
        table: &RoutingTable,
        budget: Budget,
    ) -> Result<(Pick, Option<tokio::sync::OwnedSemaphorePermit>), NoHedge> {
        let counters = &plan.entry.pool.counters;
        if budget == Budget::Ask && !counters.retry_budget.try_hedge(Instant::now()) {
            counters
                .retries_refused_total
                .fetch_add(1, Ordering::Relaxed);
            debug!(service = %plan.entry.pool.service, "hedge or retry budget spent; hedging only if the instance is ejected");
            return Err(NoHedge::Budget);
        }
        let pick = exchange.pick(plan).ok_or(NoHedge::Unavailable)?;
        match self.admit(&pick.backend, table, Duration::ZERO).await {
            Ok(permit) => Ok((pick, permit)),
            Err(rejected) => {
                debug!(
                    instance = pick.backend.id(),
                    ?rejected,
                    "no permit for a hedge"
                );
                Err(NoHedge::Unavailable)
            }
        }
    }
}

/// Whether a hedge needs a token from the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    Ask,
    /// The first attempt's instance was ejected while it waited: passive
    /// health has judged it (a frozen instance loses every race), so the
    /// request is moved like a retry after a failure, whatever the budget
    /// says. Without this, the requests a frozen instance held beyond the
    /// budget's few hedges waited for their whole timeout.
    FirstEjected,
}

/// Why no hedge was sent.
enum NoHedge {
    Budget,
    /// No instance left to try, or no permit at once.
    Unavailable,
}

/// How waiting on a first attempt whose hedge the budget refused ended.
enum Waited {
    /// Its response, its failure, or (`None`) its deadline (boxed: a cold
    /// path, and the response is large).
    Done(Box<Sent>),
    /// Its instance was ejected first.
    Ejected,
}

/// A first attempt waiting past its hedge time with no hedge token.
struct Watch<'a> {
    /// Its instance.
    first: &'a Backend,
    /// When it was sent.
    sent_at: std::time::Instant,
    /// How often to look at the instance's health.
    recheck: Duration,
    ejection: &'a health::EjectionPolicy,
}

impl Watch<'_> {
    /// Wait for `send` until `expiry`, checking every `recheck` whether the
    /// first instance has been ejected. Once the instance has failed since
    /// its last success (it lost a race, say), has answered nothing since
    /// this request was sent, and is not ejected, this wait counts once as
    /// a failure there: the instance holds a request past the service's p99
    /// and answers nothing, which is how a frozen instance looks. Without
    /// this, a budget that allowed fewer hedges than `--eject-after` left
    /// the requests a frozen instance held to wait out their timeout.
    ///
    /// An instance that is merely busy answers the requests queued before
    /// this one, and so is not counted against. (Before the last
    /// condition, the requests queued on a busy instance that had lost one
    /// race each counted between two of its answers, and ejected it: the
    /// compose check saw one of two instances running CPU-bound requests
    /// ejected, and its load sent to the other.)
    async fn until_ejected<F>(&self, mut send: Pin<&mut F>, mut expiry: Pin<&mut Sleep>) -> Waited
    where
        F: Future<Output = Result<Response<PooledBody>, SendError>>,
    {
        let first = self.first;
        let mut ticks = tokio::time::interval(self.recheck.max(Duration::from_millis(1)));
        let mut counted = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(sent) = send.as_mut().poll(cx) {
                return Poll::Ready(Waited::Done(Box::new(Some(sent))));
            }
            if expiry.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Waited::Done(Box::new(None)));
            }
            while ticks.poll_tick(cx).is_ready() {
                let now = now();
                if first.state.is_ejected(now) {
                    return Poll::Ready(Waited::Ejected);
                }
                if !counted && !first.state.is_clean() && !first.state.answered_since(self.sent_at)
                {
                    counted = true;
                    debug!(instance = first.id(), service = %first.instance.service, "waiting past the hedge time on an instance that has failed and answered nothing since this request was sent");
                    health::record(first, Outcome::Failure, now, self.ejection);
                    if first.state.is_ejected(now) {
                        return Poll::Ready(Waited::Ejected);
                    }
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Whether an attempt's result ends the race: a response does, and so does
/// a failure once the other attempt has failed too; `None` for a failure
/// that leaves the other attempt to finish.
fn decides(
    sent: Result<Response<PooledBody>, SendError>,
    other_failed: bool,
) -> Option<Result<Response<PooledBody>, SendError>> {
    (sent.is_ok() || other_failed).then_some(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_the_p99_within_its_bounds() {
        let policy = HedgePolicy::default();
        assert_eq!(
            policy.delay(None),
            Duration::from_secs(1),
            "no estimate yet"
        );
        assert_eq!(
            policy.delay(Some(Duration::from_millis(1))),
            Duration::from_millis(10),
            "floor"
        );
        assert_eq!(
            policy.delay(Some(Duration::from_millis(42))),
            Duration::from_millis(42)
        );
        assert_eq!(
            policy.delay(Some(Duration::from_secs(9))),
            Duration::from_secs(1),
            "ceiling"
        );
    }
}
