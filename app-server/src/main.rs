//! `app-server`: parse flags, set up logging, run the instance.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use app_server::Config;

/// mimalloc rather than the system allocator: every request makes
/// short-lived allocations (hyper's and axum's per-request state, header
/// maps, keys and copies of values), and glibc's malloc and free
/// (`_int_free`, `malloc_consolidate`) were about a tenth of the CPU in a
/// `perf` profile of `bench/kv.sh`'s direct-to-the-primary PUTs. (The
/// gateway uses jemalloc instead, for what it gives back while idle; see
/// its `main.rs`.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    if config.healthcheck {
        return registry::healthcheck::run(config.listen, "/readyz");
    }
    config.log.init();
    let runtime = match registry::config::runtime(Some(config.workers)) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(app_server::run(config)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "app-server failed");
            ExitCode::FAILURE
        }
    };
    // A drain cut short can leave /work loops running on the blocking pool;
    // dropping the runtime would wait for them, so give them a moment only.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}
