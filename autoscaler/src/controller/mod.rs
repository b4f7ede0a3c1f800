//! The controller: each tick, for every service with a policy, count what is
//! running, decide, and act — start instances, retire them through the
//! registry, reap the ones that left, and replace the ones that died.
//!
//! - [`observe`]: the tick's inputs (policies, registry, gateway load, `/load` CPU).
//! - [`count`]: which owned instances make up the current size, and which need care.
//! - [`retire`]: which instances a scale-down retires.
//! - [`rollout`]: rolling restarts, a few instances at a time.
//! - [`backoff`]: crash-loop back-off for replacements.
//! - [`journal`]: fenced writes (events with a bounded history, retire keys).
//! - [`event`]: the shape of a `ScalingEvent`.
//!
//! A tick plans first, commits every event and retire key of a service in one
//! transaction fenced on leadership, and only then starts or stops anything,
//! so a deposed leader does nothing. Instances whose service has no policy
//! are left alone. Histories (recommendations, changes) live in memory. A
//! history that starts empty (a new leadership term, a new policy) is seeded
//! with the current count, so a new leader waits a whole scale-down window
//! before removing anything rather than none at all.

pub mod backoff;
pub mod count;
pub mod event;
pub mod journal;
pub mod observe;
pub mod retire;
pub mod rollout;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use registry::model::{Rollout, ScalingEvent, ScalingMetric, ScalingPolicy};
use registry::spec::Service;
use registry::{Instance, InstanceState};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::collect::ServiceLoad;
use crate::decide::{Inputs, InstanceLoad, decide};
use crate::driver::{Driver, Owned, StartSpec};
use backoff::Backoff;
use count::{Facts, Rules, Verdict, judge};
use journal::{Journal, JournalError, KEEP_EVENTS, Write, sequence};
use observe::Observed;

/// How long past its grace a stop may take before it is tried again.
const STOP_RETRY_MARGIN: Duration = Duration::from_secs(15);

/// Timings of the controller's lifecycle rules.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a started instance may take to register before it is replaced.
    pub startup_grace: Duration,
    /// Instances' lease TTL: a registered instance missing for 2 × this is lost.
    pub lease_ttl: Duration,
    /// How long a retired instance has to drain and leave before it is stopped.
    pub retire_deadline: Duration,
    /// SIGTERM-to-SIGKILL grace when stopping an instance past its deadline.
    pub stop_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            startup_grace: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(5),
            retire_deadline: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// What the controller remembers of one instance it owns.
#[derive(Debug, Clone)]
struct Tracking {
    started: Instant,
    ever_registered: bool,
    missing_since: Option<Instant>,
    /// It has been seen registered `ready`.
    seen_ready: bool,
}

/// A replacement waiting for its crash-loop delay.
#[derive(Debug, Clone)]
struct Pending {
    due: Instant,
}

/// Per-service memory.
#[derive(Debug, Default)]
struct ServiceState {
    recommendations: Vec<(f64, u32)>,
    changes: Vec<(f64, i64)>,
    tracked: HashMap<String, Tracking>,
    /// Retire key written; the deadline by which it must have left.
    retiring: HashMap<String, Instant>,
    /// Stops handed to the driver and not finished yet, with when they began.
    stopping: HashMap<String, Instant>,
    backoff: Backoff,
    pending: Vec<Pending>,
    /// A scale-down is being refused (reported once, not every tick).
    refusing_down: bool,
    /// The last event sequence number, once read in this leadership term.
    last_seq: Option<Option<u64>>,
    /// A rolling restart in progress.
    rollout: Option<rollout::Progress>,
    /// Starts the driver refused since the last tick, with why: reported
    /// as events on the next commit.
    start_failures: Vec<(String, String)>,
    /// The spec version this controller last asked to roll onto.
    rolled_to: Option<String>,
}

/// What one service's tick will do, decided before anything is done.
#[derive(Debug, Default)]
struct Plan {
    /// The spec this tick's starts run (`None`: the driver's default).
    spec: Option<Arc<Service>>,
    events: Vec<ScalingEvent>,
    starts: Vec<String>,
    retires: Vec<(String, String)>,
    stops: Vec<(String, Duration)>,
    clear_retire: Vec<String>,
    /// Other writes committed with the events (rolling-restart requests).
    journal: Vec<Write>,
}

