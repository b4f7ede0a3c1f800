//! The distributed key-value store behind `/kv/{key}`: every key lives on R
//! instances of the service (its owners, on a hash ring over the ready
//! instances), versioned by a hybrid logical clock, moved when the
//! membership changes and handed off before an instance leaves.
//!
//! - [`key`]: key and value rules.
//! - [`version`]: versions and the clock that issues them.
//! - [`store`]: the local last-writer-wins map.
//! - [`codec`]: the binary form of one change, for the journal and the batches.
//! - [`journal`]: `--data-dir`, the append-only file the map is rebuilt from.
//! - [`membership`]: ready instances, owners, primaries, down marks, settling.
//! - [`peers`]: calls to other instances (internal endpoints, forwarding).
//! - [`batch`]: copies pushed to one peer, gathered into batches.
//! - [`link`]: the long-lived connection to one peer the batches go on.
//! - [`cluster`]: [`Kv`], coordinating reads and writes.
//! - [`fence`]: when this instance may coordinate (lease, confirmed view, join delay).
//! - [`sync`]: the task that places entries on their owners and hands off.
//! - [`feed`]: the registry watch that keeps the membership current.
//!
//! docs/architecture.md ("Distributed key-value store") describes the
//! protocol and its guarantees.

pub mod batch;
pub mod cluster;
pub mod codec;
pub mod feed;
pub mod fence;
pub mod journal;
pub mod key;
pub mod link;
pub mod membership;
pub mod peers;
pub mod store;
pub mod sync;
#[cfg(test)]
pub mod testing;
pub mod version;

pub use cluster::{Admitted, Coordination, Durability, Kv, KvConfig, KvError, Route, Written};
pub use fence::LEASE_MARGIN;
pub use key::{MAX_KEY_BYTES, MAX_VALUE_BYTES, check_key};
