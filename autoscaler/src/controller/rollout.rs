//! Rolling restarts: replace every instance a service had when the restart
//! was asked for, a few at a time, without dropping a request.
//!
//! A request is a [`Rollout`] at `rollouts/{service}` (from `autoscaler
//! rollout restart`, the admin API, or SIGUSR2 to a controller). On first
//! sight the leader stamps it with the ids it will replace (`replacing`), so
//! a client can show progress and a new leader carries on with the same set.
//! Then, every tick:
//! - a *surge* instance (started for the restart, beyond the desired count)
//!   that has become ready is exchanged for one old instance, which gets its
//!   retire key: it drains and leaves, so no request is dropped;
//! - with `max_unavailable` > 0, that many old instances are retired without
//!   waiting, each replaced at once by an instance that counts in its place;
//! - surge instances are started while fewer than `max_surge` are on their
//!   way and old instances remain.
//!
//! Surge instances are left out of the scaling decision: the autoscaler
//! neither counts them as capacity nor retires them as excess. A scale-down
//! during a restart retires old instances first (see [`super::retire`]).
//! When no old instance is left the request is deleted and a `rollout` event
//! says how long it took. With no instance replaced for
//! [`PROGRESS_DEADLINE`] (new instances never get ready: a bad build), the
//! restart is abandoned with an event saying so; old instances that were
//! not retired keep serving.
//!
//! Left as is: a new leader does not know which instances its predecessor
//! started as surge, so they count as ordinary instances (one extra
//! instance until the scale-down window passes).

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use registry::model::Rollout;
use tokio::time::Instant;

use super::count::Verdict;
use super::journal::Write;
use super::retire::{self, Candidate};
use super::{Counted, Plan, ServiceState, View, event};

/// A restart that replaces nothing for this long is abandoned.
pub const PROGRESS_DEADLINE: Duration = Duration::from_secs(300);

/// Event kind of a restart's beginning, end or abandonment.
pub const ROLLOUT: &str = "rollout";

/// A restart in progress, as the leader tracks it.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Identifies the request: a new request with the same service restarts.
    requested_at: DateTime<Utc>,
    /// Old instances not retired yet.
    replacing: BTreeSet<String>,
    total: usize,
    /// Started for the restart beyond the desired count; not ready yet (or
    /// not exchanged yet).
    surge: BTreeSet<String>,
    /// Started in place of an old instance retired without waiting; not ready yet.
    unavailable: BTreeSet<String>,
    began: Instant,
    last_progress: Instant,
}

impl Progress {
    /// Surge instances: left out of the scaling decision.
    pub fn surge(&self) -> &BTreeSet<String> {
        &self.surge
    }

    /// Whether `id` is one of the old instances the restart replaces.
    pub fn is_old(&self, id: &str) -> bool {
        self.replacing.contains(id)
    }
}

fn is_ready(c: &Counted) -> bool {
    matches!(c.verdict, Verdict::Serving { ready: true })
}