/// The autoscaler's control loop over one driver.
pub struct Controller<D: Driver> {
    driver: Arc<D>,
    settings: Settings,
    epoch: Instant,
    services: BTreeMap<String, ServiceState>,
}

impl<D: Driver> Controller<D> {
    pub fn new(driver: Arc<D>, settings: Settings) -> Self {
        Controller {
            driver,
            settings,
            epoch: Instant::now(),
            services: BTreeMap::new(),
        }
    }

    pub fn driver(&self) -> &Arc<D> {
        &self.driver
    }

    /// A new leadership term: event sequences are read from etcd again (another
    /// leader may have written in between).
    pub fn new_term(&mut self) {
        for st in self.services.values_mut() {
            st.last_seq = None;
            // Another leader may have scaled in between: its recommendations
            // are unknown, so the window starts again.
            st.recommendations.clear();
            st.changes.clear();
        }
    }

    /// One pass over every service with a policy. `Err` only when leadership
    /// is lost; every other failure is logged and retried next tick.
    pub async fn tick(
        &mut self,
        now: Instant,
        observed: &Observed,
        journal: &Journal,
    ) -> Result<(), JournalError> {
        if !observed.synced {
            debug!("registry not listed yet; not acting");
            return Ok(());
        }
        let owned = match self.driver.list().await {
            Ok(owned) => owned,
            Err(e) => {
                warn!(driver = self.driver.name(), error = %e, "cannot list owned instances; skipping this tick");
                return Ok(());
            }
        };
        let no_instances = BTreeMap::new();
        let no_load = ServiceLoad::default();
        for policy in &observed.policies {
            let service = policy.service.as_str();
            let mine: Vec<&Owned> = owned.iter().filter(|o| o.service == service).collect();
            let view = View {
                policy,
                spec: observed.services.get(service),
                rollout: observed.rollouts.get(service),
                registered: observed.instances.get(service).unwrap_or(&no_instances),
                load: observed.loads.get(service).unwrap_or(&no_load),
                cpu: &observed.cpu,
                owned: &mine,
                last_words: &mine
                    .iter()
                    .filter(|o| o.exited.is_some())
                    .filter_map(|o| Some((o.id.clone(), self.driver.last_words(service, &o.id)?)))
                    .collect(),
            };
            match self.reconcile(now, &view, journal).await {
                Ok(()) => {}
                Err(JournalError::Lost) => return Err(JournalError::Lost),
                Err(e) => warn!(service, error = %e, "tick failed for service; retrying next tick"),
            }
        }
        Ok(())
    }

    async fn reconcile(
        &mut self,
        now: Instant,
        view: &View<'_>,
        journal: &Journal,
    ) -> Result<(), JournalError> {
        let service = view.policy.service.clone();
        let t = now.duration_since(self.epoch).as_secs_f64();
        let settings = self.settings;
        let st = self.services.entry(service.clone()).or_default();
        let last_seq = match st.last_seq {
            Some(last) => last,
            None => {
                let last = journal.last_event_seq(&service).await?;
                st.last_seq = Some(last);
                last
            }
        };

        let mut plan = Plan {
            spec: view.spec.cloned(),
            ..Plan::default()
        };
        for (id, why) in st.start_failures.drain(..) {
            plan.events.push(event::new(
                &service,
                event::START_FAILED,
                (0, 0),
                format!("could not start {id}: {why}"),
                Some(&id),
            ));
        }
        let counted = heal(st, now, view, &settings, &mut plan);
        let (current, desired) = scale(st, t, view, &counted, &mut plan);
        roll_onto_spec(st, view, &counted, &mut plan);
        rollout::step(st, now, view, &counted, &mut plan);
        // Actions carry the decision's numbers too.
        for e in plan.events.iter_mut().filter(|e| e.kind != event::DECISION) {
            (e.current, e.desired) = (current, desired);
        }

        let (seqs, below) = sequence(last_seq, plan.events.len(), KEEP_EVENTS);
        let mut writes: Vec<Write> = Vec::new();
        if let Some(below) = below {
            writes.push(Write::TrimEvents {
                service: service.clone(),
                below,
            });
        }
        for (seq, event) in seqs.iter().zip(&plan.events) {
            info!(service = %event.service, kind = %event.kind, instance = event.instance.as_deref().unwrap_or(""), reason = %event.reason, "scaling event");
            writes.push(Write::Event {
                seq: *seq,
                event: event.clone(),
            });
        }
        for id in &plan.clear_retire {
            writes.push(Write::ClearRetire {
                service: service.clone(),
                id: id.clone(),
            });
        }
        for (id, reason) in &plan.retires {
            writes.push(Write::Retire {
                service: service.clone(),
                id: id.clone(),
                reason: reason.clone(),
            });
        }
        writes.append(&mut plan.journal);
        journal.commit(writes).await?;
        if let Some(&last) = seqs.last() {
            st.last_seq = Some(Some(last));
        }
        self.act(now, &service, plan).await;
        Ok(())
    }

