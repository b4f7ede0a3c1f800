//! Who owns a key: the service's ready instances as this instance last saw
//! them, ranked per key by rendezvous hashing (`registry::rendezvous`, the
//! same ranking as the gateway's `consistent-hash` policy).
//!
//! - The **owners** of a key are the first R ready instances in its ranking,
//!   skipping peers marked down (a refused connection or a peer that said it
//!   is leaving, for a few seconds): writes then reach the next instance in
//!   the ranking instead of failing (a sloppy quorum), and the sync task
//!   moves the key back once the ranking settles.
//! - The **primary** is the first owner; it coordinates every read and write
//!   of the key.
//! - Views seen in the last [`SETTLE`] are kept, so that during a membership
//!   change a read also asks the key's previous owners (a new instance
//!   answers for keys it has not received yet), and the membership is
//!   **settled** only once no view or down mark changed for that long and the
//!   local sync pass since the last change has finished.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use registry::rendezvous;
use tokio::sync::watch;

/// How long after the last membership change reads still ask previous owners
/// and handed-off copies are kept.
pub const SETTLE: Duration = Duration::from_secs(10);
/// How long a peer that refused a connection is skipped as an owner.
pub const DOWN_FOR: Duration = Duration::from_secs(3);

/// A ready instance of the service, as the key-value store needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub addr: String,
    pub weight: u32,
}

#[derive(Debug)]
struct Seen {
    members: Arc<Vec<Member>>,
    /// When this view stopped being current (`None`: it still is).
    replaced: Option<Instant>,
}

#[derive(Debug)]
struct State {
    /// Oldest first; the last one is current.
    views: VecDeque<Seen>,
    down: HashMap<String, Instant>,
    last_change: Instant,
}

/// The membership as this instance sees it; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Membership {
    self_id: String,
    /// This instance, as it counts itself before the registry lists it.
    me: Member,
    replicas: usize,
    state: Mutex<State>,
    leaving: AtomicBool,
    /// Bumped on every change; the sync task waits on it.
    epoch: watch::Sender<u64>,
    synced_epoch: AtomicU64,
}

