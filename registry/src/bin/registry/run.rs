//! `registry run`: run any program as a registered instance of a service.
//!
//! [`run`] reads top-down as the instance's life:
//! 1. plan: pick the port, fill in `{port}`, build and validate the instance
//!    (every input error surfaces here, before anything starts);
//! 2. spawn the child and register it `starting` at once;
//! 3. wait until it answers ([`wait_ready`]), then mark it `ready`;
//! 4. serve until a trigger: SIGTERM/SIGINT, the retire key, or the child
//!    exiting; with `--health-while-running`, out of routing (`starting`)
//!    while the probe fails [`FAILURES_BEFORE_UNREADY`] times in a row, back
//!    once it passes ([`serve`]);
//! 5. drain: `draining`, the grace period while the child still serves,
//!    SIGTERM, SIGKILL after the drain timeout;
//! 6. deregister, delete the retire key, exit with the child's code.
//!
//! With `--attach` there is no child: the program runs elsewhere (another
//! container sharing this one's network) and `run` only registers what
//! answers on `--port`, drains it on a trigger, and exits 0 after the grace
//! period; whoever started the program stops it. The Docker driver runs
//! managed instances of stock images this way.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{ArgGroup, Args};
use registry::config::{parse_duration, parse_lease_ttl};
use registry::stop::{RetireWatch, StopSignals};
use registry::{EtcdArgs, Instance, InstanceState, Registration, Store};
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tracing::{Instrument, info, info_span, warn};

use crate::exit::{Failure, Outcome};
use crate::readiness::Probe;
use crate::{child, etcd, out};

/// How often readiness is probed while the child starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How often a ready program is probed with `--health-while-running`.
const WHILE_RUNNING_INTERVAL: Duration = Duration::from_secs(1);
/// Probes in a row that must fail before a ready program leaves routing.
const FAILURES_BEFORE_UNREADY: u32 = 3;
/// How long to wait for etcd to confirm a state change before going on without it.
const STATE_WRITE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("port_source")
        .args(["port", "port_env"])
        .required(true)
        .multiple(true)
))]
pub struct RunArgs {
    /// Service to register the program under.
    #[arg(long, env = "SHOAL_SERVICE", value_parser = crate::service_name)]
    pub service: String,

    /// Port the program listens on. With --port-env alone, a free port is picked.
    #[arg(long, env = "SHOAL_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Environment variable that tells the program its port (e.g. PORT).
    #[arg(long, env = "SHOAL_PORT_ENV", value_name = "VAR", value_parser = env_name)]
    pub port_env: Option<String>,

    /// Address the program listens on (probed for readiness).
    #[arg(long, env = "SHOAL_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Address to register, reachable from gateways [default: HOST:PORT]. `{port}` is filled in.
    #[arg(long, env = "SHOAL_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// HTTP path that answers 2xx/3xx once the program is ready; without it,
    /// ready means its port accepts a TCP connection.
    #[arg(long, env = "SHOAL_HEALTH_PATH", value_name = "PATH", value_parser = health_path)]
    pub health_path: Option<String>,

    /// Keep probing once ready: out of routing while the probe fails (3 in a
    /// row, 1 s apart), back in once it passes.
    #[arg(long, env = "SHOAL_HEALTH_WHILE_RUNNING")]
    pub health_while_running: bool,

    /// How long the program may take to become ready before it is stopped.
    #[arg(long, env = "SHOAL_STARTUP_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub startup_timeout: Duration,

    /// Lease TTL of the registration (at least 2s).
    #[arg(long, env = "SHOAL_LEASE_TTL", default_value = "5s", value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,

    /// How long the program keeps serving after it is marked draining, so
    /// that gateways stop sending it new requests before it is stopped.
    #[arg(long, env = "SHOAL_DRAIN_GRACE", default_value = "1s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// How long the program may take to exit after SIGTERM before it is killed.
    #[arg(long, env = "SHOAL_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Instance id [default: a new uuid v4].
    #[arg(long, env = "SHOAL_INSTANCE_ID", value_parser = instance_id)]
    pub id: Option<String>,