    /// Carry out a committed plan.
    async fn act(&mut self, now: Instant, service: &str, plan: Plan) {
        let settings = self.settings;
        let st = self
            .services
            .get_mut(service)
            .expect("reconcile created it");
        for (id, _) in plan.retires {
            st.retiring.insert(id, now + settings.retire_deadline);
        }
        for (id, grace) in plan.stops {
            st.retiring.remove(&id);
            st.tracked.remove(&id);
            st.stopping.insert(id.clone(), now);
            let driver = self.driver.clone();
            // A stop can take its whole grace; the loop does not wait for it.
            tokio::spawn(async move {
                if let Err(e) = driver.stop(&id, grace).await {
                    warn!(%id, error = %e, "cannot stop instance");
                }
            });
        }
        for id in plan.starts {
            let spec = StartSpec {
                service: service.to_owned(),
                id: id.clone(),
                spec: plan.spec.clone(),
            };
            match self.driver.start(&spec).await {
                Ok(()) => {
                    st.tracked.insert(
                        id,
                        Tracking {
                            started: now,
                            ever_registered: false,
                            missing_since: None,
                            seen_ready: false,
                        },
                    );
                }
                Err(e) => {
                    // A start that fails is a crash as far as back-off goes, so
                    // a broken command is not retried every tick.
                    let delay = st.backoff.on_crash(now, false);
                    warn!(service, %id, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot start instance");
                    st.pending.push(Pending { due: now + delay });
                    st.start_failures
                        .push((id, format!("{e}; retrying in {:.0} s", delay.as_secs_f64())));
                }
            }
        }
    }
}

/// One service's slice of the tick's observations.
struct View<'a> {
    policy: &'a ScalingPolicy,
    spec: Option<&'a Arc<Service>>,
    rollout: Option<&'a Rollout>,
    registered: &'a BTreeMap<String, Instance>,
    load: &'a ServiceLoad,
    cpu: &'a BTreeMap<String, f64>,
    owned: &'a [&'a Owned],
    /// What exited instances printed last (when the driver keeps it).
    last_words: &'a HashMap<String, String>,
}

/// A counted instance and what the tick knows of it.
struct Counted {
    id: String,
    verdict: Verdict,
    age: Duration,
}

