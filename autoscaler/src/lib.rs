//! Shoal's autoscaler.
//!
//! - [`decide`]: the scaling decision, a pure function from observed load to
//!   `Decision { desired, reason, bounded_by }`, table-tested rule by rule.
//! - [`collect`]: load signals from every gateway's admin API, merged.
//! - [`driver`]: the `Driver` trait (start, stop, list owned instances) and the
//!   `process` driver.
//!
//! - [`controller`]: the control loop: count, decide, start, retire, reap,
//!   replace; every decision and action a fenced `ScalingEvent`.
//! - [`run`]: `autoscaler run`: configuration, leader election, the tick loop.
//! - [`cli`]: the operator subcommands: `policy set|get|delete`, `scale`,
//!   `status`, `events`.
//!
//! `src/main.rs` is the thin `autoscaler` binary over [`run`] and [`cli`].

pub mod cli;
pub mod collect;
pub mod controller;
pub mod decide;
pub mod driver;
pub mod run;
