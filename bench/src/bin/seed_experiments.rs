//! `seed-experiments`: the source notes' experiments rerun on Shoal (see
//! `shoal_bench::experiments`). Run it through `bench/seed-experiments.sh`,
//! which builds the binaries first. Prints one table and a summary line;
//! details (failure reasons, per-instance counts) go to stderr.
//!
//! Settings (environment): PHASE_SECS (10; 3 with QUICK=1), CRASH_SECS (30;
//! 10), CRASH_INSTANCES (4), CLIENTS (8; 4), SESSIONS (20; 10), INCREMENTS
//! (5; 3). Exits 1 if a goal was not met, 2 if an experiment could not run
//! or a setting is bad.

use std::process::ExitCode;
use std::time::Duration;

use shoal_bench::experiments::{Config, Verdict, run};
use shoal_bench::settings::{env_number, read_or_exit};

fn config() -> Result<Config, String> {
    let quick = match std::env::var("QUICK").as_deref() {
        Err(_) | Ok("") | Ok("0") => false,
        Ok("1") => true,
        Ok(other) => {
            return Err(format!(
                "QUICK={other:?} is not allowed; use QUICK=1 or leave it unset"
            ));
        }
    };
    let pick = |full: u64, short: u64| if quick { short } else { full };
    Ok(Config {
        phase: Duration::from_secs(env_number("PHASE_SECS", pick(10, 3), 2)?),
        crash_load: Duration::from_secs(env_number("CRASH_SECS", pick(30, 10), 1)?),
        crash_instances: env_number("CRASH_INSTANCES", 4, 1)? as usize,
        clients: env_number("CLIENTS", pick(8, 4), 1)? as usize,
        sessions: env_number("SESSIONS", pick(20, 10), 1)? as usize,
        increments: env_number("INCREMENTS", pick(5, 3), 1)? as usize,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    shoal_tests::init_logging();
    let config = match read_or_exit("seed-experiments", config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let report = run(&config).await;
    eprint!("{}", report.details());
    println!("{}", report.render());
    if report
        .rows
        .iter()
        .any(|r| matches!(r.verdict, Verdict::CouldNotRun(_)))
    {
        ExitCode::from(2)
    } else if report.rows.iter().all(|r| r.verdict == Verdict::Met) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
