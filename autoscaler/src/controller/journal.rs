//! What the controller writes to etcd, always fenced on its leadership:
//! scaling events (a bounded history per service), retire keys, and the
//! rolling-restart requests it stamps and deletes.
//!
//! [`Journal`] is the seam: [`EtcdJournal`] commits a tick's writes for a
//! service in one transaction through [`Leadership::txn`], so a deposed
//! leader writes nothing; [`MemoryJournal`] keeps them in memory for tests.
//! Event keys are `events/{service}/{seq:020}`; the sequence continues from
//! the highest one in etcd (read once per leadership term), and every commit
//! deletes the events older than the last [`KEEP_EVENTS`] in the same
//! transaction.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use etcd_client::{Client, DeleteOptions, GetOptions, SortOrder, SortTarget, TxnOp};
use registry::Keys;
use registry::config::ETCD_CALL_TIMEOUT;
use registry::election::{ElectionError, Leadership};
use registry::model::{Rollout, ScalingEvent};

/// Events kept per service.
pub const KEEP_EVENTS: u64 = 200;

/// One write of a tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Event {
        seq: u64,
        event: ScalingEvent,
    },
    /// Delete every event of `service` with a sequence number below `below`.
    TrimEvents {
        service: String,
        below: u64,
    },
    /// Ask an instance to drain and leave.
    Retire {
        service: String,
        id: String,
        reason: String,
    },
    /// Remove a retire key the instance did not clean up (stopped, not drained).
    ClearRetire {
        service: String,
        id: String,
    },
    /// Rewrite a rolling-restart request (stamped with the ids it replaces).
    PutRollout(Rollout),
    /// The rolling restart of `service` is over (done or abandoned).
    EndRollout {
        service: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another controller leads now: stop acting.
    #[error("no longer the leader")]
    Lost,
    #[error("cannot read events of {service}: {source}")]
    Read {
        service: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("fenced write failed: {0}")]
    Write(#[source] ElectionError),
}

/// Where the controller's writes go.
pub trait Journal: Send + Sync {
    /// The highest event sequence number stored for `service`.
    fn last_event_seq(
        &self,
        service: &str,
    ) -> impl Future<Output = Result<Option<u64>, JournalError>> + Send;

    /// Apply `writes` atomically, only while still the leader.
    fn commit(&self, writes: Vec<Write>) -> impl Future<Output = Result<(), JournalError>> + Send;
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

/// The etcd journal of one leadership term.
#[derive(Clone)]
pub struct EtcdJournal {
    client: Client,
    keys: Keys,
    leadership: Arc<Leadership>,
}

impl EtcdJournal {
    pub fn new(client: Client, keys: Keys, leadership: Arc<Leadership>) -> Self {
        EtcdJournal {
            client,
            keys,
            leadership,
        }
    }

    fn op(&self, write: Write) -> TxnOp {
        match write {
            Write::Event { seq, event } => TxnOp::put(
                self.keys.event(&event.service, seq),
                serde_json::to_string(&event).expect("ScalingEvent always serializes"),
                None,
            ),
            Write::TrimEvents { service, below } => TxnOp::delete(
                self.keys.event(&service, 0),
                Some(DeleteOptions::new().with_range(self.keys.event(&service, below))),
            ),
            Write::Retire {
                service,
                id,
                reason,
            } => TxnOp::put(
                self.keys.retire(&service, &id),
                serde_json::json!({ "reason": reason }).to_string(),
                None,
            ),
            Write::ClearRetire { service, id } => {
                TxnOp::delete(self.keys.retire(&service, &id), None)
            }
            Write::PutRollout(rollout) => TxnOp::put(
                self.keys.rollout(&rollout.service),
                serde_json::to_string(&rollout).expect("Rollout always serializes"),
                None,
            ),
            Write::EndRollout { service } => TxnOp::delete(self.keys.rollout(&service), None),
        }
    }
}

impl Journal for EtcdJournal {
    async fn last_event_seq(&self, service: &str) -> Result<Option<u64>, JournalError> {
        let prefix = self.keys.service_events(service);
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1);
        let mut client = self.client.clone();
        let resp = tokio::time::timeout(ETCD_CALL_TIMEOUT, client.get(prefix, Some(options)))
            .await
            .map_err(|_| JournalError::Timeout(ETCD_CALL_TIMEOUT))?
            .map_err(|source| JournalError::Read {
                service: service.to_owned(),
                source,
            })?;
        Ok(resp.kvs().first().and_then(|kv| {
            match self.keys.parse(&String::from_utf8_lossy(kv.key())) {
                Ok(registry::Key::Event { seq, .. }) => Some(seq),
                _ => None,
            }
        }))
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<(), JournalError> {
        if writes.is_empty() {
            return Ok(());
        }
        let ops = writes.into_iter().map(|w| self.op(w)).collect();
        match self.leadership.txn(ops).await {
            Ok(_) => Ok(()),
            Err(ElectionError::Lost) => Err(JournalError::Lost),
            Err(e) => Err(JournalError::Write(e)),
        }
    }
}

/// In memory, for tests: events by (service, seq) and retire keys.
#[derive(Debug, Clone, Default)]
pub struct MemoryJournal {
    pub state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
pub struct MemoryState {
    pub events: BTreeMap<(String, u64), ScalingEvent>,
    pub retired: Vec<(String, String)>,
    pub rollouts: BTreeMap<String, Rollout>,
    /// When set, every commit fails as if leadership were lost.
    pub lost: bool,
}

impl MemoryJournal {
    pub fn events(&self, service: &str) -> Vec<(u64, ScalingEvent)> {
        let state = self.state.lock().expect("journal lock poisoned");
        state
            .events
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, seq), e)| (*seq, e.clone()))
            .collect()
    }
}

impl Journal for MemoryJournal {
    async fn last_event_seq(&self, service: &str) -> Result<Option<u64>, JournalError> {
        Ok(self.events(service).last().map(|(seq, _)| *seq))
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<(), JournalError> {
        let mut state = self.state.lock().expect("journal lock poisoned");
        if state.lost {
            return Err(JournalError::Lost);
        }
        for w in writes {
            match w {
                Write::Event { seq, event } => {
                    state.events.insert((event.service.clone(), seq), event);
                }
                Write::TrimEvents { service, below } => state
                    .events
                    .retain(|(s, seq), _| !(s == &service && *seq < below)),
                Write::Retire { service, id, .. } => state.retired.push((service, id)),
                Write::ClearRetire { service, id } => state
                    .retired
                    .retain(|r| r != &(service.clone(), id.clone())),
                Write::PutRollout(rollout) => {
                    state.rollouts.insert(rollout.service.clone(), rollout);
                }
                Write::EndRollout { service } => {
                    state.rollouts.remove(&service);
                }
            }
        }
        Ok(())
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
