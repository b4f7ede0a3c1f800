//! `gateway`: parse flags, set up logging, build the runtime, run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use gateway::Config;

/// mimalloc rather than the system allocator: a proxied request makes a
/// couple of dozen short-lived allocations (header maps, bodies, hyper's
/// buffers and channels), and glibc's malloc/free were about 7% of the
/// gateway's instructions per request (`bench/gateway-cost.sh`). Built
/// with `no_thp` (the workspace's Cargo.toml): with transparent huge pages
/// it asks the kernel for whole 2 MiB pages for its arenas, and an idle
/// keep-alive client connection cost 22 KB of RSS instead of 14
/// (`bench/gateway-scale.sh`, idle connections).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    if config.healthcheck {
        return registry::healthcheck::run(config.admin_listen, "/healthz");
    }
    config.log.init();
    let runtime = match runtime(config.workers) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(gateway::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    };
    // Tunnels and abandoned connections may still be running; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// `--workers 1` gets a current-thread runtime: no work-stealing machinery
/// on the hot path when the gateway is pinned to one core.
fn runtime(workers: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}