impl Membership {
    /// A membership with only this instance in it until the first update.
    pub fn new(self_id: impl Into<String>, self_addr: impl Into<String>, replicas: usize) -> Self {
        let self_id = self_id.into();
        let me = Member {
            id: self_id.clone(),
            addr: self_addr.into(),
            weight: 1,
        };
        Membership {
            self_id,
            me: me.clone(),
            replicas: replicas.max(1),
            state: Mutex::new(State {
                views: VecDeque::from([Seen {
                    members: Arc::new(vec![me]),
                    replaced: None,
                }]),
                down: HashMap::new(),
                last_change: Instant::now(),
            }),
            leaving: AtomicBool::new(false),
            epoch: watch::Sender::new(0),
            synced_epoch: AtomicU64::new(0),
        }
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// Replace the ready set (as read from the registry). While leaving,
    /// this instance is left out whatever the registry says; otherwise it
    /// counts itself in even before the registry lists it (a replacement
    /// serving its first request while its predecessor's entry is still
    /// there must not see itself as owning nothing).
    pub fn update(&self, mut members: Vec<Member>) {
        if self.is_leaving() {
            members.retain(|m| m.id != self.self_id);
        } else if !members.iter().any(|m| m.id == self.self_id) {
            members.push(self.me.clone());
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let mut state = self.lock();
        if state.views.back().is_some_and(|v| *v.members == members) {
            return;
        }
        let now = Instant::now();
        if let Some(current) = state.views.back_mut() {
            current.replaced = Some(now);
        }
        state.views.push_back(Seen {
            members: Arc::new(members),
            replaced: None,
        });
        state.last_change = now;
        prune(&mut state.views, now);
        drop(state);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Stop owning keys: from now on views leave this instance out, and
    /// peers asking it to store are told it is leaving.
    pub fn leave(&self) {
        if self.leaving.swap(true, Ordering::AcqRel) {
            return;
        }
        let current = self.current();
        self.update(
            current
                .iter()
                .filter(|m| m.id != self.self_id)
                .cloned()
                .collect(),
        );
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Skip `id` as an owner for [`DOWN_FOR`].
    pub fn mark_down(&self, id: &str) {
        let mut state = self.lock();
        let now = Instant::now();
        let fresh = state
            .down
            .insert(id.to_owned(), now + DOWN_FOR)
            .is_none_or(|until| until <= now);
        if fresh {
            state.last_change = now;
            drop(state);
            self.epoch.send_modify(|e| *e += 1);
        }
    }

    /// The current ready set.
    pub fn current(&self) -> Arc<Vec<Member>> {
        self.lock()
            .views
            .back()
            .expect("there is always a current view")
            .members
            .clone()
    }

    /// How many ready instances the current view has that are not marked
    /// down (refused a connection in the last [`DOWN_FOR`]).
    pub fn up_size(&self) -> usize {
        up_members(&mut self.lock()).len()
    }

    /// The key's owners now: the first R of its ranking among ready
    /// instances that are not marked down.
    pub fn owners(&self, key: &str) -> Vec<Member> {
        let up = up_members(&mut self.lock());
        let candidates: Vec<&Member> = up.iter().collect();
        top(key, &candidates, self.replicas)
    }

    /// Every instance that owned the key in a view seen within [`SETTLE`]
    /// (down ones included: they are asked, and fail fast), this one excluded.
    pub fn recent_holders(&self, key: &str) -> Vec<Member> {
        let mut state = self.lock();
        prune(&mut state.views, Instant::now());
        let mut holders: Vec<Member> = Vec::new();
        for view in &state.views {
            let all: Vec<&Member> = view.members.iter().collect();
            for m in top(key, &all, self.replicas) {
                if m.id != self.self_id && !holders.iter().any(|h| h.id == m.id) {
                    holders.push(m);
                }
            }
        }
        holders
    }

    /// No view or down mark changed for `period`.
    pub fn quiet_for(&self, period: Duration) -> bool {
        self.lock().last_change.elapsed() >= period
    }

    /// No change for [`SETTLE`] and the sync pass since the last one done.
    pub fn settled(&self) -> bool {
        self.quiet_for(SETTLE) && self.synced_epoch.load(Ordering::Acquire) >= *self.epoch.borrow()
    }

    /// The change counter, to wait on.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    pub fn epoch(&self) -> u64 {
        *self.epoch.borrow()
    }

    /// The sync task finished a pass that started at `epoch` with every entry placed.
    pub fn mark_synced(&self, epoch: u64) {
        self.synced_epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A fixed fingerprint of an owner set (order-sensitive: the primary matters).
pub fn fingerprint(owners: &[Member]) -> u64 {
    let ids: Vec<&str> = owners.iter().map(|m| m.id.as_str()).collect();
    rendezvous::hash(ids.join(",").as_bytes(), b"owners").max(1)
}

/// The current view's members not marked down (expired marks forgotten).
fn up_members(state: &mut State) -> Vec<Member> {
    let now = Instant::now();
    state.down.retain(|_, until| *until > now);
    let current = state.views.back().expect("there is always a current view");
    current
        .members
        .iter()
        .filter(|m| !state.down.contains_key(&m.id))
        .cloned()
        .collect()
}

fn top(key: &str, candidates: &[&Member], n: usize) -> Vec<Member> {
    rendezvous::rank(key, candidates, |m| (m.id.as_str(), m.weight))
        .into_iter()
        .take(n)
        .map(|i| candidates[i].clone())
        .collect()
}

/// Forget views replaced more than [`SETTLE`] ago.
fn prune(views: &mut VecDeque<Seen>, now: Instant) {
    while views
        .front()
        .is_some_and(|v| v.replaced.is_some_and(|at| now - at > SETTLE))
    {
        views.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            addr: format!("{id}:1"),
            weight: 1,
        }
    }

    fn ids(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn owners_are_the_first_r_of_the_ranking_and_skip_down_peers() {
        let m = Membership::new("a", "a:1", 2);
        m.update(["a", "b", "c", "d"].map(member).to_vec());
        let owners = m.owners("user:1");
        assert_eq!(owners.len(), 2);
        let current = m.current();
        let expected: Vec<&str> = rendezvous::rank("user:1", &current, |m| (m.id.as_str(), 1))
            .into_iter()
            .take(3)
            .map(|i| current[i].id.as_str())
            .collect();
        assert_eq!(ids(&owners), expected[..2]);
        m.mark_down(&owners[0].id);
        assert_eq!(ids(&m.owners("user:1")), expected[1..3]);
    }

    #[test]
    fn recent_holders_include_owners_of_earlier_views() {
        let m = Membership::new("a", "a:1", 1);
        m.update(["a", "b"].map(member).to_vec());
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| m.owners(k)[0].id == "b")
            .unwrap();
        // A new instance wins the key: the old owner is still asked.
        let newcomer = (0..)
            .map(|i| format!("n{i}"))
            .find(|id| rendezvous::score(&key, id, 1) > rendezvous::score(&key, "b", 1))
            .unwrap();
        m.update(vec![member("a"), member("b"), member(&newcomer)]);
        assert_eq!(m.owners(&key)[0].id, newcomer);
        let mut holders = ids(&m.recent_holders(&key))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        holders.sort();
        let mut want = vec!["b".to_owned(), newcomer.clone()];
        want.sort();
        assert_eq!(holders, want);
        assert!(!m.settled());
    }

    #[test]
    fn a_leaving_instance_owns_nothing() {
        let m = Membership::new("a", "a:1", 2);
        m.update(["a", "b"].map(member).to_vec());
        m.leave();
        assert_eq!(ids(&m.current()), ["b"]);
        m.update(["a", "b"].map(member).to_vec());
        assert_eq!(ids(&m.current()), ["b"]);
        assert_eq!(ids(&m.owners("k")), ["b"]);
    }

    #[test]
    fn an_instance_counts_itself_in_until_it_leaves() {
        let m = Membership::new("new", "new:1", 2);
        // The registry still lists only the dead predecessor.
        m.update(vec![member("dead")]);
        assert_eq!(ids(&m.current()), ["dead", "new"]);
        m.mark_down("dead");
        assert_eq!(ids(&m.owners("k")), ["new"]);
        m.leave();
        assert_eq!(ids(&m.current()), ["dead"]);
    }

    #[test]
    fn the_epoch_moves_on_real_changes_only() {
        let m = Membership::new("a", "a:1", 2);
        m.update(["a", "b"].map(member).to_vec());
        let e = m.epoch();
        m.update(["b", "a"].map(member).to_vec());
        assert_eq!(m.epoch(), e);
        m.mark_down("b");
        assert_eq!(m.epoch(), e + 1);
        m.mark_down("b");
        assert_eq!(m.epoch(), e + 1);
    }
}
