//! `autoscaler run`: the controller process. It campaigns for leadership
//! (`{prefix}/autoscaler/leader`, value = its `--id`); only the leader ticks,
//! every `--interval`. When leadership is lost it stops acting at once and
//! campaigns again; its in-memory bookkeeping (instances it started,
//! retirements in progress) carries over to its next term.
//!
//! On SIGUSR2 it asks for a rolling restart of every service with a policy
//! (a `rollouts/{service}` request each, skipping those in progress); the
//! leader carries them out (see `controller::rollout`). Any controller can
//! be signalled, leader or not.
//!
//! On SIGTERM or Ctrl-C it resigns (another controller takes over at once)
//! and exits 0, **leaving the instances it started running**: they are
//! registered and serving, and stopping a controller must not take a service
//! down. With `--stop-on-exit` (a local `autoscaler up`) it stops them first.
//! A later controller adopts them: the process driver through the pid files
//! in `--log-dir` (same machine, same directory), the docker driver
//! (`--driver docker`, flags in [`DockerArgs`]) through the labels of the
//! containers on its engine, the swarm driver (`--driver swarm`, the same
//! flags) through the labels of the Swarm services.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use registry::EtcdArgs;
use registry::config::{parse_duration, parse_lease_ttl};
use registry::election::Election;
use registry::model::Rollout;
use registry::stop::StopSignals;
use registry::{Store, StoreError};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::controller::journal::{Journal, JournalError};
use crate::controller::observe::Observer;
use crate::controller::{Controller, Settings};
use crate::driver::Driver;
use crate::driver::docker::DockerDriver;
use crate::driver::docker_args::DockerArgs;
use crate::driver::process::{ProcessDriver, ProcessTemplate};
use crate::driver::swarm::{SwarmConfig, SwarmDriver};

/// How instances are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverKind {
    /// Local child processes from `--command`.
    Process,
    /// Containers through the Docker Engine API.
    Docker,
    /// One Docker Swarm service per instance, on a Swarm manager (the
    /// docker driver's flags; `--network` an overlay network).
    Swarm,
}

/// Flags of `autoscaler run`.
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// `--etcd`, `--prefix`, ...: parsed at the top level (before or after the
    /// subcommand) and filled in by `main`.
    #[arg(skip)]
    pub etcd: EtcdArgs,

    /// How instances are started and stopped.
    #[arg(long, env = "SHOAL_DRIVER", value_enum, default_value_t = DriverKind::Process)]
    pub driver: DriverKind,

    /// The instance command for the process driver, split on whitespace (no
    /// quoting); `{service}`, `{id}` and `{port}` are replaced. Default: the
    /// `app-server` next to this executable, registering under `--etcd`/`--prefix`.
    #[arg(long, env = "SHOAL_COMMAND")]
    pub command: Option<String>,

    /// Where the process driver writes each instance's output.
    #[arg(long, env = "SHOAL_LOG_DIR", default_value = ".shoal/instances")]
    pub log_dir: PathBuf,

    /// Where the process driver keeps the data directories of services
    /// whose spec says `data_dir: true` (`{service}/{n}` below it).
    #[arg(long, env = "SHOAL_DATA_ROOT", default_value = ".shoal/data")]
    pub data_root: PathBuf,

    /// How often the leader observes and decides.
    #[arg(long, env = "SHOAL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Lease TTL of the leadership, and of the instances the default command starts.
    #[arg(long, env = "SHOAL_LEASE_TTL", default_value = "5s", value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,

    /// This controller's id in the election [default: `autoscaler-` and 8 random hex digits].
    #[arg(long, env = "SHOAL_AUTOSCALER_ID")]
    pub id: Option<String>,

    /// Stop every instance this controller owns when it exits (the docker
    /// driver owns every container labelled with the prefix, adopted ones too).
    #[arg(long, env = "SHOAL_STOP_ON_EXIT")]
    pub stop_on_exit: bool,

    /// How long a stopped instance gets to drain before it is killed.
    #[arg(long, env = "SHOAL_STOP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub stop_timeout: Duration,

    #[command(flatten)]
    pub docker: DockerArgs,
}

