//! Shoal's autoscaler.
//!
//! - [`decide`]: the scaling decision, a pure function from observed load to
//!   `Decision { desired, reason, bounded_by }`, table-tested rule by rule.
//! - [`collect`]: load signals from every gateway's admin API, merged.
//! - [`driver`]: the `Driver` trait (start, stop, list owned instances) and the
//!   `process` driver.
//!
//! The controller (leader election, collectors, drivers, events) and the
//! `autoscaler` CLI build on it.

pub mod collect;
pub mod decide;
pub mod driver;
