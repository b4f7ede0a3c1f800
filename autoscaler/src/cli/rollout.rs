//! `autoscaler rollout restart SERVICE [--max-surge N] [--max-unavailable N]`:
//! ask the leading controller for a rolling restart (a
//! [`Rollout`] at `rollouts/{service}`, written only if none is in progress)
//! and, unless `--no-wait`, show its progress until the controller deletes
//! the request: one line per change, `rollout app [####------] 2/5 replaced`
//! (redrawn in place on a terminal), then how it ended — done (exit 0) or
//! abandoned (exit 1, with the controller's reason). Ctrl-C stops watching;
//! the restart goes on.
//!
//! Progress is read by polling (every 250 ms) the request, which the
//! controller stamps with the ids it replaces, and the service's instances:
//! an old instance is replaced once it is draining or gone.

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use registry::cli::exit::{Failure, OK};
use registry::cli::{etcd, out};
use registry::config::parse_duration;
use registry::model::Rollout;
use registry::stop::StopSignals;
use registry::{EtcdArgs, Instance, InstanceState, Store, StoreError};
use tokio::time::Instant;

use super::policy::no_policy;
use super::{Outcome, service_name};
use crate::controller::rollout::ROLLOUT;

/// How often progress is read.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub struct RolloutCommand {
    #[command(subcommand)]
    pub action: RolloutAction,
}

#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Replace every instance of a service, a few at a time, with no request dropped.
    Restart(RestartArgs),
    /// Whether a rollout is in progress, and which spec version each instance runs.
    Status(ServiceArgs),
    /// Put the service's previous spec back; the controller rolls its instances onto it.
    Undo(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// `--etcd`, `--prefix`, ...: filled in by `main`.
    #[arg(skip)]
    pub etcd: EtcdArgs,
    #[arg(value_parser = service_name)]
    pub service: String,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// `--etcd`, `--prefix`, ...: parsed at the top level (before or after the
    /// subcommand) and filled in by `main`.
    #[arg(skip)]
    pub etcd: EtcdArgs,
    /// The service to restart (it needs a policy: the autoscaler manages it).
    #[arg(value_parser = service_name)]
    pub service: String,
    /// New instances started beyond the desired count at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_surge: u32,
    /// Old instances retired before their replacement is ready, at a time.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_unavailable: u32,
    /// Ask for the restart and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to watch before giving up (the restart goes on).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn run(command: RolloutCommand) -> Outcome {
    match command.action {
        RolloutAction::Restart(args) => restart(args).await,
        RolloutAction::Status(args) => status(args).await,
        RolloutAction::Undo(args) => undo(args).await,
    }
}

impl RolloutCommand {
    /// Where the top-level etcd flags go.
    pub fn etcd_mut(&mut self) -> &mut EtcdArgs {
        match &mut self.action {
            RolloutAction::Restart(args) => &mut args.etcd,
            RolloutAction::Status(args) | RolloutAction::Undo(args) => &mut args.etcd,
        }
    }
}

/// `rollout status SERVICE`: the request in progress, if any, and the
/// versions the instances run against the spec's.
async fn status(args: ServiceArgs) -> Outcome {
    let store = etcd::store(&args.etcd).await?;
    let failure = |e| etcd::store_failure(&args.etcd, e);
    let service = args.service.as_str();
    let rollout = store.rollout(service).await.map_err(failure)?;
    let instances = store.instances(service).await.map_err(failure)?;
    let spec = store
        .service(service)
        .await
        .map_err(failure)?
        .map(|s| s.value);
    let mut lines = vec![match &rollout {
        Some(r) => format!(
            "{} (requested by {} at {})",
            progress_line(service, Some(r), &instances),
            r.requested_by,
            r.requested_at.to_rfc3339()
        ),
        None => format!("{service}: no rollout in progress"),
    }];
    match spec {
        Some(spec) => {
            let version = spec.version();
            let current = instances.iter().filter(|i| i.version == version).count();
            lines.push(format!(
                "spec version {version}: {current} of {} instance(s) run it",
                instances.len()
            ));
        }
        None => lines.push(format!(
            "{service} has no spec (it runs the controller's default command)"
        )),
    }
    out::finish(lines)?;
    Ok(OK)
}

/// `rollout undo SERVICE`: the previous spec back; the controller rolls.
async fn undo(args: ServiceArgs) -> Outcome {
    let store = etcd::store(&args.etcd).await?;
    let service = args.service.as_str();
    let change = store.undo_service(service).await.map_err(|e| match e {
        StoreError::NoService { .. } => Failure::Runtime(anyhow!(
            "{service} has no spec to roll back; autoscaler get services lists the declared ones"
        )),
        StoreError::NothingToUndo { .. } => Failure::Runtime(anyhow!(
            "{service} has no earlier spec: it has not been changed since it was declared"
        )),
        StoreError::Conflict { .. } => Failure::Runtime(anyhow!(
            "the spec of {service} changed while it was being rolled back; run the command again"
        )),
        other => etcd::store_failure(&args.etcd, other),
    })?;
    out::finish([format!(
        "rolled {service} back: spec version {} → {}; the controller rolls its instances onto it (autoscaler rollout status {service})",
        change.previous.as_deref().unwrap_or("-"),
        change.version
    )])?;
    Ok(OK)
}

