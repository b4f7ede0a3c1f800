//! [`Kv`]: the distributed store as one instance runs it. It coordinates the
//! reads and writes of the keys it is primary for, stores the copies other
//! primaries send it, and tells the HTTP edge where to forward the rest.
//!
//! - **Write** (primary): if the membership is not settled, first read the
//!   newest version from the key's recent holders; check `If-Match` against
//!   it and store a new version atomically; send the entry to the other
//!   owners (a refused owner is marked down and the next one in the ranking
//!   takes its place); acknowledge once W owners hold it, else 503.
//! - **Read** (primary): when settled and the key is here, answer from the
//!   local copy (every write of a settled key went through this primary);
//!   otherwise ask the key's recent holders (in every view of the last
//!   `SETTLE`, the first R of its ranking that were there before and answer:
//!   `membership::to_ask`), keep the newest version (tombstones included)
//!   and store it here, so the sync task repairs the other owners.
//! - **Receive** (any instance): keep the newer of the local entry and the
//!   one sent, unless this instance is leaving.
//! - **Fence** ([`super::fence`]): a request is coordinated here only once
//!   [`Kv::admit`] lets it in: the lease lives, the view is confirmed, the
//!   instance has joined. Otherwise the edge hands it over to the key's
//!   successor ([`Coordination::HandedOver`]), the instance that will be
//!   primary once this one is out of the view. A write checks again just
//!   before it takes effect if its request waited on peers meanwhile
//!   ([`Kv::still_admitted`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::join_all;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::fence::{Fence, LEASE_MARGIN, Refusal, Standing, VIEW_WAIT};
use super::membership::{Member, Membership, fingerprint, to_ask};
use super::peers::{PeerError, Peers};
use super::store::{
    Applied, Entry, LocalStore, Mismatch, Precondition, StorageFailed, WriteRefused,
};
use super::version::{Clock, Version};

/// Replication settings (`--kv-replicas`, `--kv-write-quorum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvConfig {
    /// Copies of every key (R), capped by the number of ready instances.
    pub replicas: usize,
    /// Owners that must hold a write before it is acknowledged (W).
    pub write_quorum: usize,
    /// What "hold" means: in memory, or flushed to the disk.
    pub durability: Durability,
}

impl KvConfig {
    /// R copies, acknowledged by a majority of them, in memory.
    pub fn majority(replicas: usize) -> Self {
        KvConfig {
            replicas,
            write_quorum: replicas / 2 + 1,
            durability: Durability::None,
        }
    }
}

/// `--durability`: what an owner must have done with a write before it
/// counts towards W.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// Stored in memory (and, with a data directory, written to the OS).
    #[default]
    None,
    /// Flushed to the disk ([`LocalStore::flushed`], group commit).
    Fsync,
}

/// Where a client request for a key should be handled.
#[derive(Debug)]
pub enum Route {
    /// This instance is the key's primary (or nobody else can be reached).
    Here,
    /// The key's owners, primary first; this instance is not the primary.
    Forward(Vec<Member>),
}

/// Why a read or write could not be done.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("the precondition failed")]
    Mismatch(Mismatch),
    #[error(transparent)]
    Storage(StorageFailed),
    #[error(transparent)]
    Refused(Refusal),
    #[error("only {acked} of the {needed} owners needed stored the write: {why}")]
    TooFewOwners {
        acked: usize,
        needed: usize,
        why: String,
    },
}

/// A stored write.
#[derive(Debug, Clone)]
pub struct Written {
    pub version: Version,
    /// A live value was replaced (PUT answers 200 rather than 201).
    pub replaced: bool,
    /// Owners holding it when acknowledged.
    pub copies: usize,
}

/// Why a copy sent by a peer was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReceived {
    #[error("this instance is leaving")]
    Leaving,
    #[error(transparent)]
    Storage(StorageFailed),
}

/// Why this instance coordinates a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordination {
    /// It is the key's primary in its view (or stands in for an unreachable
    /// one): a settled primary answers from its own copy.
    Primary,
    /// The key's primary lost its lease and handed the request over to its
    /// successor, this instance, whose view may still name the old primary:
    /// the recent holders are asked first, every time.
    HandedOver,
}

