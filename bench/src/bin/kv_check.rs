//! `kv-check`: the distributed key-value store's checker (see
//! `shoal_bench::kv_check`). Run it through `bench/kv-check.sh`, which builds
//! the binaries first. Settings (environment): CLIENTS (8), KEYS (50 per
//! client), PHASE_SECS (10), REPLICAS (2), HOT_CLIENTS (6) on HOT_KEYS (4)
//! shared keys, CHECK_SECS (60, the linearizability search per key). Exits 1
//! if any key was lost or a hot key's history is not linearizable. Runs the
//! scaling run, then (as root, with `ip` and `iptables`) the etcd-partition
//! run.

use std::process::ExitCode;
use std::time::Duration;

use shoal_bench::kv_check::{CheckConfig, CheckReport, run, run_cut_off};
use shoal_bench::settings::{env_number, read_or_exit};
use shoal_tests::netns::NetNs;

fn config() -> Result<CheckConfig, String> {
    Ok(CheckConfig {
        clients: env_number("CLIENTS", 8, 1)? as usize,
        keys_per_client: env_number("KEYS", 50, 1)? as usize,
        phase: Duration::from_secs(env_number("PHASE_SECS", 10, 1)?),
        replicas: env_number("REPLICAS", 2, 1)? as usize,
        hot_clients: env_number("HOT_CLIENTS", 6, 1)? as usize,
        hot_keys: env_number("HOT_KEYS", 4, 1)? as usize,
        check_budget: Duration::from_secs(env_number("CHECK_SECS", 60, 1)?),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    shoal_tests::init_logging();
    let config = match read_or_exit("kv-check", config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    println!("== scaling 2 → 5, kill -9, 5 → 2");
    let mut sound = match shown(run(config.clone()).await) {
        Ok(sound) => sound,
        Err(code) => return code,
    };
    // The partition needs a network namespace (root, ip, iptables).
    match NetNs::create() {
        Ok(netns) => {
            println!("== one instance cut off from etcd and healed");
            match shown(run_cut_off(config, netns).await) {
                Ok(cut_off_sound) => sound &= cut_off_sound,
                Err(code) => return code,
            }
        }
        Err(e) => eprintln!("kv-check: no etcd partition run (needs root, ip and iptables): {e}"),
    }
    if sound {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Print a run's report; whether nothing was lost and the hot keys'
/// histories are linearizable, or exit code 2 when it could not run.
fn shown(report: anyhow::Result<CheckReport>) -> Result<bool, ExitCode> {
    match report {
        Ok(report) => {
            println!("{}\n", report.render());
            Ok(report.lost == 0 && report.linearizability.linearizable())
        }
        Err(e) => {
            eprintln!("kv-check failed to run: {e:#}");
            Err(ExitCode::from(2))
        }
    }
}
