//! Shoal's gateway: a reverse proxy that balances requests over the instances
//! registered in etcd, and an admin listener with stats, metrics and health.
//!
//! How a request flows: the [`server`] accepts it (HTTP/1.1 or h2c), the
//! [`proxy`] resolves its route in the current [`table::RoutingTable`]
//! snapshot (kept up to date by [`discovery`]), asks the route's
//! [`balance::Balancer`] for a backend, forwards it, retries on another
//! backend when that is safe, and records the outcome in [`stats`] and
//! [`health`] (passive ejection).
//!
//! Files:
//! - [`config`] holds the flags.
//! - [`discovery`] turns the registry into the immutable [`table`] snapshot (ArcSwap).
//! - [`backend`] and [`ewma`] are an instance and its live state (in-flight, peak-EWMA latency, ejection).
//! - [`balance`] has the policies: round-robin, least-request (P2C), consistent-hash, sticky; slow start.
//! - [`stats`] records request statistics without locks.

pub mod backend;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod ewma;
pub mod stats;
pub mod table;

pub use config::Config;
