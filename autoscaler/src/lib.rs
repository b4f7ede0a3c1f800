//! Shoal's autoscaler.
//!
//! - [`decide`]: the scaling decision, a pure function from observed load to
//!   `Decision { desired, reason, bounded_by }`, table-tested rule by rule.
//!
//! The controller (leader election, collectors, drivers, events) and the
//! `autoscaler` CLI build on it.

pub mod decide;
