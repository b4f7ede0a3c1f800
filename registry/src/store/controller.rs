//! The autoscaler's writes: scaling events (a bounded history per service),
//! retire keys, and the rolling-restart requests it stamps and ends. A
//! leader commits a tick's writes in one transaction fenced on its
//! leadership ([`Fence`]: the election key's create revision is still the
//! one it won), so a deposed leader writes nothing, even before it notices
//! ([`StoreError::Deposed`]).

use super::backend::{Compare, Op, Span, Target, Txn};
use super::{Store, StoreError};
use crate::model::{RetireRequest, Rollout, ScalingEvent};

/// Proof of leadership to write under: the election key this leader holds
/// and the revision that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
}

/// One write of a controller's tick.
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

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("registry values always serialize")
}

impl Store {
    /// The operation for `write`, refused if its value is one the registry's
    /// readers would not decode (so nothing unreadable is ever written).
    fn op(&self, write: Write) -> Result<Op, StoreError> {
        let keys = &self.keys;
        Ok(match write {
            Write::Event { seq, event } => {
                event.validate()?;
                Op::put(keys.event(&event.service, seq), json(&event))
            }
            Write::TrimEvents { service, below } => Op::Delete(Span::Range {
                from: keys.event(&service, 0),
                to: keys.event(&service, below),
            }),
            Write::Retire {
                service,
                id,
                reason,
            } => {
                let request = RetireRequest::new(reason, None);
                request.validate()?;
                Op::put(keys.retire(&service, &id), json(&request))
            }
            Write::ClearRetire { service, id } => Op::delete(keys.retire(&service, &id)),
            Write::PutRollout(rollout) => {
                rollout.validate()?;
                Op::put(keys.rollout(&rollout.service), json(&rollout))
            }
            Write::EndRollout { service } => Op::delete(keys.rollout(&service)),
        })
    }

    /// Make `writes` atomically, only while `fence` holds. A write whose
    /// value does not validate refuses the whole commit
    /// ([`StoreError::Invalid`]) before anything is sent.
    pub async fn commit(&self, fence: &Fence, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = Txn {
            when: vec![Compare::new(
                fence.key.as_str(),
                Target::CreateRevision,
                super::backend::Cmp::Equal,
                fence.create_revision,
            )],
            then: writes
                .into_iter()
                .map(|w| self.op(w))
                .collect::<Result<_, _>>()?,
            otherwise: vec![],
        };
        if self
            .write("commit the controller's writes", txn)
            .await?
            .succeeded
        {
            Ok(())
        } else {
            Err(StoreError::Deposed)
        }
    }
}
