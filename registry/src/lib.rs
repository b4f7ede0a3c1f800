//! Shoal's service registry on etcd: the contract every other crate builds on.
//!
//! - [`model`]: the values stored in etcd (`Instance`, `Route`, `ScalingPolicy`,
//!   `ScalingEvent`, `GatewayInfo`) with validation that names the bad field.
//! - [`manifest`]: a declarative file of services, policies and routes,
//!   checked whole before anything is written.
//! - [`keys`]: the key layout under a configurable prefix, built and parsed.
//! - [`cli`]: what the command-line tools share: reaching etcd with a helpful
//!   error, exit codes, tables on stdout.
//! - [`config`]: `--etcd` / `--prefix` / `--log-format` flags shared by every binary.
//! - [`etcd_tls`]: TLS files and their checks against the endpoints.
//! - [`etcd_members`]: a client of several endpoints kept off the members
//!   that do not answer.
//! - [`healthcheck`]: the `--healthcheck` probe of a binary's own endpoint.
//! - [`registration`]: an instance's leased self-registration (keep-alive,
//!   re-registration after lease loss, fencing, revoke on shutdown).
//! - [`store`]: the typed registry store — every registry read and write the
//!   programs make (routes, policies, pins, rollouts, retiring, the
//!   controller's fenced writes), over a real or an in-memory etcd.
//! - [`wire`]: what crosses a process boundary over HTTP (gateway stats,
//!   `/load`, admin API bodies), defined once for both sides.
//! - [`watcher`]: list-then-watch of a prefix with resets after compaction or
//!   reconnection, skipping malformed entries.
//! - [`election`]: leader election and transactions fenced on leadership.
//! - [`spec`]: a service's declared workload (`services/{service}`): how to
//!   run it per driver, readiness, who registers it, its content version.
//! - [`tls_cert`]: TLS certificates stored in the registry, and the check
//!   of a PEM chain and key that the CLI, readers and the gateway share.
//! - [`stop`]: what asks an instance to stop (signals, its retire key).
//! - [`proc_stat`]: another process's `/proc/{pid}/stat` line (its start
//!   time, CPU time and parent).
//! - [`ring`]: the weighted hash ring, so gateways and app servers agree on
//!   which instance owns a key; [`stable_hash`]: the fixed hash it uses.
//! - [`peer`]: a client-side balancer (power of two choices) over a service's
//!   ready instances, for calling peers without a gateway.
//!
//! The `registry` binary (`src/bin/registry/`) lists and watches the registry
//! and wraps any program so that it joins it (`registry run -- CMD`).

pub mod cli;
pub mod config;
pub mod election;
pub mod etcd_members;
pub mod etcd_tls;
pub mod healthcheck;
pub mod keys;
pub mod manifest;
pub mod model;
pub mod peer;
pub mod proc_stat;
pub mod registration;
pub mod ring;
pub mod spec;
pub mod stable_hash;
pub mod stop;
pub mod store;
pub mod tls_cert;
pub mod watcher;
pub mod wire;

pub use config::{EtcdArgs, LogArgs};
pub use keys::{Key, Keys};
pub use model::{Instance, InstanceState, RegistryValue};
pub use peer::PeerBalancer;
pub use registration::{Registration, RegistrationStatus};
pub use store::{Store, StoreError};
pub use watcher::{Snapshot, Update, Watcher};
