//! Who owns a key: the service's ready instances as this instance last saw
//! them, ranked per key on a hash ring (`registry::ring`, built once per
//! view; the same ranking as the gateway's `consistent-hash` policy).
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
//! - Who may hold a key while unsettled ([`Membership::recent_rankings`],
//!   [`to_ask`]): in each recent view, the first R members of its ranking
//!   *that were there before and answer*. Members started within [`NEW_FOR`]
//!   are asked but not counted, because other instances may have written
//!   under views without them (a new instance never saw those views); and a
//!   member that is down or fails is not counted, because writers skipped it
//!   for the next one in the ranking (the sloppy quorum).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use registry::ring::Ring;
use registry::stable_hash;
use tokio::sync::watch;

/// How long after the last membership change reads still ask previous owners
/// and handed-off copies are kept.
pub const SETTLE: Duration = Duration::from_secs(10);
/// How long a peer that refused a connection is skipped as an owner.
pub const DOWN_FOR: Duration = Duration::from_secs(3);
/// How long after it started an instance counts as new: other instances
/// may still hold keys written under views without it. Two settling periods,
/// so that an instance slow to become ready is still new when it joins.
pub const NEW_FOR: Duration = Duration::from_secs(20);

/// A ready instance of the service, as the key-value store needs it.
/// Cheap to clone: a write copies its key's owners out of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: Arc<str>,
    pub addr: Arc<str>,
    pub weight: u32,
    /// When the instance started (its registry entry's `started_at`).
    pub started: SystemTime,
}

impl Member {
    /// Whether this is the instance with id `id`.
    pub fn is(&self, id: &str) -> bool {
        *self.id == *id
    }

    /// Started less than [`NEW_FOR`] before `now` (or, by a clock ahead of
    /// this one, after it).
    pub fn is_new(&self, now: SystemTime) -> bool {
        now.duration_since(self.started)
            .map_or(true, |age| age < NEW_FOR)
    }
}

#[derive(Debug)]
struct Seen {
    /// Sorted by id.
    members: Arc<Vec<Member>>,
    /// The ring of `members`, in their order.
    ring: Ring,
    /// When this view stopped being current (`None`: it still is).
    replaced: Option<Instant>,
}

#[derive(Debug)]
struct State {
    /// Oldest first; the last one is current.
    views: VecDeque<Seen>,
    down: HashMap<Arc<str>, Instant>,
    last_change: Instant,
    /// Views made current so far (down marks not counted).
    views_seen: u64,
}

/// The membership as this instance sees it; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Membership {
    /// This instance, as it counts itself before the registry lists it.
    me: Member,
    replicas: usize,
    state: Mutex<State>,
    /// When this instance started leaving ([`Membership::leave`]); on
    /// tokio's clock, which tests can pause.
    left_at: OnceLock<tokio::time::Instant>,
    /// Bumped on every change; the sync task waits on it.
    epoch: watch::Sender<u64>,
    synced_epoch: AtomicU64,
}

impl Membership {
    /// A membership with only this instance in it until the first update.
    pub fn new(
        self_id: impl Into<Arc<str>>,
        self_addr: impl Into<Arc<str>>,
        replicas: usize,
    ) -> Self {
        let me = Member {
            id: self_id.into(),
            addr: self_addr.into(),
            weight: 1,
            started: SystemTime::now(),
        };
        Membership {
            me: me.clone(),
            replicas: replicas.max(1),
            state: Mutex::new(State {
                views: VecDeque::from([Seen::new(vec![me])]),
                down: HashMap::new(),
                last_change: Instant::now(),
                views_seen: 1,
            }),
            left_at: OnceLock::new(),
            epoch: watch::Sender::new(0),
            synced_epoch: AtomicU64::new(0),
        }
    }

    pub fn self_id(&self) -> &str {
        &self.me.id
    }

