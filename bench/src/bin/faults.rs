//! `faults`: the fault suite (see `shoal_bench::faults`). Run it through
//! `bench/faults.sh`, which builds the binaries first. Settings
//! (environment): FAULTS (every fault; a comma-separated subset of
//! etcd-restart, etcd-stopped, etcd-frozen, instance-frozen, gateway-restart,
//! leader-killed, cut-off, etcd-wiped), INSTANCES (3), GET_CLIENTS (4),
//! KV_CLIENTS (4), KEYS (25 per client), STEADY_SECS (3), OUTAGE_SECS (30),
//! FREEZE_SECS (10), LEASE_TTL_SECS (3), RECOVER_TIMEOUT_SECS (40).
//! Exits 1 if an acknowledged write was lost, 2 if a fault could not run.

use std::process::ExitCode;
use std::time::Duration;

use shoal_bench::faults::{FAULTS, FaultsConfig, run};
use shoal_bench::settings::{env_number, read_or_exit};

fn config() -> Result<FaultsConfig, String> {
    let defaults = FaultsConfig::default();
    let secs = |name: &str, default: Duration, min: u64| {
        env_number(name, default.as_secs(), min).map(Duration::from_secs)
    };
    let faults = match std::env::var("FAULTS") {
        Ok(list) if !list.trim().is_empty() => {
            let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
            if let Some(bad) = names.iter().find(|n| !FAULTS.contains(&n.as_str())) {
                return Err(format!(
                    "FAULTS names `{bad}`; use a comma-separated list of {}",
                    FAULTS.join(",")
                ));
            }
            names
        }
        _ => defaults.faults.clone(),
    };
    Ok(FaultsConfig {
        instances: env_number("INSTANCES", defaults.instances as u64, 1)? as usize,
        get_clients: env_number("GET_CLIENTS", defaults.get_clients as u64, 1)? as usize,
        kv_clients: env_number("KV_CLIENTS", defaults.kv_clients as u64, 1)? as usize,
        keys_per_client: env_number("KEYS", defaults.keys_per_client as u64, 1)? as usize,
        steady: secs("STEADY_SECS", defaults.steady, 1)?,
        outage: secs("OUTAGE_SECS", defaults.outage, 1)?,
        freeze: secs("FREEZE_SECS", defaults.freeze, 1)?,
        lease_ttl: secs("LEASE_TTL_SECS", defaults.lease_ttl, 2)?,
        recover_timeout: secs("RECOVER_TIMEOUT_SECS", defaults.recover_timeout, 5)?,
        faults,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    shoal_tests::init_logging();
    let config = match read_or_exit("faults", config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match run(&config).await {
        Ok(report) => {
            println!("{}", report.render());
            if report.lost() > 0 {
                ExitCode::FAILURE
            } else if !report.errors.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("faults failed to run: {e:#}");
            ExitCode::from(2)
        }
    }
}