    /// Version to register (used by rollouts and shown by `registry list`).
    #[arg(long, env = "SHOAL_VERSION", value_name = "VERSION")]
    pub version_label: Option<String>,

    /// Label to register, repeatable (comma-separated in SHOAL_LABELS).
    #[arg(long = "label", env = "SHOAL_LABELS", value_name = "KEY=VALUE", value_parser = label, value_delimiter = ',')]
    pub labels: Vec<(String, String)>,

    /// Relative share of traffic for weighted balancing, 1..=1000.
    #[arg(long, env = "SHOAL_WEIGHT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub weight: u32,

    /// Zone to register.
    #[arg(long, env = "SHOAL_ZONE", default_value = "")]
    pub zone: String,

    /// Register a program started by someone else that listens on --port,
    /// instead of running COMMAND; exit 0 after the drain grace.
    #[arg(long, env = "SHOAL_ATTACH", conflicts_with_all = ["command", "port_env"], requires = "port")]
    pub attach: bool,

    /// The program and its arguments, after `--`. Every `{port}` is replaced by the port.
    #[arg(
        last = true,
        required_unless_present = "attach",
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

pub async fn run(args: RunArgs, etcd_args: EtcdArgs) -> Outcome {
    let plan = Plan::new(&args).map_err(Failure::Usage)?;
    let span = info_span!("run", service = %plan.instance.service, id = %plan.instance.id);
    supervise(args, etcd_args, plan).instrument(span).await
}

/// Everything `run` needs, worked out from the flags before anything starts.
#[derive(Debug)]
struct Plan {
    /// The command line with `{port}` filled in.
    argv: Vec<String>,
    port: u16,
    /// Where readiness is probed: the listen address, with a wildcard host replaced by loopback.
    probe_addr: String,
    instance: Instance,
}

impl Plan {
    fn new(args: &RunArgs) -> anyhow::Result<Plan> {
        let port = match args.port {
            Some(port) => port,
            None => free_port(&args.host)?,
        };
        let argv = child::substitute_port(&args.command, port);
        if !args.attach && argv.first().is_none_or(|p| p.is_empty()) {
            bail!("the command after `--` is empty");
        }
        let advertise = match &args.advertise {
            Some(addr) => addr.replace("{port}", &port.to_string()),
            None if is_wildcard(&args.host) => bail!(
                "--host {} listens on every interface, which nobody can connect to by that address; \
                 pass --advertise HOST:PORT with the address gateways should use",
                args.host
            ),
            None => host_port(&args.host, port),
        };
        let mut instance = Instance::new(&args.service, advertise);
        if let Some(id) = &args.id {
            instance.id = id.clone();
        }
        instance.version = args.version_label.clone().unwrap_or_default();
        instance.weight = args.weight;
        instance.zone = args.zone.clone();
        instance.labels = args.labels.iter().cloned().collect::<BTreeMap<_, _>>();
        instance
            .validate()
            .context("cannot register this instance")?;
        Ok(Plan {
            argv,
            port,
            probe_addr: host_port(probe_host(&args.host), port),
            instance,
        })
    }
}

async fn supervise(args: RunArgs, etcd_args: EtcdArgs, plan: Plan) -> Outcome {
    let keys = etcd_args.prefix.clone();
    // The client connects lazily: if etcd is down, the registration keeps
    // retrying in the background while the program starts and serves.
    let client = etcd::connect(&etcd_args).await?;
    let probe = Probe::new(plan.probe_addr.clone(), args.health_path.as_deref())
        .context("cannot build the HTTP readiness probe")?;
    let signals = StopSignals::install().context("cannot install signal handlers")?;

    let child = if args.attach {
        info!(port = plan.port, "attached to the program listening there");
        None
    } else {
        let child = child::spawn(&plan.argv, args.port_env.as_deref().map(|v| (v, plan.port)))
            .map_err(|e| spawn_failure(&plan.argv[0], e))?;
        info!(pid = child.id().unwrap_or_default(), port = plan.port, command = ?plan.argv, "started the program");
        Some(child)
    };
    let pid = child.as_ref().and_then(|c| c.id()).unwrap_or_default();
    let registration =
        Registration::start(client.clone(), &keys, plan.instance.clone(), args.lease_ttl)
            .map_err(|e| Failure::Usage(anyhow!("cannot register this instance: {e}")))?;
    let store = Store::etcd(client.clone(), keys.clone());
    let retire = RetireWatch::start(&store, &plan.instance.service, &plan.instance.id);
    let mut life = Life {
        child,
        signals,
        retire,
    };

    let outcome = serve_and_drain(&mut life, &registration, &probe, &args, &plan, pid).await;

    registration.deregister().await;
    life.retire.clean_up(&store).await;
    outcome
}

/// Steps 3 to 5: ready, serve, drain. Returns the exit code; the caller deregisters.
async fn serve_and_drain(
    life: &mut Life,
    registration: &Registration,
    probe: &Probe,
    args: &RunArgs,
    plan: &Plan,
    pid: u32,
) -> Outcome {
    let (trigger, was_ready) = match wait_ready(life, probe, args.startup_timeout).await? {
        Startup::Ready => {
            registration.set_state(InstanceState::Ready);
            if !registration
                .wait_written(InstanceState::Ready, STATE_WRITE_WAIT)
                .await
            {
                warn!("ready, but etcd has not confirmed it yet; the registration keeps retrying");
            }
            info!(addr = %plan.instance.addr, pid, "ready");
            announce(&plan.instance, pid);
            (serve(life, registration, probe, args).await?, true)
        }
        Startup::Ended(trigger) => (trigger, false),
        Startup::TimedOut => return Err(give_up_starting(life, probe, args, plan).await),
    };

    let status = match trigger {
        Trigger::Exited(status) => {
            if status.success() {
                info!(%status, "the program exited on its own");
            } else {
                warn!(%status, "the program exited on its own");
            }
            status
        }
        Trigger::Signal(signal) => {
            info!(signal, "stop signal; draining");
            drain(life, registration, args, was_ready).await?
        }
        Trigger::Retired(reason) => {
            info!(key = %life.retire.key(), %reason, "retire key appeared; draining");
            drain(life, registration, args, was_ready).await?
        }
    };
    info!(%status, "the program has exited");
    Ok(child::exit_code(status))
}

/// The running child (none with `--attach`) and the things that can end its service.
struct Life {
    child: Option<tokio::process::Child>,
    signals: StopSignals,
    retire: RetireWatch,
}

/// What ends the serving phase.
enum Trigger {
    Exited(ExitStatus),
    Signal(&'static str),
    /// The retire key appeared, with its reason.
    Retired(String),
}

impl Life {
    /// The next trigger. Cancel-safe, so it can race a probe or a timer.
    async fn next_trigger(&mut self) -> anyhow::Result<Trigger> {
        tokio::select! {
            status = wait_child(&mut self.child) => Ok(Trigger::Exited(status.context("waiting for the program")?)),
            signal = self.signals.recv() => Ok(Trigger::Signal(signal)),
            reason = self.retire.requested() => Ok(Trigger::Retired(reason)),
        }
    }
}

/// The child's exit; never, without a child.
async fn wait_child(child: &mut Option<tokio::process::Child>) -> io::Result<ExitStatus> {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

/// Stop the child after the drain timeout; an attached program is not
/// ours to stop (0).
async fn stop_child(life: &mut Life, timeout: Duration) -> io::Result<ExitStatus> {
    match &mut life.child {
        Some(child) => child::stop(child, timeout, &mut life.signals).await,
        None => Ok(std::os::unix::process::ExitStatusExt::from_raw(0)),
    }
}

/// Serve until a trigger. With `--health-while-running`, the program is
/// probed every [`WHILE_RUNNING_INTERVAL`]: [`FAILURES_BEFORE_UNREADY`]
/// failures in a row mark it `starting` (gateways stop routing to it), a
/// pass marks it `ready` again.
async fn serve(
    life: &mut Life,
    registration: &Registration,
    probe: &Probe,
    args: &RunArgs,
) -> anyhow::Result<Trigger> {
    if !args.health_while_running {
        return life.next_trigger().await;
    }
    let mut tick = tokio::time::interval(WHILE_RUNNING_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is now, and the program was just probed ready.
    tick.tick().await;
    let (mut failures, mut routed) = (0u32, true);
    loop {
        let probed = async {
            tick.tick().await;
            probe.is_ready().await
        };
        tokio::select! {
            trigger = life.next_trigger() => return trigger,
            ready = probed => {
                if ready {
                    failures = 0;
                    if !routed {
                        routed = true;
                        registration.set_state(InstanceState::Ready);
                        info!(%probe, "the probe passes again: back in routing");
                    }
                } else {
                    failures += 1;
                    if routed && failures >= FAILURES_BEFORE_UNREADY {
                        routed = false;
                        registration.set_state(InstanceState::Starting);
                        warn!(failures, %probe, "the probe fails: out of routing until it passes");
                    }
                }
            }
        }
    }
}

enum Startup {
    Ready,
    /// A trigger came before the program was ready.
    Ended(Trigger),
    TimedOut,
}

/// Probe every [`PROBE_INTERVAL`] until the program is ready, a trigger
/// comes first, or `timeout` passes.
async fn wait_ready(life: &mut Life, probe: &Probe, timeout: Duration) -> anyhow::Result<Startup> {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let probed = async {
            tick.tick().await;
            probe.is_ready().await
        };
        tokio::select! {
            trigger = life.next_trigger() => return Ok(Startup::Ended(trigger?)),
            () = sleep_until(deadline) => return Ok(Startup::TimedOut),
            ready = probed => if ready {
                return Ok(Startup::Ready);
            },
        }
    }
}

/// Stop a program that never became ready, and explain what to check.
async fn give_up_starting(life: &mut Life, probe: &Probe, args: &RunArgs, plan: &Plan) -> Failure {
    let stopped = match stop_child(life, args.drain_timeout).await {
        Ok(_) if args.attach => "and it was left running (it is not ours to stop)".to_owned(),
        Ok(status) => format!("so it was stopped ({status})"),
        Err(e) => format!("and stopping it failed ({e})"),
    };
    let hint = match &args.health_path {
        Some(path) => format!(
            "Does it listen on {} (put {{port}} in its arguments or use --port-env VAR) and answer GET {path}?",
            plan.probe_addr
        ),
        None => format!(
            "Does it listen on {}? Put {{port}} in its arguments or use --port-env VAR.",
            plan.probe_addr
        ),
    };
    Failure::Runtime(anyhow!(
        "`{}` did not become ready within {:?}: {probe} never succeeded, {stopped}. {hint}",
        plan.argv
            .first()
            .map_or("the attached program", String::as_str),
        args.startup_timeout,
    ))
}

/// Mark the instance draining, let it serve through the grace period, then stop it.
async fn drain(
    life: &mut Life,
    registration: &Registration,
    args: &RunArgs,
    was_ready: bool,
) -> anyhow::Result<ExitStatus> {
    // A program that never became ready got no traffic: nothing to drain.
    if was_ready {
        registration.set_state(InstanceState::Draining);
        // Unregistered (etcd unreachable since before the lease, or the lease
        // lost): no write to wait for. The grace period still applies, since
        // gateways keep serving their last snapshot while etcd is away.
        if registration.status().registered
            && !registration
                .wait_written(InstanceState::Draining, STATE_WRITE_WAIT)
                .await
        {
            warn!(wait = ?STATE_WRITE_WAIT, "etcd has not confirmed the draining state; draining anyway");
        }
        tokio::select! {
            () = tokio::time::sleep(args.drain_grace) => {}
            status = wait_child(&mut life.child) => return status.context("waiting for the program"),
            signal = life.signals.recv() => {
                info!(signal, "another stop signal; skipping the rest of the grace period");
            }
        }
    }
    stop_child(life, args.drain_timeout)
        .await
        .context("stopping the program")
}

/// The one line `run` prints on stdout, once the instance is registered ready.
#[derive(Serialize)]
struct Registered<'a> {
    event: &'static str,
    service: &'a str,
    id: &'a str,
    addr: &'a str,
    pid: u32,
}

fn announce(instance: &Instance, pid: u32) {
    let event = Registered {
        event: "registered",
        service: &instance.service,
        id: &instance.id,
        addr: &instance.addr,
        pid,
    };
    let line = serde_json::to_string(&event).expect("plain strings and numbers serialize");
    if let Err(e) = out::write_lines([line]) {
        warn!(error = %e, "cannot write the registered event to stdout");
    }
}

fn spawn_failure(program: &str, error: io::Error) -> Failure {
    let failure = anyhow!("cannot start `{program}`: {error}");
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => Failure::Usage(failure),
        _ => Failure::Runtime(failure),
    }
}

/// A port nobody listens on now. The program binds it a moment later; another
/// process could take it in between, in which case the program fails to start.
fn free_port(host: &str) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((host, 0))
        .with_context(|| format!("cannot pick a free port on {host}"))?;
    Ok(listener.local_addr()?.port())
}

