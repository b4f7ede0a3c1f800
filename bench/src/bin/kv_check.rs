//! `kv-check`: the distributed key-value store's checker (see
//! `shoal_bench::kv_check`). Run it through `bench/kv-check.sh`, which builds
//! the binaries first. Settings (environment): CLIENTS (8), KEYS (50 per
//! client), PHASE_SECS (10), REPLICAS (2). Exits 1 if any key was lost.

use std::process::ExitCode;
use std::time::Duration;

use shoal_bench::kv_check::{CheckConfig, run};
use shoal_bench::settings::{env_number, read_or_exit};

fn config() -> Result<CheckConfig, String> {
    Ok(CheckConfig {
        clients: env_number("CLIENTS", 8, 1)? as usize,
        keys_per_client: env_number("KEYS", 50, 1)? as usize,
        phase: Duration::from_secs(env_number("PHASE_SECS", 10, 1)?),
        replicas: env_number("REPLICAS", 2, 1)? as usize,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    shoal_tests::init_logging();
    let config = match read_or_exit("kv-check", config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match run(config).await {
        Ok(report) => {
            println!("{}", report.render());
            if report.lost == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kv-check failed to run: {e:#}");
            ExitCode::from(2)
        }
    }
}