/// A request let in to be coordinated here ([`Kv::admit`]).
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub how: Coordination,
    /// When it was let in, and the view it was let in under.
    at: Instant,
    view: u64,
}

/// What [`Kv::replicate`] did.
struct Replicated {
    /// The key's owners after the last push.
    owners: Vec<Member>,
    /// The ids of the owners that stored the copy.
    stored_by: Vec<Arc<str>>,
    /// What the others said.
    failures: Vec<String>,
}

#[derive(Debug)]
pub struct Kv {
    store: LocalStore,
    clock: Clock,
    membership: Membership,
    peers: Peers,
    config: KvConfig,
    fence: Fence,
}

impl Kv {
    /// A store held in memory only.
    pub fn new(self_id: &str, self_addr: &str, config: KvConfig) -> Self {
        Kv::with_store(self_id, self_addr, config, LocalStore::default())
    }

    /// A store starting from `store` (e.g. one opened from `--data-dir`);
    /// the clock starts past every version in it.
    pub fn with_store(self_id: &str, self_addr: &str, config: KvConfig, store: LocalStore) -> Self {
        let clock = Clock::new(self_id);
        if let Some(newest) = store.newest_version() {
            clock.observe(newest);
        }
        Kv {
            store,
            clock,
            membership: Membership::new(self_id, self_addr, config.replicas),
            peers: Peers::default(),
            config,
            fence: Fence::default(),
        }
    }

    /// The rules that say when this instance may coordinate; unfenced
    /// until the instance registers and follows the registry.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Let a request in to be coordinated here (as `how`), once the fence
    /// allows: a joining instance waits for the end of its join delay, one
    /// whose ready state etcd has not acknowledged yet waits for that (up to
    /// [`VIEW_WAIT`]), and with `wait_for_view` an unconfirmed view is
    /// waited on as long; any other refusal is returned at once, nothing
    /// done.
    pub async fn admit(&self, how: Coordination, wait_for_view: bool) -> Result<Admitted, Refusal> {
        let give_up = Instant::now() + VIEW_WAIT;
        loop {
            match self.standing() {
                Standing::Coordinates { .. } => {
                    return Ok(Admitted {
                        how,
                        at: Instant::now(),
                        view: self.membership.views_seen(),
                    });
                }
                Standing::Joining { until } => tokio::time::sleep_until(until).await,
                Standing::Refused(Refusal::NotReady) if self.fence.wait_ready(give_up).await => {}
                Standing::Refused(Refusal::ViewUnconfirmed)
                    if wait_for_view && self.fence.wait_confirmed(give_up).await => {}
                Standing::Refused(why) => return Err(why),
            }
        }
    }

    /// Whether a request let in at `admitted` may still take effect. Within
    /// [`LEASE_MARGIN`] of its admission it may (an instance that joins
    /// later waits that much longer than a view stays confirmed); later,
    /// only if the fence still allows and the view has not changed since,
    /// so that no instance that joined meanwhile coordinates the key too.
    pub fn still_admitted(&self, admitted: &Admitted) -> Result<(), Refusal> {
        if admitted.at.elapsed() < LEASE_MARGIN {
            return Ok(());
        }
        match self.standing() {
            Standing::Coordinates { .. } if self.membership.views_seen() == admitted.view => Ok(()),
            Standing::Refused(why) => Err(why),
            Standing::Coordinates { .. } | Standing::Joining { .. } => Err(Refusal::ViewChanged),
        }
    }

    /// The fence's answer; a new lease is noticed here, before anything is
    /// coordinated on it.
    fn standing(&self) -> Standing {
        let standing = self.fence.standing();
        if standing == (Standing::Coordinates { new_lease: true }) {
            warn!("registered again on a new lease: asking the other holders before answering");
            self.membership.rejoined();
        }
        standing
    }

