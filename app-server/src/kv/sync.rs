//! The background task that keeps every key on its owners: after a
//! membership change, after a write that did not reach every owner, and once
//! a second in any case, it sends each entry whose owner set is not known to
//! hold it to those owners. It also drops copies this instance no longer
//! owns once their owners have them and the membership has settled, and
//! purges tombstones every owner has (the primary decides, after
//! [`TOMBSTONE_GRACE`]).
//!
//! After each pass it flushes the data directory (`--data-dir`) to the disk.
//!
//! [`hand_off`] is the same pass run by a leaving instance until every entry
//! is with its new owners: scale-in loses nothing, even with one copy. When
//! the registry lists no other instance at all (every instance of the
//! service is stopping, as when a whole platform stops), it gives up once
//! the instance has been leaving for [`ALONE_WAIT`], rather than wait out
//! the whole drain timeout for nobody.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cluster::{Kv, owner_ids};
use super::membership::{Member, SETTLE, fingerprint};
use super::store::Entry;

/// How often a pass runs without a membership change.
pub const PASS_EVERY: Duration = Duration::from_secs(1);
/// A tombstone stays this long before its primary purges it everywhere.
pub const TOMBSTONE_GRACE: Duration = Duration::from_secs(60);
/// A tombstone a non-primary still has after this long is dropped regardless.
pub const TOMBSTONE_MAX_AGE: Duration = Duration::from_secs(600);
/// Entries sent at once.
const CONCURRENCY: usize = 16;
/// How long after it started leaving an instance whose view holds no other
/// instance gives up handing its entries off: long enough for the
/// registry's news of an instance becoming ready right now to arrive, far
/// shorter than a drain timeout, which the stop of every instance at once
/// would otherwise wait out in full for nobody.
pub const ALONE_WAIT: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Entries sent to every owner that lacked confirmation.
    pub placed: usize,
    /// Entries not (yet) on every owner.
    pub pending: usize,
    /// Entries with no owner to go to (no other instance while leaving).
    pub stranded: usize,
    pub dropped: usize,
    pub purged: usize,
}

impl PassReport {
    pub fn complete(&self) -> bool {
        self.pending == 0 && self.stranded == 0
    }
}

/// Run passes until `stop`.
pub async fn run(kv: Arc<Kv>, stop: CancellationToken) {
    let mut changes = kv.membership().changes();
    loop {
        let epoch = kv.membership().epoch();
        let report = pass(&kv).await;
        if report.placed + report.dropped + report.purged > 0 || !report.complete() {
            debug!(?report, epoch, "sync pass");
        }
        if report.complete() {
            kv.membership().mark_synced(epoch);
        }
        persist(&kv).await;
        tokio::select! {
            () = stop.cancelled() => return,
            _ = changes.changed() => {}
            () = tokio::time::sleep(PASS_EVERY) => {}
        }
    }
}

/// Flush the data directory (if any) to the disk, off the runtime's threads.
async fn persist(kv: &Arc<Kv>) {
    let kv = kv.clone();
    match tokio::task::spawn_blocking(move || kv.store().persist()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "cannot flush the key-value data directory to the disk; check its disk space and permissions")
        }
        Err(e) => warn!(error = %e, "the key-value flush task failed"),
    }
}

/// How a [`hand_off`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOff {
    /// Every entry is with its owners.
    Complete,
    /// The view holds no other instance to take `stranded` entries, and
    /// this one has been leaving for [`ALONE_WAIT`].
    NoOneLeft { stranded: usize },
    /// The deadline passed with `pending` entries not confirmed by their
    /// owners and `stranded` with no owner to go to.
    TimedOut { pending: usize, stranded: usize },
}

impl HandOff {
    pub fn is_complete(self) -> bool {
        self == HandOff::Complete
    }

    /// Say how the hand-off ended, once per stop (an instance hands off
    /// twice: early, and after its last request): `entries` is how many it
    /// held, `data_dir` whether they also stay in a `--data-dir`.
    pub fn log(self, entries: usize, data_dir: bool) {
        match self {
            HandOff::Complete => info!(entries, "handed every key-value entry to its owners"),
            HandOff::NoOneLeft { stranded } => {
                let fate = if data_dir {
                    "they stay in --data-dir, for an instance started on it"
                } else {
                    "they are lost with this instance (no --data-dir)"
                };
                warn!(
                    stranded,
                    "no other instance of the service is left to take the key-value entries; {fate}"
                );
            }
            HandOff::TimedOut { pending, stranded } => warn!(
                pending,
                stranded,
                "could not hand every key-value entry to another instance before the drain timeout; those not sent are lost with this instance (start another instance first, or raise --drain-timeout)"
            ),
        }
    }
}