/// Self-healing: judge every owned instance; plan reaps, stops and
/// replacements; return the ones that count toward the current size.
fn heal(
    st: &mut ServiceState,
    now: Instant,
    view: &View<'_>,
    settings: &Settings,
    plan: &mut Plan,
) -> Vec<Counted> {
    let service = view.policy.service.as_str();
    let rules = Rules {
        startup_grace: settings.startup_grace,
        lost_after: settings.lease_ttl * 2,
    };
    let listed: HashSet<&str> = view.owned.iter().map(|o| o.id.as_str()).collect();
    // A stop that has not made the driver forget the instance well past its
    // grace failed (it was logged): judge the instance again, so it is retried.
    let retry_after = settings.stop_grace + STOP_RETRY_MARGIN;
    st.stopping.retain(|id, since| {
        listed.contains(id.as_str()) && now.duration_since(*since) < retry_after
    });
    st.retiring.retain(|id, _| listed.contains(id.as_str()));
    st.tracked.retain(|id, _| listed.contains(id.as_str()));

    let mut counted = Vec::new();
    for o in view.owned {
        if st.stopping.contains_key(&o.id) {
            continue;
        }
        let tracking = st.tracked.entry(o.id.clone()).or_insert(Tracking {
            started: now,
            ever_registered: false,
            missing_since: None,
            seen_ready: false,
        });
        let registered = view.registered.get(&o.id);
        if let Some(instance) = registered {
            tracking.ever_registered = true;
            tracking.missing_since = None;
            tracking.seen_ready |= instance.state == InstanceState::Ready;
        } else if tracking.ever_registered && tracking.missing_since.is_none() {
            tracking.missing_since = Some(now);
        }
        let facts = Facts {
            exited: o.exited,
            registered: registered.map(|i| i.state),
            retiring: st.retiring.contains_key(&o.id),
            age: now.duration_since(tracking.started),
            ever_registered: tracking.ever_registered,
            missing_for: tracking.missing_since.map(|s| now.duration_since(s)),
        };
        let age = facts.age;
        let served = backoff::served(tracking.seen_ready, age);
        let verdict = judge(&facts, &rules);
        match &verdict {
            Verdict::Reapable => {
                info!(service, id = %o.id, "retired instance has left; reaping it");
                plan.stops.push((o.id.clone(), Duration::ZERO));
                // The instance deletes its own retire key as it leaves; this
                // covers one that exited before it could.
                plan.clear_retire.push(o.id.clone());
            }
            Verdict::Leaving => {
                if st
                    .retiring
                    .get(&o.id)
                    .is_some_and(|deadline| now >= *deadline)
                {
                    plan.events.push(event::new(
                        service,
                        event::STOP,
                        (0, 0),
                        format!(
                            "instance {} did not leave within {:.0} s of its retire key; stopping it",
                            o.id,
                            settings.retire_deadline.as_secs_f64()
                        ),
                        Some(&o.id),
                    ));
                    plan.stops.push((o.id.clone(), settings.stop_grace));
                    plan.clear_retire.push(o.id.clone());
                }
            }
            Verdict::Crashed { code } => {
                let said = view
                    .last_words
                    .get(&o.id)
                    .map(|words| format!("; it said: {words}"))
                    .unwrap_or_default();
                let failed = Failed {
                    id: &o.id,
                    why: format!("exited with code {code}{said}"),
                    exit_code: Some(*code),
                    served,
                    // It has exited: stopping only makes the driver forget it.
                    grace: Duration::ZERO,
                };
                replace(st, now, service, failed, plan);
            }
            Verdict::Lost { why } => {
                let why = if tracking.ever_registered {
                    why.clone()
                } else {
                    never_registered(why, &o.id, view)
                };
                warn!(service, id = %o.id, reason = %why, "replacing an instance");
                let failed = Failed {
                    id: &o.id,
                    why,
                    exit_code: None,
                    served,
                    grace: settings.stop_grace,
                };
                replace(st, now, service, failed, plan);
            }
            Verdict::Serving { .. } | Verdict::Starting | Verdict::Missing => {
                counted.push(Counted {
                    id: o.id.clone(),
                    verdict,
                    age,
                })
            }
        }
    }

    // Replacements whose back-off has passed start now.
    let (due, waiting): (Vec<Pending>, Vec<Pending>) =
        st.pending.drain(..).partition(|p| p.due <= now);
    st.pending = waiting;
    for _ in due {
        let id = uuid::Uuid::new_v4().to_string();
        plan.events.push(event::new(
            service,
            event::START,
            (0, 0),
            format!("starting {id} to replace a failed instance"),
            Some(&id),
        ));
        plan.starts.push(id);
    }
    counted
}

/// Why an instance this controller started never showed up under its id,
/// and what to change: the usual cause is a program that registers itself
/// under another id (e.g. a `registry run` without `--id`).
fn never_registered(why: &str, id: &str, view: &View<'_>) -> String {
    let owned: HashSet<&str> = view.owned.iter().map(|o| o.id.as_str()).collect();
    let strangers: Vec<&str> = view
        .registered
        .keys()
        .map(String::as_str)
        .filter(|other| !owned.contains(other))
        .collect();
    let fix = "a program that registers itself must use the id in SHOAL_INSTANCE_ID (`registry run` and `app-server` read it; or put {id} in its command, e.g. `registry run --id {id}`), or let the platform register it (`registration: managed` in its spec)";
    if strangers.is_empty() {
        format!("{why}: nothing registered under {id}; {fix}")
    } else {
        format!(
            "{why}: nothing registered under {id}, while {} not started by this controller did ({}); {fix}",
            if strangers.len() == 1 {
                "an instance"
            } else {
                "instances"
            },
            strangers.join(", ")
        )
    }
}

