//! The end-to-end harness: a real etcd and Shoal's real binaries, started on
//! free loopback ports, waited on with deadlines, and killed on drop even when
//! a test panics.
//!
//! - [`etcd`]: an etcd server (or a cluster of members) in a temp dir that
//!   can be stopped, restarted on the same ports with its data, or replaced
//!   by an empty one; a cluster's members can be killed, started again and
//!   cut off one by one.
//! - [`pki`]: test certificates (CA, server, client, an untrusted CA) for a
//!   TLS etcd.
//! - [`tls`]: a TLS client for the gateway's `--tls-listen` (SNI, ALPN,
//!   versions; HTTP/1.1 or HTTP/2 on one connection).
//! - [`process`]: a child process of ours, with its stdout lines captured and
//!   stderr saved under `target/test-logs/`.
//! - [`browser`]: headless Chromium through chromedriver, for the dashboard.
//! - [`binaries`]: where the built binaries are, and typed launchers for them.
//! - [`docker`]: the local Docker engine (skip or fail under `CI=true`),
//!   containers, cleanup on drop, and a single-node swarm left as found.
//! - [`gateway`]: a launcher for the gateway, with its proxy and admin
//!   addresses, and reads of its admin API.
//! - [`autoscaler`]: a launcher for `autoscaler run` with the process driver.
//! - [`platform`]: the one builder that starts a whole platform (etcd,
//!   routes and policies, app servers, gateways, autoscalers) for the
//!   end-to-end tests, the experiments and the fault suite, and its steady
//!   state.
//! - [`netns`]: a network namespace with a veth pair to the host, and
//!   iptables cuts inside it.
//! - [`cut_off`]: an app server in a network namespace cut off from etcd
//!   and healed.
//! - [`load`]: clients sending requests back to back, counting failures.
//! - [`grpc`]: a real gRPC service (tonic) for h2c routes, its launcher
//!   behind `registry run`, and gRPC clients and load through the gateway.
//! - [`wait`]: polling with deadlines (no fixed sleeps in tests).
//!
//! The benchmark programs that run on this harness (experiments, the fault
//! suite, the key-value checker) are the `shoal-bench` crate in `bench/`.
//! The tests themselves are in `tests/it/`, one module per area.

pub mod autoscaler;
pub mod binaries;
pub mod browser;
pub mod cut_off;
pub mod docker;
pub mod etcd;
pub mod gateway;
pub mod grpc;
pub mod load;
pub mod netns;
pub mod pki;
pub mod platform;
pub mod process;
pub mod tls;
pub mod wait;

pub use autoscaler::Autoscaler;
pub use binaries::{AppServer, AppServerOptions, bin_path, run_to_exit};
pub use etcd::Etcd;
pub use gateway::Gateway;
pub use load::{Load, LoadReport};
pub use platform::{Platform, http_client};
pub use process::Proc;
pub use wait::{wait_for, wait_until, wait_until_async};

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

/// A test that cannot run here (`message` says why and how to fix it):
/// under `CI=true` it fails with `message`, elsewhere it notes the skip on
/// stderr and gives `None` for the caller to return.
pub fn skip_unless_ci<T>(message: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    None
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on a test machine")
}