fn is_wildcard(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

/// Where to probe a program listening on `host`: a wildcard address is reached over loopback.
fn probe_host(host: &str) -> &str {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => "127.0.0.1",
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => "::1",
        _ => host,
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn env_name(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not an environment variable name; use letters, digits and `_`, e.g. PORT"
        ))
    }
}

fn label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE; use e.g. --label tier=web"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!(
            "`{s}` has an empty key; use KEY=VALUE, e.g. --label tier=web"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn health_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{s}` is not an HTTP path; use one that starts with `/`, e.g. /healthz"
        ));
    }
    Ok(s.to_owned())
}

fn instance_id(s: &str) -> Result<String, String> {
    registry::keys::validate_segment("instance id", s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be more than zero, e.g. 60s"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<RunArgs, String> {
        let argv = ["registry", "run"].iter().chain(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Run(run),
                ..
            }) => Ok(*run),
            Ok(other) => panic!("parsed as another command: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    fn parse_err(args: &[&str]) -> String {
        match parse(args) {
            Ok(run) => panic!("{args:?} should be refused, got {run:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_good_invocation_parses() {
        let run = parse(&[
            "--service",
            "py",
            "--port-env",
            "PORT",
            "--label",
            "tier=web",
            "--label",
            "team=a=b",
            "--lease-ttl",
            "3s",
            "--drain-grace",
            "250ms",
            "--health-path",
            "/healthz",
            "--",
            "python3",
            "-m",
            "http.server",
            "{port}",
            "--bind",
            "127.0.0.1",
        ])
        .unwrap();
        assert_eq!(run.service, "py");
        assert_eq!(run.port, None);
        assert_eq!(run.port_env.as_deref(), Some("PORT"));
        assert_eq!(
            run.labels,
            [
                ("tier".to_owned(), "web".to_owned()),
                ("team".to_owned(), "a=b".to_owned())
            ]
        );
        assert_eq!(run.lease_ttl, Duration::from_secs(3));
        assert_eq!(run.drain_grace, Duration::from_millis(250));
        assert_eq!(run.health_path.as_deref(), Some("/healthz"));
        // Flags of the program after `--` belong to the program.
        assert_eq!(
            run.command,
            [
                "python3",
                "-m",
                "http.server",
                "{port}",
                "--bind",
                "127.0.0.1"
            ]
        );

        let plan = Plan::new(&run).unwrap();
        assert_eq!(plan.argv[3], plan.port.to_string());
        assert_eq!(plan.instance.addr, format!("127.0.0.1:{}", plan.port));
        assert_eq!(plan.instance.labels["team"], "a=b");

        let run = parse(&[
            "--service",
            "py",
            "--port",
            "80",
            "--label",
            "a=1,b=2",
            "--",
            "x",
        ])
        .unwrap();
        assert_eq!(run.labels.len(), 2, "{:?}", run.labels);
    }

    #[test]
    fn bad_invocations_are_refused_with_a_reason() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--service", "py", "--", "x"],
                "--port <PORT>|--port-env <VAR>",
            ),
            (&["--service", "py", "--port", "80"], "<COMMAND>"),
            (&["--service", "py", "--port", "80", "--"], "<COMMAND>"),
            (
                &["--service", "py", "--port", "0", "--", "x"],
                "0 is not in 1..=65535",
            ),
            (
                &["--service", "py", "--port", "http", "--", "x"],
                "invalid digit",
            ),
            (
                &["--service", "py", "--port", "70000", "--", "x"],
                "not in 1..=65535",
            ),
            (
                &["--service", "a/b", "--port", "80", "--", "x"],
                "contains '/'",
            ),
            (
                &[
                    "--service",
                    "py",
                    "--port",
                    "80",
                    "--label",
                    "nope",
                    "--",
                    "x",
                ],
                "`nope` is not KEY=VALUE",
            ),
            (
                &[
                    "--service",
                    "py",
                    "--port",
                    "80",
                    "--label",
                    "=v",
                    "--",
                    "x",
                ],
                "has an empty key",
            ),
            (
                &["--service", "py", "--port-env", "1PORT", "--", "x"],
                "not an environment variable name",
            ),
            (
                &[
                    "--service",
                    "py",
                    "--port",
                    "80",
                    "--lease-ttl",
                    "1s",
                    "--",
                    "x",
                ],
                "below the 2s minimum",
            ),
            (
                &[
                    "--service",
                    "py",
                    "--port",
                    "80",
                    "--health-path",
                    "healthz",
                    "--",
                    "x",
                ],
                "starts with `/`",
            ),
            (
                &[
                    "--service",
                    "py",
                    "--port",
                    "80",
                    "--drain-timeout",
                    "soon",
                    "--",
                    "x",
                ],
                "is not a duration",
            ),
            (
                &[
                    "--service",
                    "py",
                    "--port",
                    "80",
                    "--weight",
                    "0",
                    "--",
                    "x",
                ],
                "not in 1..=1000",
            ),
        ];
        for (args, want) in cases {
            let err = parse_err(args);
            assert!(err.contains(want), "{args:?}: expected {want:?} in\n{err}");
        }
    }

    #[test]
    fn plans_refuse_what_cannot_be_registered() {
        let run = parse(&[
            "--service",
            "py",
            "--port",
            "8080",
            "--host",
            "0.0.0.0",
            "--",
            "x",
        ])
        .unwrap();
        let err = Plan::new(&run).unwrap_err().to_string();
        assert!(err.contains("pass --advertise"), "{err}");

        let run = parse(&[
            "--service",
            "py",
            "--port",
            "8080",
            "--host",
            "0.0.0.0",
            "--advertise",
            "app-1:{port}",
            "--",
            "x",
        ])
        .unwrap();
        let plan = Plan::new(&run).unwrap();
        assert_eq!(plan.instance.addr, "app-1:8080");
        assert_eq!(plan.probe_addr, "127.0.0.1:8080");

        let run = parse(&[
            "--service",
            "py",
            "--port",
            "8080",
            "--advertise",
            "nowhere",
            "--",
            "x",
        ])
        .unwrap();
        let err = format!("{:#}", Plan::new(&run).unwrap_err());
        assert!(err.contains("`nowhere` has no port"), "{err}");

        let run = parse(&["--service", "py", "--port", "8080", "--", ""]).unwrap();
        let err = Plan::new(&run).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn labels() {
        assert_eq!(label("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(label(" a =b c"), Ok(("a".into(), "b c".into())));
        assert_eq!(label("a="), Ok(("a".into(), String::new())));
        assert!(label("ab").unwrap_err().contains("is not KEY=VALUE"));
        assert!(label("=b").unwrap_err().contains("empty key"));
    }

    #[test]
    fn addresses() {
        assert_eq!(host_port("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(host_port("::1", 80), "[::1]:80");
        assert_eq!(host_port("app-1", 80), "app-1:80");
        assert_eq!(probe_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(probe_host("::"), "::1");
        assert_eq!(probe_host("10.0.0.5"), "10.0.0.5");
        assert!(is_wildcard("0.0.0.0") && is_wildcard("::") && !is_wildcard("localhost"));
    }

    #[test]
    fn env_names() {
        assert!(env_name("PORT").is_ok());
        assert!(env_name("_P0RT").is_ok());
        assert!(env_name("").is_err());
        assert!(env_name("MY-PORT").is_err());
    }
}