async fn restart(args: RestartArgs) -> Outcome {
    let etcd_args = &args.etcd;
    let keys = etcd_args.prefix.clone();
    let service = args.service.as_str();
    let mut rollout = Rollout::request(service, "cli");
    rollout.max_surge = args.max_surge;
    rollout.max_unavailable = args.max_unavailable;
    let mut signals = StopSignals::install()
        .map_err(|e| Failure::Runtime(anyhow!("cannot install signal handlers: {e}")))?;
    let store = etcd::store(etcd_args).await?;
    let failure = |e| etcd::store_failure(etcd_args, e);
    store.request_rollout(&rollout).await.map_err(|e| match e {
        StoreError::Invalid(e) => Failure::Usage(anyhow!("invalid rollout: {e}")),
        StoreError::NoPolicy { .. } => Failure::Runtime(anyhow!(
            "{}; the autoscaler only restarts services it manages",
            no_policy(service)
        )),
        StoreError::RolloutInProgress(existing) => Failure::Runtime(anyhow!(
            "a rolling restart of {service} is already in progress (requested by {} at {}); follow it with autoscaler events {service} --follow",
            existing.requested_by,
            existing.requested_at.to_rfc3339()
        )),
        other => failure(other),
    })?;
    if args.no_wait {
        out::finish([format!(
            "rolling restart of {service} requested; follow it with autoscaler events {service} --follow"
        )])?;
        return Ok(OK);
    }

    let started = Instant::now();
    let deadline = started + args.timeout;
    let mut shown = String::new();
    let terminal = std::io::stdout().is_terminal();
    let mut stdout = std::io::stdout();
    loop {
        let current = match store.get::<Rollout>(&keys.rollout(service)).await {
            Ok(Some(stored)) => Some(stored.value),
            // Still there, but unreadable: progress unknown.
            Err(StoreError::Malformed(_)) => None,
            Ok(None) => {
                if terminal {
                    let _ = writeln!(stdout);
                }
                return finished(&store, etcd_args, service).await;
            }
            Err(e) => return Err(failure(e)),
        };
        let instances = store.instances(service).await.map_err(failure)?;
        let line = progress_line(service, current.as_ref(), &instances);
        if line != shown {
            let written = if terminal {
                write!(stdout, "\r\x1b[2K{line}").and_then(|()| stdout.flush())
            } else {
                writeln!(stdout, "{line}")
            };
            written.map_err(|e| Failure::Runtime(anyhow!("cannot write progress: {e}")))?;
            shown = line;
        }
        if Instant::now() >= deadline {
            return Err(Failure::Runtime(anyhow!(
                "the rolling restart of {service} is not done after {:.0} s; it goes on: autoscaler events {service} --follow",
                args.timeout.as_secs_f64()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            signal = signals.recv() => {
                eprintln!("\n{signal}: stopped watching; the rolling restart of {service} goes on");
                return Ok(OK);
            }
        }
    }
}

/// `rollout app [####------] 2/5 replaced · 6 instances, 5 ready`.
pub fn progress_line(service: &str, rollout: Option<&Rollout>, instances: &[Instance]) -> String {
    let ready = instances
        .iter()
        .filter(|i| i.state == InstanceState::Ready)
        .count();
    let tail = format!("{} instances, {ready} ready", instances.len());
    let Some(old) = rollout.and_then(|r| r.replacing.as_ref()) else {
        return format!("rollout {service}: waiting for the controller · {tail}");
    };
    let replaced = old
        .iter()
        .filter(|id| {
            !instances
                .iter()
                .any(|i| &i.id == *id && i.state != InstanceState::Draining)
        })
        .count();
    const WIDTH: usize = 20;
    let filled = (replaced * WIDTH).checked_div(old.len()).unwrap_or(WIDTH);
    format!(
        "rollout {service} [{}{}] {replaced}/{} replaced · {tail}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        old.len()
    )
}

/// The request is gone: the newest `rollout` event says whether it was done
/// or abandoned.
async fn finished(store: &Store, args: &EtcdArgs, service: &str) -> Outcome {
    let events = store
        .events(service, 50)
        .await
        .map_err(|e| etcd::store_failure(args, e))?;
    let last = events
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| e.kind == ROLLOUT);
    match last {
        Some(e) if e.reason.starts_with("rolling restart abandoned") => {
            Err(Failure::Runtime(anyhow!("{service}: {}", e.reason)))
        }
        Some(e) if e.reason.starts_with("rolling restart done") => {
            out::finish([format!("{service}: {}", e.reason)])?;
            Ok(OK)
        }
        _ => {
            out::finish([format!(
                "{service}: the rolling restart request is gone (deleted by hand?); see autoscaler events {service}"
            )])?;
            Ok(OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, state: InstanceState) -> Instance {
        let mut i = Instance::new("app", "127.0.0.1:1");
        i.id = id.into();
        i.state = state;
        i
    }

    #[test]
    fn progress_counts_old_instances_draining_or_gone() {
        let mut r = Rollout::request("app", "cli");
        assert_eq!(
            progress_line("app", Some(&r), &[]),
            "rollout app: waiting for the controller · 0 instances, 0 ready"
        );
        r.replacing = Some(vec!["a".into(), "b".into(), "c".into(), "d".into()]);
        let instances = [
            instance("a", InstanceState::Draining),
            instance("c", InstanceState::Ready),
            instance("d", InstanceState::Ready),
            instance("n1", InstanceState::Ready),
            instance("n2", InstanceState::Starting),
        ];
        assert_eq!(
            progress_line("app", Some(&r), &instances),
            "rollout app [##########----------] 2/4 replaced · 5 instances, 3 ready"
        );
    }
}