    /// A store of one instance, for tests and tools without a registry.
    pub fn standalone(self_id: &str) -> Self {
        Kv::new(self_id, "", KvConfig::majority(1))
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    fn self_id(&self) -> &str {
        self.membership.self_id()
    }

    /// Handle here, or forward to the key's primary.
    pub fn route(&self, key: &str) -> Route {
        match self.membership.owners_if_elsewhere(key) {
            Some(owners) => Route::Forward(owners),
            None => Route::Here,
        }
    }

    /// The key's live value, if any (coordinated by this instance).
    pub async fn read(&self, key: &str, admitted: &Admitted) -> Option<Entry> {
        self.latest(key, admitted.how)
            .await
            .filter(|e| !e.is_tombstone())
    }

    /// The newest entry of the key (tombstones included) this instance can find.
    async fn latest(&self, key: &str, how: Coordination) -> Option<Entry> {
        let local = self.store.get(key);
        if local.is_some() && self.membership.settled() && how == Coordination::Primary {
            return local;
        }
        let rankings = self.membership.recent_rankings(key);
        let now = SystemTime::now();
        let mut newest = local.clone();
        // Each peer's answer: `true` if it answered (with or without a copy).
        let mut answered: HashMap<Arc<str>, bool> = HashMap::new();
        // Who said what, for the debug line only (not built otherwise).
        let logging = tracing::enabled!(tracing::Level::DEBUG);
        let mut heard = Vec::new();
        // A peer that fails makes the next one in its ranking count: a few rounds at most.
        loop {
            let targets: Vec<Member> =
                to_ask(&rankings, self.config.replicas, self.self_id(), now, |m| {
                    answered
                        .get(&m.id)
                        .copied()
                        .unwrap_or(!self.membership.is_down(&m.id))
                })
                .into_iter()
                .filter(|m| !answered.contains_key(&m.id))
                .collect();
            if targets.is_empty() {
                break;
            }
            let answers = join_all(targets.iter().map(|h| self.peers.fetch(h, key))).await;
            for (holder, answer) in targets.iter().zip(answers) {
                answered.insert(holder.id.clone(), answer.is_ok());
                if logging {
                    let said = match &answer {
                        Ok(Some(entry)) => entry.version.to_string(),
                        Ok(None) => "none".into(),
                        Err(_) => "failed".into(),
                    };
                    heard.push(format!("{}={said}", holder.id));
                }
                match answer {
                    Ok(Some(entry)) => {
                        if newest.as_ref().is_none_or(|n| entry.version > n.version) {
                            newest = Some(entry);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => self.note_failure(holder, &e),
                }
            }
        }
        debug!(
            key,
            local = ?local.as_ref().map(|e| e.version),
            holders = ?heard,
            "read asked the key's recent holders"
        );
        if let Some(found) = &newest
            && local.as_ref().map(|l| l.version) != Some(found.version)
        {
            // Stored unconfirmed: the sync task brings the other owners up to date.
            self.clock.observe(found.version);
            match self.store.apply(key, found.clone(), 0) {
                Ok(_) => debug!(key, version = %found.version, "read repaired from a peer"),
                Err(e) => warn!(key, error = %e, "could not keep the newer copy a peer had"),
            }
        }
        newest
    }

    /// Store a value (`Some`) or a tombstone (`None`) under `precondition`.
    pub async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        precondition: Precondition,
        admitted: &Admitted,
    ) -> Result<Written, KvError> {
        let local_missing = self.store.get(key).is_none();
        if !self.membership.settled()
            || admitted.how == Coordination::HandedOver
            || (local_missing && precondition != Precondition::None)
        {
            self.latest(key, admitted.how).await;
        }
        self.still_admitted(admitted).map_err(KvError::Refused)?;
        let (entry, replaced) = self
            .store
            .compare_and_write(key, precondition, |current| Entry {
                version: self.clock.next(current),
                value,
            })
            .map_err(|refused| match refused {
                WriteRefused::Mismatch(m) => KvError::Mismatch(m),
                WriteRefused::Storage(e) => KvError::Storage(e),
            })?;

        // W in the view the pushes start from: one that grows meanwhile (a
        // new instance seen) does not ask more of a write sent under it.
        let needed_before = self.write_quorum();
        // This owner's flush (with --durability fsync) runs beside the pushes.
        let (
            flushed,
            Replicated {
                owners,
                stored_by,
                failures,
            },
        ) = tokio::join!(self.durable(), self.replicate(key, &entry));
        flushed.map_err(KvError::Storage)?;
        let here = owners.iter().any(|o| o.is(self.self_id())) as usize;
        let copies = here + owners.iter().filter(|o| stored_by.contains(&o.id)).count();
        if copies == owners.len() && !owners.is_empty() {
            self.store.confirm(key, entry.version, fingerprint(&owners));
        }
        // After the pushes: an owner that refused meanwhile no longer counts.
        let needed = self.write_quorum().min(needed_before);
        debug!(
            key,
            version = %entry.version,
            owners = %owner_ids(&owners),
            stored_by = ?stored_by,
            copies,
            needed,
            "write stored"
        );
        if copies >= needed {
            Ok(Written {
                version: entry.version,
                replaced,
                copies,
            })
        } else {
            Err(KvError::TooFewOwners {
                acked: copies,
                needed,
                why: if failures.is_empty() {
                    "no other owner is known, or the owners changed as it was written".into()
                } else {
                    failures.join("; ")
                },
            })
        }
    }

    /// Send a new entry to the key's other owners, in rounds until every
    /// owner other than this instance has it or has failed: a refused
    /// owner is replaced by the next in the ranking, and an owner that
    /// joined the view meanwhile gets it too (a few rounds at most).
    async fn replicate(&self, key: &str, entry: &Entry) -> Replicated {
        let mut stored_by: Vec<Arc<str>> = Vec::new();
        let mut failed_by: Vec<Arc<str>> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        // The owners after every push: as the round that found no one left
        // to send to saw them, else a look after the last round.
        let mut settled = None;
        for _ in 0..self.config.replicas + 1 {
            let owners = self.membership.owners(key);
            let targets: Vec<&Member> = owners
                .iter()
                .filter(|o| {
                    !o.is(self.self_id())
                        && !stored_by.contains(&o.id)
                        && !failed_by.contains(&o.id)
                })
                .collect();
            if targets.is_empty() {
                settled = Some(owners);
                break;
            }
            let ids = owner_ids(&owners);
            let answers =
                join_all(targets.iter().map(|o| self.push_copy(o, key, entry, &ids))).await;
            for (owner, answer) in targets.iter().zip(answers) {
                match answer {
                    Ok(()) => stored_by.push(owner.id.clone()),
                    Err(e) => {
                        failed_by.push(owner.id.clone());
                        failures.push(e.to_string());
                        self.note_failure(owner, &e);
                    }
                }
            }
        }
        Replicated {
            owners: settled.unwrap_or_else(|| self.membership.owners(key)),
            stored_by,
            failures,
        }
    }

    /// Push a copy to `owner`, once more if the connection broke: an owner
    /// killed meanwhile then refuses the new connection, which makes it
    /// unavailable (the caller moves on to the next owner), where a broken
    /// connection alone would count as a failed owner. Copies are
    /// idempotent, so a live owner that got the first one loses nothing.
    async fn push_copy(
        &self,
        owner: &Member,
        key: &str,
        entry: &Entry,
        ids: &str,
    ) -> Result<(), PeerError> {
        match self.peers.push(owner, key, entry, ids).await {
            Err(PeerError::Reset { .. }) => self.peers.push(owner, key, entry, ids).await,
            answer => answer,
        }
    }

    /// Wait until this instance's changes so far count as held under
    /// `--durability` (flushed to the disk for `fsync`).
    pub async fn durable(&self) -> Result<(), StorageFailed> {
        match self.config.durability {
            Durability::None => Ok(()),
            Durability::Fsync => self.store.flushed().await,
        }
    }

    /// W, capped by R and by the ready instances not refusing connections;
    /// at least one. A refused connection means nothing listens there (a
    /// partition times out instead), so this only anticipates the lease
    /// expiry that would take the instance out of the view anyway.
    fn write_quorum(&self) -> usize {
        let r = self.config.replicas.min(self.membership.up_size());
        self.config.write_quorum.min(r).max(1)
    }

    /// The local entry, for a peer's read.
    pub fn local(&self, key: &str) -> Option<Entry> {
        self.store.get(key)
    }

    /// A copy sent by a peer. Confirmed at once when the sender's owner list
    /// is this instance's own (the sender sends to every one of them).
    pub fn receive(
        &self,
        key: &str,
        entry: Entry,
        sender_owners: &str,
    ) -> Result<Applied, NotReceived> {
        if self.membership.is_leaving() {
            return Err(NotReceived::Leaving);
        }
        self.clock.observe(entry.version);
        let owners = self.membership.owners(key);
        let confirmed = if names_owners(sender_owners, &owners) {
            fingerprint(&owners)
        } else {
            0
        };
        self.store
            .apply(key, entry, confirmed)
            .map_err(NotReceived::Storage)
    }

    /// Forget a tombstone that every owner has (asked by its primary).
    pub fn purge(&self, key: &str, version: Version) -> bool {
        self.store.get(key).is_some_and(|e| e.is_tombstone()) && self.store.remove_if(key, version)
    }

    /// A peer did not answer: skip it as an owner for a while if it is gone.
    pub fn note_failure(&self, peer: &Member, error: &PeerError) {
        match error {
            PeerError::Unavailable { .. } => {
                debug!(peer = %peer.id, %error, "peer unavailable; skipping it as an owner for a while");
                self.membership.mark_down(&peer.id);
            }
            PeerError::Failed { .. } | PeerError::Reset { .. } => {
                warn!(peer = %peer.id, %error, "peer call failed")
            }
        }
    }
}

/// The owners' ids, primary first, as sent in `x-shoal-kv-owners`.
pub fn owner_ids(owners: &[Member]) -> String {
    owners.iter().map(|o| &*o.id).collect::<Vec<_>>().join(",")
}

/// Whether `ids`, as [`owner_ids`] writes them, name `owners` in their
/// order (without building the string).
fn names_owners(ids: &str, owners: &[Member]) -> bool {
    if owners.is_empty() {
        return ids.is_empty();
    }
    ids.split(',').eq(owners.iter().map(|o| &*o.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::fence::VIEW_FRESH;
    use std::time::Duration;
    use tokio::time::advance;

    use crate::kv::testing::refusing_member as member;

    #[test]
    fn owner_ids_name_their_owners_in_order_only() {
        let (a, b) = (member("a"), member("b"));
        for owners in [vec![], vec![a.clone()], vec![a.clone(), b.clone()]] {
            assert!(names_owners(&owner_ids(&owners), &owners), "{owners:?}");
        }
        assert!(!names_owners("b,a", &[a.clone(), b.clone()]));
        assert!(!names_owners("a", &[a.clone(), b.clone()]));
        assert!(!names_owners("a,b", std::slice::from_ref(&a)));
        assert!(!names_owners("", std::slice::from_ref(&a)));
        assert!(!names_owners("a", &[]));
    }

    /// A store whose view (`a`, `b`) was confirmed just now.
    fn confirmed_store() -> Kv {
        let kv = Kv::new("a", "a:1", KvConfig::majority(2));
        kv.membership().update(vec![member("a"), member("b")]);
        kv.fence().confirming_views();
        kv.fence().confirmed(Instant::now());
        kv
    }

    /// The key's owners change while its copy is on its way: `b` leaves
    /// the view and `c` joins. The write goes on to `c` rather than
    /// counting too few owners (it used to fail, stored on `a` and `b`).
    #[tokio::test]
    async fn a_write_whose_owners_change_during_its_push_goes_on_to_the_new_owner() {
        use crate::kv::testing::{accept_link, answer_frame, fake_peer, read_frame};
        use axum::http::StatusCode;
        use std::sync::Arc;
        use tokio::sync::{Notify, mpsc};

        let (got_copy, proceed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (b_got, b_go) = (got_copy.clone(), proceed.clone());
        let (b, _) = fake_peer("b", move |mut stream| {
            let (got, go) = (b_got.clone(), b_go.clone());
            async move {
                if !accept_link(&mut stream).await {
                    return;
                }
                read_frame(&mut stream).await;
                got.notify_one();
                go.notified().await;
                answer_frame(&mut stream, StatusCode::OK).await;
            }
        })
        .await;
        let (to_c, mut at_c) = mpsc::unbounded_channel();
        let (c, _) = fake_peer("c", move |mut stream| {
            let to_c = to_c.clone();
            async move {
                if !accept_link(&mut stream).await {
                    return;
                }
                loop {
                    let body = read_frame(&mut stream).await;
                    to_c.send(body).unwrap();
                    answer_frame(&mut stream, StatusCode::OK).await;
                }
            }
        })
        .await;
        let kv = Arc::new(Kv::new("a", "a:1", KvConfig::majority(2)));
        kv.membership().update(vec![member("a"), b]);
        kv.fence().confirming_views();
        kv.fence().confirmed(Instant::now());
        let admitted = kv.admit(Coordination::Primary, true).await.unwrap();
        let writer = kv.clone();
        let write = tokio::spawn(async move {
            let value = Some(Bytes::from_static(b"v"));
            writer
                .write("k", value, Precondition::None, &admitted)
                .await
        });
        got_copy.notified().await;
        kv.membership().update(vec![member("a"), c]);
        proceed.notify_one();
        let written = write.await.unwrap().expect("the write succeeds");
        assert_eq!(written.copies, 2);
        let copies = crate::kv::batch::decode(&at_c.recv().await.unwrap()).unwrap();
        assert_eq!(copies[0].key, "k");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_waited_past_the_margin_takes_effect_only_under_the_same_view() {
        let kv = confirmed_store();
        let admitted = kv.admit(Coordination::Primary, true).await.unwrap();
        // Within the margin a view change does not matter: no instance
        // that joined since can coordinate yet.
        kv.membership()
            .update(vec![member("a"), member("b"), member("c")]);
        assert_eq!(kv.still_admitted(&admitted), Ok(()));
        advance(LEASE_MARGIN).await;
        assert_eq!(kv.still_admitted(&admitted), Err(Refusal::ViewChanged));

        kv.fence().confirmed(Instant::now());
        let admitted = kv.admit(Coordination::Primary, true).await.unwrap();
        advance(LEASE_MARGIN).await;
        assert_eq!(kv.still_admitted(&admitted), Ok(()));
        // The view no longer confirmed: refused for that.
        advance(VIEW_FRESH).await;
        assert_eq!(kv.still_admitted(&admitted), Err(Refusal::ViewUnconfirmed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_stores_nothing() {
        let kv = confirmed_store();
        let admitted = kv.admit(Coordination::HandedOver, true).await.unwrap();
        advance(LEASE_MARGIN).await;
        kv.membership()
            .update(vec![member("a"), member("b"), member("c")]);
        let refused = kv
            .write(
                "k",
                Some(Bytes::from_static(b"v")),
                Precondition::None,
                &admitted,
            )
            .await;
        assert!(
            matches!(refused, Err(KvError::Refused(Refusal::ViewChanged))),
            "{refused:?}"
        );
        assert!(kv.local("k").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unconfirmed_view_is_waited_on_then_refused() {
        let kv = std::sync::Arc::new(confirmed_store());
        advance(VIEW_FRESH).await;
        let start = Instant::now();
        // Not asked to wait (it has someone to hand over to): refused at once.
        assert_eq!(
            kv.admit(Coordination::Primary, false).await.err(),
            Some(Refusal::ViewUnconfirmed)
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            kv.admit(Coordination::Primary, true).await.err(),
            Some(Refusal::ViewUnconfirmed)
        );
        assert_eq!(start.elapsed(), VIEW_WAIT);
        // Confirmed again while a request waits: it is let in then.
        let confirmer = kv.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            confirmer.fence().confirmed(Instant::now());
        });
        let start = Instant::now();
        assert!(kv.admit(Coordination::Primary, true).await.is_ok());
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }
}
