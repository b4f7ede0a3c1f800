//! What the controller writes to the registry, always fenced on its
//! leadership: scaling events (a bounded history per service), retire keys,
//! and the rolling-restart requests it stamps and deletes.
//!
//! [`Journal`] is one leadership term's view of the registry store: it
//! commits a tick's writes for a service in one transaction fenced on the
//! term's [`Fence`] ([`Store::commit`]), so a deposed leader writes
//! nothing, and it ends the term (cancels its `lost` token) the first time
//! a write finds the leadership gone. Tests give it the in-memory store.
//! Event keys are `events/{service}/{seq:020}`; the sequence continues from
//! the highest one stored (read once per leadership term), and every commit
//! deletes the events older than the last [`KEEP_EVENTS`] in the same
//! transaction.

use registry::store::{Fence, Store, StoreError};
use tokio_util::sync::CancellationToken;

pub use registry::store::Write;

/// Events kept per service.
pub const KEEP_EVENTS: u64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another controller leads now: stop acting.
    #[error("no longer the leader")]
    Lost,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Deposed => JournalError::Lost,
            other => JournalError::Store(other),
        }
    }
}

/// The sequence numbers for `n` new events after `last`, and below which
/// older events are deleted so that at most `keep` remain.
pub fn sequence(last: Option<u64>, n: usize, keep: u64) -> (Vec<u64>, Option<u64>) {
    let first = last.map_or(1, |l| l + 1);
    let seqs: Vec<u64> = (first..first + n as u64).collect();
    let Some(&newest) = seqs.last() else {
        return (seqs, None);
    };
    // Keep `newest - keep + 1 ..= newest`; never a range that overlaps a put
    // of the same transaction (etcd refuses that).
    let below = (newest + 1).saturating_sub(keep).min(first);
    (seqs, (below > 1).then_some(below))
}

/// One leadership term's writes.
#[derive(Clone)]
pub struct Journal {
    store: Store,
    fence: Fence,
    /// Cancelled when a fenced write finds the leadership gone.
    lost: CancellationToken,
}

impl Journal {
    pub fn new(store: Store, fence: Fence, lost: CancellationToken) -> Self {
        Journal { store, fence, lost }
    }

    /// The highest event sequence number stored for `service`.
    pub async fn last_event_seq(&self, service: &str) -> Result<Option<u64>, JournalError> {
        Ok(self.store.last_event_seq(service).await?)
    }

    /// Make `writes` atomically, only while still the leader.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), JournalError> {
        match self.store.commit(&self.fence, writes).await {
            Err(StoreError::Deposed) => {
                tracing::warn!(leader = %self.fence.key, "fenced write refused: no longer the leader");
                self.lost.cancel();
                Err(JournalError::Lost)
            }
            other => Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_continues_and_history_is_bounded() {
        assert_eq!(sequence(None, 2, 200), (vec![1, 2], None));
        assert_eq!(sequence(Some(7), 1, 200), (vec![8], None));
        // 200 kept: 1..=200 stays, the 201st pushes out seq 1.
        assert_eq!(sequence(Some(199), 1, 200), (vec![200], None));
        assert_eq!(sequence(Some(200), 1, 200), (vec![201], Some(2)));
        assert_eq!(
            sequence(Some(1000), 3, 200),
            (vec![1001, 1002, 1003], Some(804))
        );
        assert_eq!(sequence(Some(5), 0, 200), (vec![], None));
        // A batch bigger than the history never deletes its own puts.
        assert_eq!(
            sequence(Some(10), 5, 2),
            (vec![11, 12, 13, 14, 15], Some(11))
        );
    }
}