impl RunConfig {
    /// The process driver's template: `--command`, or the sibling `app-server`.
    pub fn process_template(&self) -> anyhow::Result<ProcessTemplate> {
        let argv = match &self.command {
            Some(command) => {
                let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
                if argv.is_empty() {
                    bail!("--command is empty; give the program and its arguments");
                }
                argv
            }
            None => {
                let exe = std::env::current_exe().context("cannot find this executable")?;
                let app = exe.with_file_name("app-server");
                if !app.is_file() {
                    bail!(
                        "no app-server next to {} (looked for {}); build it or pass --command",
                        exe.display(),
                        app.display()
                    );
                }
                if self.etcd.endpoints.is_empty() {
                    bail!("--etcd names no endpoint");
                }
                let endpoint = self.etcd.endpoints.join(",");
                vec![
                    app.display().to_string(),
                    "--etcd".into(),
                    endpoint,
                    "--prefix".into(),
                    self.etcd.prefix.prefix().to_owned(),
                    "--service".into(),
                    "{service}".into(),
                    "--id".into(),
                    "{id}".into(),
                    // No --listen: app-server's default (127.0.0.1:0), or
                    // SHOAL_LISTEN from the controller's environment.
                    "--lease-ttl".into(),
                    format!("{}ms", self.lease_ttl.as_millis()),
                ]
            }
        };
        // Every instance reaches the controller's registry: self-registering
        // programs and `registry run` read these.
        let mut env = vec![
            ("SHOAL_ETCD".to_owned(), self.etcd.endpoints.join(",")),
            (
                "SHOAL_PREFIX".to_owned(),
                self.etcd.prefix.prefix().to_owned(),
            ),
            (
                "SHOAL_LEASE_TTL".to_owned(),
                format!("{}ms", self.lease_ttl.as_millis()),
            ),
        ];
        env.extend(self.etcd.credentials_env());
        let exe = std::env::current_exe().context("cannot find this executable")?;
        Ok(ProcessTemplate {
            argv,
            env,
            log_dir: self.log_dir.clone(),
            data_root: self.data_root.clone(),
            registry: exe.with_file_name("registry"),
        })
    }
}

/// Run the controller until SIGTERM or Ctrl-C.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let signals = StopSignals::install().context("cannot install signal handlers")?;
    // Installed before anything else: SIGUSR2's default action is to exit.
    let usr2 = signal(SignalKind::user_defined2()).context("cannot install the SIGUSR2 handler")?;
    match config.driver {
        DriverKind::Process => {
            let template = config.process_template()?;
            info!(command = template.argv.join(" "), log_dir = %template.log_dir.display(), "process driver");
            run_with(config, ProcessDriver::new(template), signals, usr2).await
        }
        DriverKind::Docker => {
            let docker = config.docker.config(&config.etcd, config.lease_ttl)?;
            info!(
                image = %docker.image,
                network = ?docker.network,
                advertise = ?docker.advertise,
                instance_etcd = %docker.etcd_url,
                "docker driver"
            );
            let driver = DockerDriver::connect(docker)
                .await
                .context("docker driver")?;
            run_with(config, driver, signals, usr2).await
        }
        DriverKind::Swarm => {
            let containers = config.docker.config(&config.etcd, config.lease_ttl)?;
            info!(
                image = %containers.image,
                network = ?containers.network,
                instance_etcd = %containers.etcd_url,
                "swarm driver"
            );
            let swarm = SwarmConfig {
                containers,
                stop_grace: config.stop_timeout,
                ..SwarmConfig::default()
            };
            let driver = SwarmDriver::connect(swarm).await.context("swarm driver")?;
            run_with(config, driver, signals, usr2).await
        }
    }
}

