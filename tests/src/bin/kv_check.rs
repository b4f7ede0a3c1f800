//! `kv-check`: the distributed key-value store's checker (see
//! `shoal_tests::kv_check`). Run it through `bench/kv-check.sh`, which builds
//! the binaries first. Settings (environment): CLIENTS (8), KEYS (50 per
//! client), PHASE_SECS (10), REPLICAS (2). Exits 1 if any key was lost.

use std::process::ExitCode;
use std::time::Duration;

use shoal_tests::kv_check::{CheckConfig, run};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number"))
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    shoal_tests::init_logging();
    let config = CheckConfig {
        clients: env_usize("CLIENTS", 8),
        keys_per_client: env_usize("KEYS", 50),
        phase: Duration::from_secs(env_usize("PHASE_SECS", 10) as u64),
        replicas: env_usize("REPLICAS", 2),
    };
    eprintln!("kv-check: {config:?}");
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
