//! What a store operation can answer besides success. Each variant is a
//! different thing for the caller to do, so front ends map them to their
//! own advice (the admin API to a status code and an endpoint to call, the
//! CLI to an exit code and a command to run).

use crate::model::{DecodeError, Rollout, ValidationError};

/// What a failed write may have done, said with every such error.
pub const OUTCOME_UNKNOWN: &str = "the change may or may not have been made; read it back";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached, failed, or did not answer in time.
    #[error("cannot {what}: {detail}{}", if *.write { format!(" ({OUTCOME_UNKNOWN})") } else { String::new() })]
    Unavailable {
        what: &'static str,
        detail: String,
        /// It was a write, so it may have been made.
        write: bool,
    },
    /// etcd refused the request itself; retrying cannot help.
    #[error("cannot {what}: etcd refused it: {detail}")]
    Refused { what: &'static str, detail: String },
    /// The etcd user may not do this; nothing was done.
    #[error("cannot {what}: etcd denied it: {detail}")]
    Denied { what: &'static str, detail: String },
    /// What the caller asked to write is not valid.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// A stored value the operation depends on cannot be used.
    #[error("{0}")]
    Malformed(#[from] DecodeError),
    /// The service has no scaling policy.
    #[error("no scaling policy for `{service}`")]
    NoPolicy { service: String },
    /// The service has no spec.
    #[error("no service spec for `{service}`")]
    NoService { service: String },
    /// The service's spec history has no earlier spec to go back to.
    #[error("`{service}` has no earlier spec to roll back to")]
    NothingToUndo { service: String },
    /// The instance is not in the registry.
    #[error("no registered instance `{id}` of `{service}`")]
    NotRegistered { service: String, id: String },
    /// Someone else wrote the key between this operation's read and write.
    #[error("`{key}` changed while it was being updated")]
    Conflict { key: String },
    /// A rolling restart of the service is already in progress.
    #[error("a rollout of `{}` is already in progress", .0.service)]
    RolloutInProgress(Box<Rollout>),
    /// A fenced write found that its writer no longer leads.
    #[error("no longer the leader; the write was not made")]
    Deposed,
}

impl StoreError {
    /// etcd was not there (as opposed to an answer about the data).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}