/// One tick of the restart of `view`'s service, after the scaling decision
/// has planned its own starts and retires.
pub(super) fn step(
    st: &mut ServiceState,
    now: Instant,
    view: &View<'_>,
    counted: &[Counted],
    plan: &mut Plan,
) {
    let service = view.policy.service.as_str();
    let Some(request) = view.rollout else {
        st.rollout = None;
        return;
    };
    if st.rollout.as_ref().map(|p| p.requested_at) != Some(request.requested_at) {
        begin(st, now, request, counted, plan);
    }
    let p = st.rollout.as_mut().expect("begun above");
    let counts = |id: &String| counted.iter().any(|c| &c.id == id);
    let ready = |id: &String| counted.iter().any(|c| &c.id == id && is_ready(c));

    // Old instances that are gone (crashed and replaced, retired by a
    // scale-down, this tick's included) need no replacing any more.
    let retiring_now: BTreeSet<&String> = plan.retires.iter().map(|(id, _)| id).collect();
    let before = p.replacing.len();
    p.replacing
        .retain(|id| counts(id) && !retiring_now.contains(id));
    p.surge.retain(counts);
    p.unavailable.retain(|id| counts(id) && !ready(id));
    if p.replacing.len() < before {
        p.last_progress = now;
    }
    let done = |p: &Progress| p.total - p.replacing.len();

    let ended = if p.replacing.is_empty() {
        Some(format!(
            "rolling restart done: {} instance(s) replaced in {:.1} s",
            p.total,
            now.duration_since(p.began).as_secs_f64()
        ))
    } else if now.duration_since(p.last_progress) >= PROGRESS_DEADLINE {
        Some(format!(
            "rolling restart abandoned: no instance replaced for {:.0} s (do new instances get ready? see their logs); {} of {} replaced, the rest keep serving",
            PROGRESS_DEADLINE.as_secs_f64(),
            done(p),
            p.total
        ))
    } else {
        None
    };
    if let Some(reason) = ended {
        plan.events
            .push(event::new(service, ROLLOUT, (0, 0), reason, None));
        plan.journal.push(Write::EndRollout {
            service: service.to_owned(),
        });
        st.rollout = None;
        return;
    }

    // Old instances, as retire candidates: the least busy go first.
    let mut old: Vec<Candidate> = counted
        .iter()
        .filter(|c| p.replacing.contains(&c.id))
        .map(|c| Candidate {
            id: c.id.clone(),
            ready: true,
            in_flight: view.load.instances.get(&c.id).map_or(0.0, |s| s.in_flight),
            age: c.age,
        })
        .collect();
    let mut next_old = || -> Option<String> {
        let id = retire::pick(&old, 1, |_| false).pop()?;
        old.retain(|c| c.id != id);
        Some(id)
    };

    let mut retires: Vec<(String, String)> = Vec::new();
    let ready_surge: Vec<String> = p.surge.iter().filter(|id| ready(id)).cloned().collect();
    for new in ready_surge {
        let Some(old_id) = next_old() else { break };
        p.surge.remove(&new);
        retires.push((old_id, format!("{new} is ready to take its place")));
    }
    while p.unavailable.len() < request.max_unavailable as usize {
        let Some(old_id) = next_old() else { break };
        let new = uuid::Uuid::new_v4().to_string();
        plan.events.push(event::new(
            service,
            event::START,
            (0, 0),
            format!("starting {new} in place of {old_id} (rolling restart)"),
            Some(&new),
        ));
        plan.starts.push(new.clone());
        p.unavailable.insert(new);
        retires.push((
            old_id,
            format!(
                "max unavailable {} lets it go before its replacement is ready",
                request.max_unavailable
            ),
        ));
    }
    for (old_id, why) in retires {
        p.replacing.remove(&old_id);
        p.last_progress = now;
        let reason = format!("rolling restart: {why}");
        plan.events.push(event::new(
            service,
            event::RETIRE,
            (0, 0),
            format!(
                "retiring {old_id} ({} of {} replaced): {reason}",
                done(p),
                p.total
            ),
            Some(&old_id),
        ));
        plan.retires.push((old_id, reason));
    }

    // Surge: new instances on their way, at most one per old instance left.
    let wanted = (request.max_surge as usize).min(p.replacing.len());
    while p.surge.len() < wanted {
        let new = uuid::Uuid::new_v4().to_string();
        plan.events.push(event::new(
            service,
            event::START,
            (0, 0),
            format!(
                "starting {new} to replace an old instance (rolling restart: {} of {} replaced)",
                done(p),
                p.total
            ),
            Some(&new),
        ));
        plan.starts.push(new.clone());
        p.surge.insert(new);
    }
}

/// A new request: stamp it with the instances to replace (or carry on with
/// the set a previous leader stamped).
fn begin(
    st: &mut ServiceState,
    now: Instant,
    request: &Rollout,
    counted: &[Counted],
    plan: &mut Plan,
) {
    let service = request.service.as_str();
    let (replacing, reason) = match &request.replacing {
        Some(ids) => {
            let left: BTreeSet<String> = ids
                .iter()
                .filter(|id| counted.iter().any(|c| &c.id == *id))
                .cloned()
                .collect();
            let reason = format!(
                "rolling restart requested by {} at {}: {} of {} instance(s) left to replace",
                request.requested_by,
                request.requested_at.format("%H:%M:%S"),
                left.len(),
                ids.len()
            );
            (ids.iter().cloned().collect::<BTreeSet<String>>(), reason)
        }
        None => {
            let ids: BTreeSet<String> = counted.iter().map(|c| c.id.clone()).collect();
            plan.journal.push(Write::PutRollout(Rollout {
                replacing: Some(ids.iter().cloned().collect()),
                ..request.clone()
            }));
            let reason = format!(
                "rolling restart of {} instance(s) requested by {}: max surge {}, max unavailable {}",
                ids.len(),
                request.requested_by,
                request.max_surge,
                request.max_unavailable
            );
            (ids, reason)
        }
    };
    plan.events
        .push(event::new(service, ROLLOUT, (0, 0), reason, None));
    st.rollout = Some(Progress {
        requested_at: request.requested_at,
        total: replacing.len(),
        replacing,
        surge: BTreeSet::new(),
        unavailable: BTreeSet::new(),
        began: now,
        last_progress: now,
    });
}
