//! `scale_registry`: the registry side of `bench/gateway-scale.sh` (see
//! `shoal_bench::scale`). One command per run, settings from the environment:
//!
//! - `scale_registry instances`: add fake `ready` instances of SERVICE until
//!   there are COUNT, pointing in turn at ADDRS (comma-separated `host:port`
//!   of real app servers), on one lease.
//! - `scale_registry routes`: the four measured routes plus fillers, ROUTES
//!   in all.
//! - `scale_registry propagation`: SAMPLES times, put a new instance (at the
//!   first of ADDRS) and time until the gateway whose admin API is ADMIN
//!   routes it; prints `propagation_ms median M samples a b c …`.
//!
//! ETCD (the etcd URL) is always required; PREFIX (the registry's key
//! prefix) defaults to `/shoal`, SERVICE to `app`.
//! Exit status 2 when the settings are wrong or a step fails.

use std::process::ExitCode;

use shoal_bench::scale::{connect, fill, propagation};
use shoal_bench::settings::{env_number, read_or_exit};

#[derive(Debug)]
enum Command {
    Instances {
        count: usize,
        addrs: Vec<String>,
    },
    Routes {
        total: usize,
    },
    Propagation {
        admin: String,
        addr: String,
        samples: usize,
    },
}

#[derive(Debug)]
struct Settings {
    etcd: String,
    prefix: String,
    service: String,
    command: Command,
}

fn required(name: &str, example: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("{name} is not set; use e.g. {name}={example}"))
}

fn addrs() -> Result<Vec<String>, String> {
    Ok(required("ADDRS", "127.0.0.1:8081,127.0.0.1:8082")?
        .split(',')
        .map(|a| a.trim().to_owned())
        .collect())
}

fn settings() -> Result<Settings, String> {
    let usage =
        "use `scale_registry instances`, `scale_registry routes` or `scale_registry propagation`";
    let command = match std::env::args().nth(1).as_deref() {
        Some("instances") => Command::Instances {
            count: env_number("COUNT", 0, 0)? as usize,
            addrs: addrs()?,
        },
        Some("routes") => Command::Routes {
            total: env_number("ROUTES", 10, fill::MEASURED.len() as u64)? as usize,
        },
        Some("propagation") => Command::Propagation {
            admin: required("ADMIN", "http://127.0.0.1:9090")?,
            addr: addrs()?.remove(0),
            samples: env_number("SAMPLES", 5, 1)? as usize,
        },
        Some(other) => return Err(format!("unknown command `{other}`; {usage}")),
        None => return Err(format!("no command; {usage}")),
    };
    Ok(Settings {
        etcd: required("ETCD", "http://127.0.0.1:2379")?,
        prefix: std::env::var("PREFIX")
            .unwrap_or_else(|_| registry::keys::DEFAULT_PREFIX.to_owned()),
        service: std::env::var("SERVICE").unwrap_or_else(|_| "app".to_owned()),
        command,
    })
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let (backend, mut client, keys) = connect(&settings.etcd, &settings.prefix).await?;
    let service = &settings.service;
    match settings.command {
        Command::Instances { count, addrs } => {
            let written =
                fill::instances(&backend, &mut client, &keys, service, count, &addrs).await?;
            eprintln!("scale_registry: {written} fake instances written ({count} in all)");
        }
        Command::Routes { total } => {
            fill::routes(&backend, &keys, service, total).await?;
            eprintln!("scale_registry: {total} routes written");
        }
        Command::Propagation {
            admin,
            addr,
            samples,
        } => {
            let mut times = propagation::measure(&backend, &keys, &admin, service, &addr, samples)
                .await?
                .into_iter()
                .map(|t| t.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>();
            let shown: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
            times.sort_by(f64::total_cmp);
            println!(
                "propagation_ms median {:.1} samples {}",
                times[times.len() / 2],
                shown.join(" ")
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match read_or_exit("scale_registry", settings) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale_registry: {e:#}");
            ExitCode::from(2)
        }
    }
}