/// When the service's spec changed, ask for a rollout of the instances that
/// registered another version (once per version, and not while a rollout
/// is in progress: surge instances start from the current spec anyway).
fn roll_onto_spec(st: &mut ServiceState, view: &View<'_>, counted: &[Counted], plan: &mut Plan) {
    let Some(spec) = view.spec else { return };
    if view.rollout.is_some() || st.rollout.is_some() {
        return;
    }
    let version = spec.version();
    if st.rolled_to.as_deref() == Some(version.as_str()) {
        return;
    }
    let stale: Vec<String> = counted
        .iter()
        .filter(|c| {
            view.registered
                .get(&c.id)
                .is_some_and(|i| i.version != version)
        })
        .map(|c| c.id.clone())
        .collect();
    if stale.is_empty() {
        return;
    }
    let service = view.policy.service.as_str();
    plan.events.push(event::new(
        service,
        event::SPEC,
        (0, 0),
        format!(
            "spec version {version}: {} instance(s) run another version; rolling them onto it",
            stale.len()
        ),
        None,
    ));
    plan.journal.push(Write::PutRollout(Rollout {
        replacing: Some(stale),
        ..Rollout::request(service, "spec")
    }));
    st.rolled_to = Some(version);
}

/// An owned instance that failed.
struct Failed<'a> {
    id: &'a str,
    why: String,
    exit_code: Option<i32>,
    /// It had been ready and up for a while ([`backoff::served`]).
    served: bool,
    /// How long the driver's stop may wait before forcing.
    grace: Duration,
}

/// Plan a stop and a replacement (now or after the crash-loop delay).
fn replace(
    st: &mut ServiceState,
    now: Instant,
    service: &str,
    failed: Failed<'_>,
    plan: &mut Plan,
) {
    let delay = st.backoff.on_crash(now, failed.served);
    let when = if delay.is_zero() {
        "replacing it now".to_owned()
    } else {
        format!(
            "replacing it in {:.0} s (crash-loop back-off: {} failures in a row)",
            delay.as_secs_f64(),
            st.backoff.streak()
        )
    };
    let mut e = event::new(
        service,
        event::REPLACE,
        (0, 0),
        format!("instance {} {}; {when}", failed.id, failed.why),
        Some(failed.id),
    );
    if let Some(code) = failed.exit_code {
        e.inputs.insert("exit_code".into(), code as f64);
    }
    e.inputs
        .insert("replacement_delay_secs".into(), delay.as_secs_f64());
    plan.events.push(e);
    plan.stops.push((failed.id.to_owned(), failed.grace));
    st.pending.push(Pending { due: now + delay });
}

