//! `gateway`: parse flags, set up logging, build the runtime, run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use gateway::Config;

/// jemalloc rather than the system allocator: a proxied request makes a
/// couple of dozen short-lived allocations (header maps, bodies, hyper's
/// buffers and channels), and glibc's malloc/free were about 7% of the
/// gateway's instructions per request (`bench/gateway-cost.sh`).
///
/// jemalloc rather than mimalloc (the app server's): a burst of client
/// connections holds hyper's buffers at once, and a gateway idle after it
/// should give that memory back. jemalloc's background thread returns freed
/// pages a second after they were freed (`dirty_decay_ms:1000`, set with
/// `muzzy_decay_ms:0` in `.cargo/config.toml`), busy or not; mimalloc purges
/// only when the process allocates again, which an idle gateway does not.
/// 10,000 idle keep-alive connections opened 200 at a time: 0.84-0.94 KB
/// each against 1.8-3.2 KB with mimalloc, for about 2% more instructions per
/// request (`bench/README.md`, "Gateway at scale"). An operator can tune it
/// at start with `_RJEM_MALLOC_CONF` (jemalloc's `MALLOC_CONF`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    if config.healthcheck {
        return registry::healthcheck::run(config.admin_listen, "/healthz");
    }
    config.log.init();
    let runtime = match registry::config::runtime(config.workers) {
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