/// Leave the membership and send every entry to its owners, in passes
/// until all arrived or `deadline` has passed. At least one pass runs, so a
/// second hand-off under the same deadline still sends what was written
/// since the first. Gives up early when the view holds no other instance
/// and this one has been leaving for [`ALONE_WAIT`]; an instance that is in
/// the view but refuses connections (marked down) is waited for until
/// `deadline`. Logs nothing itself: the caller says how it ended
/// ([`HandOff::log`]).
pub async fn hand_off(kv: &Kv, deadline: tokio::time::Instant) -> HandOff {
    kv.membership().leave();
    loop {
        let report = pass(kv).await;
        if report.complete() {
            return HandOff::Complete;
        }
        let membership = kv.membership();
        let waited_alone = membership.current().is_empty()
            && membership
                .leaving_for()
                .is_some_and(|left| left >= ALONE_WAIT);
        if waited_alone && report.pending == 0 {
            return HandOff::NoOneLeft {
                stranded: report.stranded,
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return HandOff::TimedOut {
                pending: report.pending,
                stranded: report.stranded,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

enum Work {
    Place {
        key: String,
        entry: Entry,
        owners: Vec<Member>,
    },
    Purge {
        key: String,
        entry: Entry,
        owners: Vec<Member>,
    },
}

/// One pass over every local entry.
pub async fn pass(kv: &Kv) -> PassReport {
    let self_id = kv.membership().self_id().to_owned();
    let quiet = !kv.membership().is_leaving() && kv.membership().quiet_for(SETTLE);
    let mut report = PassReport::default();
    let mut work = Vec::new();
    for (key, entry, confirmed, since) in kv.store().scan() {
        let owners = kv.membership().owners(&key);
        if owners.is_empty() {
            report.stranded += 1;
            continue;
        }
        let mine = owners.iter().any(|o| o.is(&self_id));
        if confirmed != fingerprint(&owners) {
            work.push(Work::Place { key, entry, owners });
            continue;
        }
        if !mine {
            if quiet && kv.store().remove_if(&key, entry.version) {
                report.dropped += 1;
            }
        } else if entry.is_tombstone() {
            let primary = owners[0].is(&self_id);
            if primary && since.elapsed() >= TOMBSTONE_GRACE {
                work.push(Work::Purge { key, entry, owners });
            } else if !primary
                && since.elapsed() >= TOMBSTONE_MAX_AGE
                && kv.store().remove_if(&key, entry.version)
            {
                report.purged += 1;
            }
        }
    }
    let results: Vec<Outcome> = futures::stream::iter(work)
        .map(|w| run_work(kv, w, &self_id))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for outcome in results {
        match outcome {
            Outcome::Placed => report.placed += 1,
            Outcome::Pending => report.pending += 1,
            Outcome::Purged => report.purged += 1,
        }
    }
    report
}

enum Outcome {
    Placed,
    Pending,
    Purged,
}

async fn run_work(kv: &Kv, work: Work, self_id: &str) -> Outcome {
    match work {
        Work::Place { key, entry, owners } => {
            let ids = owner_ids(&owners);
            let mut all = true;
            for owner in owners.iter().filter(|o| !o.is(self_id)) {
                if let Err(e) = kv.peers().push(owner, &key, &entry, &ids).await {
                    kv.note_failure(owner, &e);
                    all = false;
                }
            }
            if all {
                kv.store()
                    .confirm(&key, entry.version, fingerprint(&owners));
                Outcome::Placed
            } else {
                Outcome::Pending
            }
        }
        Work::Purge { key, entry, owners } => {
            for owner in owners.iter().filter(|o| !o.is(self_id)) {
                if let Err(e) = kv.peers().purge(owner, &key, entry.version).await {
                    kv.note_failure(owner, &e);
                    return Outcome::Pending;
                }
            }
            kv.store().remove_if(&key, entry.version);
            Outcome::Purged
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::kv::KvConfig;
    use crate::kv::testing::refusing_member;
    use crate::kv::version::Version;

    /// An instance holding one entry, whose view is `members`.
    fn holding_one_entry(members: Vec<Member>) -> Kv {
        let kv = Kv::new("a", "a:1", KvConfig::majority(2));
        kv.membership().update(members);
        let entry = Entry {
            version: Version { hlc: 1, node: 1 },
            value: Some(Bytes::from_static(b"v")),
        };
        kv.store().apply("k", entry, 0).unwrap();
        kv
    }

    /// Every instance stopping at once: with no other instance in the view
    /// `ALONE_WAIT` after it started leaving, there is nowhere to send the
    /// entries and nobody coming, so the drain timeout is not waited out.
    #[tokio::test(start_paused = true)]
    async fn a_hand_off_with_no_other_instance_gives_up_after_the_alone_wait_and_a_second_one_at_once()
     {
        let kv = holding_one_entry(vec![refusing_member("a")]);
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(30);
        assert_eq!(
            hand_off(&kv, deadline).await,
            HandOff::NoOneLeft { stranded: 1 }
        );
        let waited = started.elapsed();
        assert!(
            waited >= ALONE_WAIT && waited < ALONE_WAIT + Duration::from_millis(300),
            "gave up after {waited:?}"
        );
        // The hand-off after the last in-flight request: one more pass.
        let again = tokio::time::Instant::now();
        assert_eq!(
            hand_off(&kv, deadline).await,
            HandOff::NoOneLeft { stranded: 1 }
        );
        assert_eq!(again.elapsed(), Duration::ZERO);
        assert_eq!(kv.store().len(), 1, "the entry is not dropped");
    }

    /// An instance still in the view that refuses connections (restarting,
    /// say) may take the entries yet: it is waited for until the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_hand_off_to_an_instance_that_refuses_waits_until_its_deadline() {
        let kv = holding_one_entry(vec![refusing_member("a"), refusing_member("b")]);
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(5);
        let ended = hand_off(&kv, deadline).await;
        assert!(matches!(ended, HandOff::TimedOut { .. }), "{ended:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_millis(5300),
            "gave up after {waited:?}"
        );
    }
}