/// Decide and plan the scaling itself; returns (current, desired).
fn scale(
    st: &mut ServiceState,
    t: f64,
    view: &View<'_>,
    counted: &[Counted],
    plan: &mut Plan,
) -> (u32, u32) {
    let policy = view.policy;
    let service = policy.service.as_str();
    let warmup = Duration::from_secs(policy.warmup_secs);
    // A rolling restart's surge instances are extra: neither capacity nor excess.
    let surge = st
        .rollout
        .as_ref()
        .map(|r| r.surge().clone())
        .unwrap_or_default();
    let counted: Vec<&Counted> = counted.iter().filter(|c| !surge.contains(&c.id)).collect();
    let mut instances: Vec<InstanceLoad> = counted
        .iter()
        .map(|c| {
            let seen = view.load.instances.get(&c.id);
            let ready = matches!(c.verdict, Verdict::Serving { ready: true })
                && !seen.is_some_and(|s| s.ejected);
            let metric = match policy.metric {
                ScalingMetric::Inflight => seen.map(|s| s.in_flight),
                ScalingMetric::Rps => seen.map(|s| s.rate),
                ScalingMetric::Cpu => view.cpu.get(&c.id).copied(),
                ScalingMetric::P95Latency => None,
            };
            InstanceLoad {
                id: c.id.clone(),
                ready,
                warming_up: c.age < warmup,
                metric,
            }
        })
        .collect();
    // Replacements starting now and waiting out their back-off are capacity
    // on its way: counted as starting, so the decision does not add more.
    let on_the_way = plan.starts.len() + st.pending.len();
    for n in 0..on_the_way {
        instances.push(InstanceLoad {
            id: format!("replacement-{n}"),
            ready: false,
            warming_up: true,
            metric: None,
        });
    }

    if st.recommendations.is_empty() {
        st.recommendations.push((t, instances.len() as u32));
    }
    let decision = decide(&Inputs {
        policy,
        now: t,
        instances: &instances,
        service_p95_ms: view.load.p95_ms,
        held_requests: view.load.held,
        recommendations: &st.recommendations,
        changes: &st.changes,
    });
    let horizon = policy
        .scale_up_stabilization_secs
        .max(policy.scale_down_stabilization_secs)
        .max(policy.step_period_secs) as f64;
    st.recommendations.push((t, decision.recommended));
    st.recommendations.retain(|(at, _)| t - at <= horizon);
    st.changes.retain(|(at, _)| t - at <= horizon);

    let measured: Vec<f64> = instances
        .iter()
        .filter(|i| i.ready && !i.warming_up)
        .filter_map(|i| i.metric)
        .collect();
    let mean = (!measured.is_empty()).then(|| measured.iter().sum::<f64>() / measured.len() as f64);
    let decision_event = |reason: String, desired: u32| {
        let mut e = event::new(
            service,
            event::DECISION,
            (decision.current, desired),
            reason,
            None,
        );
        e.bounded_by = decision.bounded_by.map(|b| b.name().to_owned());
        e.inputs = event::inputs(&decision, view.load, mean, policy.target);
        e
    };

    if decision.desired > decision.current {
        st.refusing_down = false;
        let n = decision.desired - decision.current;
        plan.events
            .push(decision_event(decision.reason.clone(), decision.desired));
        for _ in 0..n {
            let id = uuid::Uuid::new_v4().to_string();
            plan.events.push(event::new(
                service,
                event::START,
                (decision.current, decision.desired),
                format!("starting {id}"),
                Some(&id),
            ));
            plan.starts.push(id);
        }
        st.changes.push((t, n as i64));
    } else if decision.desired < decision.current {
        if !view.load.complete() {
            if !st.refusing_down {
                let silent: Vec<String> = view
                    .load
                    .silent
                    .iter()
                    .map(|(g, why)| format!("{g} ({why})"))
                    .collect();
                let why = if silent.is_empty() {
                    "no gateway is registered".to_owned()
                } else {
                    format!("gateway(s) {} did not answer", silent.join(", "))
                };
                plan.events.push(decision_event(
                    format!(
                        "{}; refused: {why}, and silence is not zero load",
                        decision.reason
                    ),
                    decision.current,
                ));
            }
            st.refusing_down = true;
            return (decision.current, decision.current);
        }
        st.refusing_down = false;
        let mut excess = (decision.current - decision.desired) as usize;
        // Cancel replacements still waiting before retiring anything running.
        let cancelled = excess.min(st.pending.len());
        st.pending.truncate(st.pending.len() - cancelled);
        excess -= cancelled;
        let candidates: Vec<retire::Candidate> = counted
            .iter()
            .map(|c| retire::Candidate {
                id: c.id.clone(),
                ready: matches!(c.verdict, Verdict::Serving { ready: true }),
                in_flight: view.load.instances.get(&c.id).map_or(0.0, |s| s.in_flight),
                age: c.age,
            })
            .collect();
        let old = |id: &str| st.rollout.as_ref().is_some_and(|r| r.is_old(id));
        let ids = retire::pick(&candidates, excess, old);
        if ids.is_empty() && cancelled == 0 {
            debug!(
                service,
                "scale-down wanted but no ready instance to retire yet"
            );
            return (decision.current, decision.current);
        }
        plan.events
            .push(decision_event(decision.reason.clone(), decision.desired));
        for id in &ids {
            let in_flight = candidates
                .iter()
                .find(|c| &c.id == id)
                .map_or(0.0, |c| c.in_flight);
            let reason = format!(
                "scale down {} → {}: fewest in-flight ({in_flight:.0})",
                decision.current, decision.desired
            );
            plan.events.push(event::new(
                service,
                event::RETIRE,
                (decision.current, decision.desired),
                format!("retiring {id}: {reason}"),
                Some(id),
            ));
            plan.retires.push((id.clone(), reason));
        }
        let removed = (ids.len() + cancelled) as u32;
        st.changes.push((t, -(removed as i64)));
        return (decision.current, decision.current - removed);
    } else {
        st.refusing_down = false;
    }
    (decision.current, decision.desired)
}