    /// Replace the ready set (as read from the registry). While leaving,
    /// this instance is left out whatever the registry says; otherwise it
    /// counts itself in even before the registry lists it (a replacement
    /// serving its first request while its predecessor's entry is still
    /// there must not see itself as owning nothing).
    pub fn update(&self, members: Vec<Member>) {
        let members = self.as_viewed(members);
        let mut state = self.lock();
        if state.views.back().is_some_and(|v| *v.members == members) {
            return;
        }
        let now = Instant::now();
        if let Some(current) = state.views.back_mut() {
            current.replaced = Some(now);
        }
        state.views.push_back(Seen::new(members));
        state.last_change = now;
        state.views_seen += 1;
        prune(&mut state.views, now);
        drop(state);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Whether the current view is `members` (a ready set read from the
    /// registry), as [`Membership::update`] would make it.
    pub fn is_current(&self, members: Vec<Member>) -> bool {
        let members = self.as_viewed(members);
        *self.current() == members
    }

    /// Views made current so far: unchanged between two calls means no
    /// membership change in between (down marks aside).
    pub fn views_seen(&self) -> u64 {
        self.lock().views_seen
    }

    /// A ready set as this instance views it: without itself while leaving,
    /// with itself otherwise; sorted by id.
    fn as_viewed(&self, mut members: Vec<Member>) -> Vec<Member> {
        if self.is_leaving() {
            members.retain(|m| m.id != self.me.id);
        } else if !members.iter().any(|m| m.id == self.me.id) {
            members.push(self.me.clone());
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members
    }

    /// Stop owning keys: from now on views leave this instance out, and
    /// peers asking it to store are told it is leaving.
    pub fn leave(&self) {
        if self.left_at.set(tokio::time::Instant::now()).is_err() {
            return;
        }
        let current = self.current();
        self.update(
            current
                .iter()
                .filter(|m| m.id != self.me.id)
                .cloned()
                .collect(),
        );
    }

    /// This instance is back after its registry lease lapsed: the others'
    /// views left it out meanwhile and they coordinated its keys, so the
    /// view without it counts as a recent view (its successors are asked
    /// about its keys) and the membership is not settled: nothing is
    /// answered from the local copy alone for [`SETTLE`].
    pub fn rejoined(&self) {
        let current = self.current();
        let without: Vec<Member> = current
            .iter()
            .filter(|m| m.id != self.me.id)
            .cloned()
            .collect();
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(view) = state.views.back_mut() {
            view.replaced = Some(now);
        }
        let mut absent = Seen::new(without);
        absent.replaced = Some(now);
        state.views.push_back(absent);
        state.views.push_back(Seen::new((*current).clone()));
        state.last_change = now;
        state.views_seen += 2;
        prune(&mut state.views, now);
        drop(state);
        self.epoch.send_modify(|e| *e += 1);
    }

    pub fn is_leaving(&self) -> bool {
        self.left_at.get().is_some()
    }

    /// How long ago this instance started leaving; `None` if it has not.
    pub fn leaving_for(&self) -> Option<Duration> {
        self.left_at.get().map(|at| at.elapsed())
    }

    /// Skip `id` as an owner for [`DOWN_FOR`].
    pub fn mark_down(&self, id: &str) {
        let mut state = self.lock();
        let now = Instant::now();
        let fresh = state
            .down
            .insert(id.into(), now + DOWN_FOR)
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
        self.with_current(|current, is_up| current.members.iter().filter(|m| is_up(m)).count())
    }

    /// The key's owners now: the first R of its ranking among ready
    /// instances that are not marked down.
    pub fn owners(&self, key: &str) -> Vec<Member> {
        self.with_current(|current, is_up| current.top(key, self.replicas, is_up))
    }

    /// The key's owners ([`Self::owners`]) when its primary is another
    /// instance; `None` when this instance is the primary or no instance
    /// owns it. Nothing is copied in the first case, the one of every
    /// request that reaches its primary.
    pub fn owners_if_elsewhere(&self, key: &str) -> Option<Vec<Member>> {
        self.with_current(|current, is_up| {
            let ranked = current.ranked(key, self.replicas, is_up);
            match ranked.first() {
                Some(&primary) if current.members[primary].id != self.me.id => {
                    Some(current.members_at(&ranked))
                }
                _ => None,
            }
        })
    }

    /// The instance that takes the key over when this one leaves the view:
    /// the first of its ranking other than this instance, not marked down.
    pub fn successor(&self, key: &str) -> Option<Member> {
        self.with_current(|current, is_up| {
            current
                .top(key, 1, |m| m.id != self.me.id && is_up(m))
                .into_iter()
                .next()
        })
    }

    /// The key's ranking in every view seen within [`SETTLE`], oldest view
    /// first: what [`to_ask`] walks.
    pub fn recent_rankings(&self, key: &str) -> Vec<Vec<Member>> {
        let mut state = self.lock();
        prune(&mut state.views, Instant::now());
        state
            .views
            .iter()
            .map(|view| view.top(key, view.members.len(), |_| true))
            .collect()
    }

    /// Marked down (refused a connection in the last [`DOWN_FOR`]).
    pub fn is_down(&self, id: &str) -> bool {
        let now = Instant::now();
        self.lock().down.get(id).is_some_and(|until| *until > now)
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

    /// `f` on the current view and a test of whether a member is up (not
    /// marked down), under the lock, with expired down marks forgotten
    /// first.
    fn with_current<T>(&self, f: impl FnOnce(&Seen, &dyn Fn(&Member) -> bool) -> T) -> T {
        let mut state = self.lock();
        forget_expired_marks(&mut state);
        let current = state.views.back().expect("there is always a current view");
        f(current, &|m: &Member| !state.down.contains_key(&m.id))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A fixed fingerprint of an owner set (order-sensitive: the primary matters).
pub fn fingerprint(owners: &[Member]) -> u64 {
    // The hash of the ids joined by commas, as peers of every version make it.
    let separators = std::iter::once(&b""[..]).chain(std::iter::repeat(&b","[..]));
    let parts = separators
        .zip(owners)
        .flat_map(|(separator, m)| [separator, m.id.as_bytes()]);
    stable_hash::hash_parts(parts, b"owners").max(1)
}

fn forget_expired_marks(state: &mut State) {
    let now = Instant::now();
    state.down.retain(|_, until| *until > now);
}

/// The members to ask for the newest copy of a key, given its ranking in
/// each recent view (see the module doc): in each ranking, every member up
/// to and including the R-th that `counts` (this instance, always asked
/// through its own store, is left out of the list but counted if it is not
/// new). Without duplicates, in ranking order.
pub fn to_ask(
    rankings: &[Vec<Member>],
    replicas: usize,
    self_id: &str,
    now: SystemTime,
    counts: impl Fn(&Member) -> bool,
) -> Vec<Member> {
    let mut ask: Vec<Member> = Vec::new();
    for ranking in rankings {
        let mut counted = 0;
        for m in ranking {
            if counted >= replicas {
                break;
            }
            if m.is_new(now) {
                // Asked, but a key may also be on the next ones.
            } else if m.is(self_id) || counts(m) {
                counted += 1;
            }
            if !m.is(self_id) && !ask.iter().any(|a| a.id == m.id) {
                ask.push(m.clone());
            }
        }
    }
    ask
}

impl Seen {
    /// A current view of `members` (sorted by id).
    fn new(members: Vec<Member>) -> Seen {
        let ring = Ring::new(members.iter().map(|m| (&*m.id, m.weight)));
        Seen {
            members: Arc::new(members),
            ring,
            replaced: None,
        }
    }

    /// `key`'s first `n` members that `eligible` accepts, in ranking order.
    fn top(&self, key: &str, n: usize, eligible: impl Fn(&Member) -> bool) -> Vec<Member> {
        self.members_at(&self.ranked(key, n, eligible))
    }

    /// [`Self::top`]'s members, as indices into `members`.
    fn ranked(&self, key: &str, n: usize, eligible: impl Fn(&Member) -> bool) -> Vec<usize> {
        self.ring.rank(key, n, |i| eligible(&self.members[i]))
    }

    fn members_at(&self, indices: &[usize]) -> Vec<Member> {
        indices.iter().map(|&i| self.members[i].clone()).collect()
    }
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

    /// A member that started long ago (not new).
    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            addr: format!("{id}:1").into(),
            weight: 1,
            started: SystemTime::UNIX_EPOCH,
        }
    }

    fn ids(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| &*m.id).collect()
    }

    #[test]
    fn owners_are_the_first_r_of_the_ranking_and_skip_down_peers() {
        let m = Membership::new("a", "a:1", 2);
        m.update(["a", "b", "c", "d"].map(member).to_vec());
        let owners = m.owners("user:1");
        assert_eq!(owners.len(), 2);
        let current = m.current();
        let ring = Ring::new(current.iter().map(|m| (&*m.id, 1)));
        let expected: Vec<&str> = ring
            .rank("user:1", 3, |_| true)
            .into_iter()
            .map(|i| &*current[i].id)
            .collect();
        assert_eq!(ids(&owners), expected[..2]);
        m.mark_down(&owners[0].id);
        assert_eq!(ids(&m.owners("user:1")), expected[1..3]);
    }

    #[test]
    fn a_registry_read_is_current_as_an_update_would_view_it() {
        let m = Membership::new("a", "a:1", 2);
        m.update(["a", "b"].map(member).to_vec());
        let seen = m.views_seen();
        // Order does not matter.
        assert!(m.is_current(vec![member("b"), member("a")]));
        assert!(!m.is_current(["a", "b", "c"].map(member).to_vec()));
        // This instance counts itself in before the registry lists it.
        let unlisted = Membership::new("x", "x:1", 2);
        unlisted.update(vec![member("b")]);
        assert!(unlisted.is_current(vec![member("b")]));
        // The same set again is no new view; a down mark is none either.
        m.update(vec![member("b"), member("a")]);
        m.mark_down("b");
        assert_eq!(m.views_seen(), seen);
        m.update(["a", "b", "c"].map(member).to_vec());
        assert_eq!(m.views_seen(), seen + 1);
        // Leaving: itself left out, whether the registry lists it or not.
        m.leave();
        assert!(m.is_current(["a", "b", "c"].map(member).to_vec()));
        assert!(m.is_current(["b", "c"].map(member).to_vec()));
        assert!(!m.is_current(["a", "b"].map(member).to_vec()));
    }

    #[test]
    fn owners_if_elsewhere_are_the_owners_unless_this_is_the_primary() {
        let m = Membership::new("a", "a:1", 2);
        m.update(["a", "b", "c"].map(member).to_vec());
        let (mut here, mut elsewhere) = (0, 0);
        for key in (0..200).map(|i| format!("k{i}")) {
            let owners = m.owners(&key);
            match m.owners_if_elsewhere(&key) {
                None => {
                    assert_eq!(&*owners[0].id, "a", "{key}");
                    here += 1;
                }
                Some(forward_to) => {
                    assert_eq!(forward_to, owners, "{key}");
                    assert_ne!(&*owners[0].id, "a", "{key}");
                    elsewhere += 1;
                }
            }
        }
        assert!(
            here > 0 && elsewhere > 0,
            "{here} here, {elsewhere} elsewhere"
        );
        // A primary marked down is skipped, as by `owners`.
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| &*m.owners(k)[0].id == "b")
            .unwrap();
        m.mark_down("b");
        assert_eq!(
            m.owners_if_elsewhere(&key),
            Some(m.owners(&key)).filter(|o| &*o[0].id != "a")
        );
    }

    fn started_now(id: &str) -> Member {
        Member {
            started: SystemTime::now(),
            ..member(id)
        }
    }

    fn ask(m: &Membership, key: &str, counts: impl Fn(&Member) -> bool) -> Vec<String> {
        let mut ids: Vec<String> = to_ask(
            &m.recent_rankings(key),
            m.replicas,
            m.self_id(),
            SystemTime::now(),
            counts,
        )
        .into_iter()
        .map(|m| m.id.to_string())
        .collect();
        ids.sort();
        ids
    }

    #[test]
    fn reads_ask_the_owners_of_earlier_views() {
        let m = Membership::new("a", "a:1", 1);
        m.update(["a", "b"].map(member).to_vec());
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| &*m.owners(k)[0].id == "b")
            .unwrap();
        // An instance that has been around wins the key: the old owner is still asked.
        let newcomer = (0..)
            .map(|i| format!("n{i}"))
            .find(|id| {
                let ring = Ring::new(["a", "b", id.as_str()].map(|m| (m, 1)));
                ring.owner(&key, |_| true) == Some(2)
            })
            .unwrap();
        m.update(vec![member("a"), member("b"), member(&newcomer)]);
        assert_eq!(&*m.owners(&key)[0].id, newcomer);
        let mut want = vec!["b".to_owned(), newcomer.clone()];
        want.sort();
        assert_eq!(ask(&m, &key, |_| true), want);
        assert!(!m.settled());
    }

    #[test]
    fn a_new_instance_asks_the_owners_of_the_views_it_never_saw() {
        // Three instances have been around; "new" and "also-new" just
        // started, so "new"'s first view already has them both. Keys were
        // written under views without them: their owners must be asked.
        let m = Membership::new("new", "new:1", 2);
        let old = ["a", "b", "c"].map(member).to_vec();
        let mut listing = old.clone();
        listing.extend(["new", "also-new"].map(started_now));
        m.update(listing);
        let old_view = Seen::new(old);
        let mut new_first = 0;
        for i in 0..200 {
            let key = format!("k{i}");
            let asked = ask(&m, &key, |_| true);
            for owner in old_view.top(&key, 2, |_| true) {
                assert!(
                    asked.contains(&owner.id.to_string()),
                    "{key}: {asked:?} lacks {}",
                    owner.id
                );
            }
            new_first += usize::from(m.owners(&key)[0].id.contains("new"));
        }
        assert!(new_first > 0, "no key ranks a new instance first");
    }

    #[test]
    fn a_member_that_does_not_answer_is_not_counted_so_the_next_is_asked() {
        // A writer that found the first owner down stored the key on the
        // next instance in the ranking: a reader must ask that one too.
        let m = Membership::new("a", "a:1", 2);
        m.update(["a", "b", "c", "d"].map(member).to_vec());
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| &*m.recent_rankings(k).last().unwrap()[3].id == "a")
            .unwrap();
        let ranking: Vec<String> = m.recent_rankings(&key).last().unwrap()[..3]
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(ask(&m, &key, |_| true), sorted(ranking[..2].to_vec()));
        let dead = ranking[0].clone();
        assert_eq!(ask(&m, &key, |m| !m.is(&dead)), sorted(ranking.clone()));
    }

    #[test]
    fn a_fingerprint_is_the_hash_of_the_ids_joined_by_commas() {
        // Peers of earlier builds hashed the joined string: the value is
        // part of what instances of different builds compare.
        let joined = |ids: &[&str]| stable_hash::hash(ids.join(",").as_bytes(), b"owners").max(1);
        for ids in [&[][..], &["a"], &["b", "a"], &["node-1", "node-22", "n3"]] {
            let owners: Vec<Member> = ids.iter().map(|id| member(id)).collect();
            assert_eq!(fingerprint(&owners), joined(ids), "{ids:?}");
        }
        assert_ne!(
            fingerprint(&[member("a"), member("b")]),
            fingerprint(&[member("b"), member("a")])
        );
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
