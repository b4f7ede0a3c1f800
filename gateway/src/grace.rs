//! Unconfirmed instances: ones that left the registry while `ready` stay
//! routable for a grace period, so that losing most leases at once (etcd
//! wiped, `etcdctl del --prefix`) does not empty the routing table while the
//! instances are still serving and about to register again.
//!
//! The rule: an instance whose key disappears while its last registry state
//! was `ready` is kept, marked unconfirmed, until the first of
//! - it registers again (the registry's entry takes over);
//! - one attempt to it fails (connect refused, reset, timeout, 502–504):
//!   [`Unconfirmed::fail`], called by passive health, drops it at once and
//!   the request is retried elsewhere by the usual retry rule;
//! - the grace period (`--unconfirmed-grace`, default 2 × the default lease
//!   TTL) ends.
//!
//! Only a mass loss is routed: instances that vanish together are routed
//! while kept if they outnumber the service's ready instances still in the
//! registry at that moment. Most of a service gone at once is the
//! registry's problem, and the instances are probably fine; one lease lost
//! among live peers is most likely that instance's problem (frozen, cut off,
//! overloaded), and requests sent to a frozen process hang instead of
//! failing. Such an instance is kept (and dropped) by the same rules, but
//! not routed.
//!
//! A clean leave writes `draining` before the key goes, so it is dropped at
//! once as before. The price: an instance that died without draining
//! (kill -9, lease expiry) costs one failed attempt, retried elsewhere,
//! before it is dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use registry::{Instance, InstanceState};
use tokio::sync::Notify;
use tracing::{info, warn};

/// The mark an unconfirmed instance's backend carries in the routing table.
#[derive(Debug)]
pub struct Unconfirmed {
    failed: AtomicBool,
    wake: Arc<Notify>,
}

