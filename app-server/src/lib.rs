//! Shoal's reference service: a small HTTP server that registers itself in
//! etcd, answers hello, burns CPU on request and keeps a key-value store, so
//! that gateways and the autoscaler have something real to balance and scale.
//!
//! Library first; `main.rs` only parses flags, sets up logging and calls [`run`].
//!
//! - [`config`]: the clap [`Config`] (every flag has a `SHOAL_*` env var).
//! - [`state`]: [`AppState`], what handlers share, and [`Readiness`].
//! - [`routes`]: [`app`], the router; one file per endpoint group
//!   (`hello`, `work`, `kv`, `health`).
//! - [`error`]: [`ApiError`], the JSON error responses.
//! - [`stats`]: in-flight and total requests, latency window, process CPU (`/load`).
//! - [`kv`]: the distributed key-value store behind `/kv` (replication,
//!   membership, hand-off) and its key rules.
//! - [`lifecycle`]: [`run`]: bind, announce, register, serve, drain, deregister
//!   (stop signals and the retire key come from `registry::stop`).
//! - [`crash`]: `--crash-after`, dying on purpose for recovery tests.
//!
//! The router needs no etcd: readiness is read from a
//! `watch::Receiver<RegistrationStatus>`, so tests feed it from a plain channel.

#![forbid(unsafe_code)]

pub mod config;
pub mod crash;
pub mod error;
pub mod kv;
pub mod lifecycle;
pub mod routes;
pub mod state;
pub mod stats;

pub use config::Config;
pub use error::ApiError;
pub use lifecycle::run;
pub use routes::app;
pub use state::{AppState, Readiness};