enum TermEnd {
    Lost,
    Signal(&'static str),
}

async fn run_with<D: Driver>(
    config: RunConfig,
    driver: D,
    mut signals: StopSignals,
    usr2: Signal,
) -> anyhow::Result<()> {
    let id = config.id.clone().unwrap_or_else(|| {
        format!(
            "autoscaler-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    let keys = config.etcd.prefix.clone();
    let client = config
        .etcd
        .connect()
        .await
        .context("cannot connect to etcd; check --etcd, and --etcd-user/--etcd-password and --etcd-ca/--etcd-cert/--etcd-key if etcd requires them")?;
    let store = Store::etcd(client.clone(), keys.clone());
    tokio::spawn(roll_all_on_signal(usr2, store.clone()));
    let driver = Arc::new(driver);
    let settings = Settings {
        lease_ttl: config.lease_ttl,
        stop_grace: config.stop_timeout,
        ..Settings::default()
    };
    let mut controller = Controller::new(driver.clone(), settings);
    let mut observer = Observer::start(&store);
    let election = Election::new(client.clone(), &keys);

    loop {
        info!(%id, election = %keys.leader(), "campaigning for leadership");
        let won = tokio::select! {
            won = election.campaign(&id, config.lease_ttl) => won,
            signal = signals.recv() => {
                info!(signal, "stopping; was not the leader");
                break;
            }
        };
        let leadership = match won {
            Ok(leadership) => Arc::new(leadership),
            Err(e) => {
                warn!(%id, error = %e, "campaign failed; trying again in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    signal = signals.recv() => {
                        info!(signal, "stopping; was not the leader");
                        break;
                    }
                }
            }
        };
        info!(%id, lease = leadership.lease(), "leading: acting on every service with a policy");
        controller.new_term();
        let journal = Journal::new(store.clone(), leadership.fence(), leadership.lost());
        let lost = leadership.lost();
        if !observer.wait_synced(Duration::from_secs(5)).await {
            warn!("registry not listed within 5 s; ticks wait for it");
        }
        let mut interval = tokio::time::interval(config.interval);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let end = loop {
            // A tick runs to completion: a signal is handled between ticks.
            tokio::select! {
                _ = lost.cancelled() => break TermEnd::Lost,
                signal = signals.recv() => break TermEnd::Signal(signal),
                _ = interval.tick() => {
                    let observed = observer.observe().await;
                    if let Err(JournalError::Lost) = controller.tick(Instant::now(), &observed, &journal).await {
                        break TermEnd::Lost;
                    }
                }
            }
        };
        drop(journal);
        match end {
            TermEnd::Lost => {
                warn!(%id, "leadership lost; stopped acting, campaigning again");
            }
            TermEnd::Signal(signal) => {
                info!(signal, %id, "stopping; resigning leadership");
                match Arc::try_unwrap(leadership) {
                    Ok(leadership) => leadership.resign().await,
                    Err(_) => warn!("leadership still shared; it ends with its lease"),
                }
                break;
            }
        }
    }

    if config.stop_on_exit {
        stop_all(driver.as_ref(), settings.stop_grace).await;
    } else {
        info!("exiting; the instances this controller started keep running");
    }
    Ok(())
}

/// Every SIGUSR2: a rolling-restart request for every service with a policy.
async fn roll_all_on_signal(mut usr2: Signal, store: Store) {
    while usr2.recv().await.is_some() {
        info!("SIGUSR2: asking for a rolling restart of every service with a policy");
        if let Err(e) = roll_all(&store).await {
            warn!(error = %e, "SIGUSR2: cannot ask for rolling restarts; send it again once etcd answers");
        }
    }
}

async fn roll_all(store: &Store) -> Result<(), StoreError> {
    for policy in store.policies().await? {
        let rollout = Rollout::request(&policy.service, "signal");
        match store.request_rollout(&rollout).await {
            Ok(()) => info!(service = %policy.service, "rolling restart requested"),
            Err(StoreError::RolloutInProgress(existing)) => {
                info!(service = %policy.service, requested_by = %existing.requested_by, "a rolling restart is already in progress")
            }
            // Deleted since it was listed.
            Err(StoreError::NoPolicy { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Stop every owned instance, concurrently.
async fn stop_all<D: Driver>(driver: &D, grace: Duration) {
    let owned = match driver.list().await {
        Ok(owned) => owned,
        Err(e) => {
            warn!(error = %e, "cannot list instances to stop them");
            return;
        }
    };
    info!(
        count = owned.len(),
        "stopping every instance this controller started"
    );
    let stops = owned.iter().map(|o| async move {
        if let Err(e) = driver.stop(&o.id, grace).await {
            warn!(id = %o.id, service = %o.service, error = %e, "cannot stop instance");
        }
    });
    futures::future::join_all(stops).await;
}
