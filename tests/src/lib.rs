//! The end-to-end harness: a real etcd and Shoal's real binaries, started on
//! free loopback ports, waited on with deadlines, and killed on drop even when
//! a test panics.
//!
//! - [`etcd`]: an etcd server in a temp dir that can be stopped, restarted on
//!   the same port with its data, or replaced by an empty one.
//! - [`pki`]: test certificates (CA, server, client, an untrusted CA) for a
//!   TLS etcd.
//! - [`process`]: a child process of ours, with its stdout lines captured and
//!   stderr saved under `target/test-logs/`.
//! - [`browser`]: headless Chromium through chromedriver, for the dashboard.
//! - [`binaries`]: where the built binaries are, and typed launchers for them.
//! - [`gateway`]: a launcher for the gateway, with its proxy and admin addresses.
//! - [`autoscaler`]: a launcher for `autoscaler run` with the process driver.
//! - [`experiments`]: the source notes' experiments rerun on Shoal, one
//!   table with Shoal's figures next to the source's (`bench/seed-experiments.sh`).
//! - [`kv_check`]: the distributed key-value store's checker (scale 2 → 5 → 2,
//!   a kill -9, every acknowledged write accounted for).
//! - [`faults`]: the fault suite (etcd restarted, unreachable or wiped, an
//!   instance frozen, the gateway restarted, the autoscaler leader killed, an
//!   instance cut off from etcd) under load, with a table of failed requests,
//!   lost writes and recovery times.
//! - [`netns`]: a network namespace with a veth pair to the host, and
//!   iptables cuts inside it.
//! - [`load`]: clients sending requests back to back, counting failures.
//! - [`settings`]: the benchmark binaries' environment settings.
//! - [`paired`]: round-by-round ratios of two proxies' benchmark figures,
//!   with a distribution-free interval for their median (`bench/gateway.sh`).
//! - [`wait`]: polling with deadlines (no fixed sleeps in tests).
//!
//! The tests themselves are in `tests/it/`, one module per area.

pub mod autoscaler;
pub mod binaries;
pub mod browser;
pub mod etcd;
pub mod experiments;
pub mod faults;
pub mod gateway;
pub mod kv_check;
pub mod load;
pub mod netns;
pub mod paired;
pub mod pki;
pub mod process;
pub mod settings;
pub mod wait;

pub use autoscaler::Autoscaler;
pub use binaries::{AppServer, AppServerOptions, bin_path};
pub use etcd::Etcd;
pub use gateway::Gateway;
pub use load::{Load, LoadReport};
pub use process::Proc;
pub use wait::{wait_until, wait_until_async};

/// Install a test log subscriber once (honours `RUST_LOG`, default warn).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Several tests in one binary call this; only the first install wins.
    let _already_installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on a test machine")
}