impl Unconfirmed {
    /// An attempt to the instance failed: drop it from the next table.
    pub fn fail(&self) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Kept {
    instance: Instance,
    until: Instant,
    mark: Arc<Unconfirmed>,
    /// Part of a mass loss (see the module doc): routed while kept.
    routed: bool,
}

/// What the routing table is built from: the registry's instances (shared
/// with the registry watcher's snapshot, not copied) plus the unconfirmed
/// ones, and the marks of the latter by instance id.
#[derive(Debug, Default)]
pub struct Routable {
    /// The registry's instances, by key.
    pub registered: Arc<BTreeMap<String, Instance>>,
    /// Instances that left while ready and are routed meanwhile, in key
    /// order; none of them is in `registered`.
    pub kept: Vec<Instance>,
    /// The marks of `kept`, by instance id.
    pub unconfirmed: HashMap<String, Arc<Unconfirmed>>,
}

impl Routable {
    /// Every routable instance with its mark if it is unconfirmed: the
    /// registered ones in key order, then the kept ones.
    pub fn instances(&self) -> impl Iterator<Item = (&Instance, Option<&Arc<Unconfirmed>>)> {
        self.registered
            .values()
            .map(|instance| (instance, None))
            .chain(
                self.kept
                    .iter()
                    .map(|instance| (instance, self.unconfirmed.get(&instance.id))),
            )
    }
}

/// Tracks which instances left while ready; owned by the discovery task.
#[derive(Debug)]
pub struct Grace {
    period: Duration,
    previous: Arc<BTreeMap<String, Instance>>,
    kept: BTreeMap<String, Kept>,
    wake: Arc<Notify>,
}

impl Grace {
    /// `period` zero turns the rule off.
    pub fn new(period: Duration) -> Self {
        Grace {
            period,
            previous: Arc::default(),
            kept: BTreeMap::new(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Merge the registry's current instances (by key) with the unconfirmed
    /// ones, updating which are kept.
    pub fn apply(&mut self, current: &Arc<BTreeMap<String, Instance>>, now: Instant) -> Routable {
        if !self.period.is_zero() {
            let lost: Vec<(&String, &Instance)> = removed(&self.previous, current)
                .filter(|(key, instance)| {
                    instance.state == InstanceState::Ready && !self.kept.contains_key(*key)
                })
                .collect();
            let mut lost_of: HashMap<&str, usize> = HashMap::new();
            for (_, instance) in &lost {
                *lost_of.entry(&instance.service).or_default() += 1;
            }
            let mut ready_of: HashMap<&str, usize> = HashMap::new();
            // Counted only when something was lost (most rebuilds lose nothing).
            if !lost.is_empty() {
                for instance in current.values() {
                    if instance.state == InstanceState::Ready {
                        *ready_of.entry(&instance.service).or_default() += 1;
                    }
                }
            }
            for (key, instance) in lost {
                let service = instance.service.as_str();
                let still_ready = ready_of.get(service).copied().unwrap_or(0);
                let routed = lost_of[service] > still_ready;
                if routed {
                    warn!(
                        id = %instance.id,
                        service = %instance.service,
                        grace_ms = self.period.as_millis() as u64,
                        "instance left the registry while ready, with most of its service; still routed, unconfirmed, until it registers again or fails"
                    );
                } else {
                    warn!(
                        id = %instance.id,
                        service = %instance.service,
                        still_ready,
                        "instance left the registry while ready, its peers did not; no longer routed"
                    );
                }
                self.kept.insert(
                    key.clone(),
                    Kept {
                        instance: instance.clone(),
                        until: now + self.period,
                        mark: Arc::new(Unconfirmed {
                            failed: AtomicBool::new(false),
                            wake: self.wake.clone(),
                        }),
                        routed,
                    },
                );
            }
        }
        self.kept.retain(|key, kept| {
            let (id, service) = (&kept.instance.id, &kept.instance.service);
            if current.contains_key(key) {
                info!(%id, %service, "unconfirmed instance registered again");
                false
            } else if kept.mark.has_failed() {
                info!(%id, %service, "unconfirmed instance failed a request; dropped");
                false
            } else if kept.until <= now {
                info!(%id, %service, "unconfirmed instance did not register again within the grace period; dropped");
                false
            } else {
                true
            }
        });
        self.previous = current.clone();

        let mut routable = Routable {
            registered: current.clone(),
            ..Routable::default()
        };
        for kept in self.kept.values().filter(|k| k.routed) {
            routable
                .unconfirmed
                .insert(kept.instance.id.clone(), kept.mark.clone());
            routable.kept.push(kept.instance.clone());
        }
        routable
    }

    /// When the earliest grace period of a routed instance ends (a rebuild
    /// is due then). Instances kept but not routed (a lone loss) change no
    /// table when their grace ends; the next rebuild drops them.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.kept
            .values()
            .filter(|k| k.routed)
            .map(|k| k.until)
            .min()
    }

    /// Woken when an unconfirmed instance fails (a rebuild is due).
    pub fn failures(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// The entries of `previous` whose keys `current` lacks, in key order: one
/// walk over both sorted maps (a lookup per key would compare each key
/// about log n times, on every rebuild), and nothing when they are the
/// same snapshot.
fn removed<'a>(
    previous: &'a Arc<BTreeMap<String, Instance>>,
    current: &'a Arc<BTreeMap<String, Instance>>,
) -> impl Iterator<Item = (&'a String, &'a Instance)> {
    let same = Arc::ptr_eq(previous, current);
    let mut now = current.keys().peekable();
    previous
        .iter()
        .filter(move |_| !same)
        .filter(move |(key, _)| {
            while now.next_if(|k| k < key).is_some() {}
            now.next_if(|k| k == key).is_none()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, state: InstanceState) -> (String, Instance) {
        let mut i = Instance::new("app", "127.0.0.1:1000");
        i.id = id.into();
        i.state = state;
        (format!("/shoal/instances/app/{id}"), i)
    }

    fn set(entries: &[(String, Instance)]) -> Arc<BTreeMap<String, Instance>> {
        Arc::new(entries.iter().cloned().collect())
    }

    fn ids(r: &Routable) -> Vec<&str> {
        r.instances().map(|(i, _)| i.id.as_str()).collect()
    }

    const PERIOD: Duration = Duration::from_secs(10);

    #[test]
    fn a_ready_instance_that_vanishes_is_kept_until_it_registers_again() {
        let mut grace = Grace::new(PERIOD);
        let now = Instant::now();
        let a = instance("a", InstanceState::Ready);
        assert_eq!(
            ids(&grace.apply(&set(std::slice::from_ref(&a)), now)),
            ["a"]
        );
        let gone = grace.apply(&set(&[]), now);
        assert_eq!(ids(&gone), ["a"]);
        assert!(gone.unconfirmed.contains_key("a"));
        assert_eq!(grace.next_deadline(), Some(now + PERIOD));
        let back = grace.apply(&set(&[a]), now + Duration::from_secs(1));
        assert_eq!(ids(&back), ["a"]);
        assert!(
            back.unconfirmed.is_empty(),
            "confirmed by the registry again"
        );
        assert_eq!(grace.next_deadline(), None);
    }

    #[test]
    fn a_kept_instance_goes_at_the_end_of_the_grace_or_on_its_first_failure() {
        let mut grace = Grace::new(PERIOD);
        let now = Instant::now();
        grace.apply(
            &set(&[
                instance("a", InstanceState::Ready),
                instance("b", InstanceState::Ready),
            ]),
            now,
        );
        let gone = grace.apply(&set(&[]), now);
        assert_eq!(ids(&gone), ["a", "b"]);
        gone.unconfirmed["a"].fail();
        assert_eq!(ids(&grace.apply(&set(&[]), now)), ["b"]);
        assert_eq!(
            ids(&grace.apply(&set(&[]), now + PERIOD - Duration::from_millis(1))),
            ["b"]
        );
        assert!(
            grace
                .apply(&set(&[]), now + PERIOD)
                .instances()
                .next()
                .is_none()
        );
    }

    #[test]
    fn draining_or_starting_instances_leave_at_once_and_zero_turns_it_off() {
        let mut grace = Grace::new(PERIOD);
        let now = Instant::now();
        grace.apply(
            &set(&[
                instance("d", InstanceState::Draining),
                instance("s", InstanceState::Starting),
            ]),
            now,
        );
        assert!(grace.apply(&set(&[]), now).instances().next().is_none());

        let mut off = Grace::new(Duration::ZERO);
        off.apply(&set(&[instance("a", InstanceState::Ready)]), now);
        assert!(off.apply(&set(&[]), now).instances().next().is_none());
    }

    #[test]
    fn a_lone_lost_lease_among_live_peers_is_not_routed_but_a_mass_loss_is() {
        let mut grace = Grace::new(PERIOD);
        let now = Instant::now();
        let [a, b, c] = ["a", "b", "c"].map(|id| instance(id, InstanceState::Ready));
        grace.apply(&set(&[a.clone(), b.clone(), c.clone()]), now);
        // c's lease expires (frozen, cut off): a and b are confirmed, so c is
        // kept but not routed.
        let one_lost = grace.apply(&set(&[a.clone(), b.clone()]), now);
        assert_eq!(ids(&one_lost), ["a", "b"]);
        assert_eq!(
            grace.next_deadline(),
            None,
            "kept, not routed: the end of its grace changes no table"
        );
        // c registers again; then every lease is lost at once (etcd wiped):
        // all three are routed, and stay routed as they register again one
        // by one.
        grace.apply(&set(&[a.clone(), b.clone(), c.clone()]), now);
        let all_lost = grace.apply(&set(&[]), now);
        assert_eq!(ids(&all_lost), ["a", "b", "c"]);
        let a_back = grace.apply(&set(std::slice::from_ref(&a)), now);
        assert_eq!(ids(&a_back), ["a", "b", "c"]);
        let b_back = grace.apply(&set(&[a.clone(), b.clone()]), now);
        assert_eq!(ids(&b_back), ["a", "b", "c"]);
        assert_eq!(b_back.unconfirmed.len(), 1);
        // Two of three lost together are a mass loss too.
        let mut grace = Grace::new(PERIOD);
        grace.apply(&set(&[a.clone(), b, c]), now);
        assert_eq!(ids(&grace.apply(&set(&[a]), now)), ["a", "b", "c"]);
    }

    #[test]
    fn removed_walks_both_maps_once() {
        let map = |ids: &[&str]| {
            set(&ids
                .iter()
                .map(|id| instance(id, InstanceState::Ready))
                .collect::<Vec<_>>())
        };
        let gone = |before: &[&str], after: &[&str]| -> Vec<String> {
            let (before, after) = (map(before), map(after));
            removed(&before, &after)
                .map(|(_, i)| i.id.clone())
                .collect()
        };
        assert_eq!(gone(&["a", "b", "c", "d"], &["b", "d", "e"]), ["a", "c"]);
        assert_eq!(gone(&["a", "b"], &[]), ["a", "b"]);
        assert!(gone(&[], &["a"]).is_empty());
        assert!(gone(&["a", "c"], &["a", "b", "c", "z"]).is_empty());
        let same = map(&["a"]);
        assert_eq!(removed(&same, &same).count(), 0);
    }
}
