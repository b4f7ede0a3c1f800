//! The `docker` driver: instances are containers started through the Docker
//! Engine API (bollard, over the local socket or `DOCKER_HOST`).
//!
//! Each instance is one container of [`DockerConfig::image`] (by default
//! `shoal/app-server:dev`, built offline by `docker/build-images.sh`), named
//! `{name_prefix}-{service}-{first 8 characters of the id}`, with restart
//! policy `no` (the controller, not Docker, replaces crashed instances) and the
//! labels `shoal.managed=true`, `shoal.prefix`, `shoal.service` and `shoal.id`.
//! The driver keeps no state of its own: [`Driver::list`] asks the engine for
//! the containers labelled with this driver's registry prefix, so a new
//! controller (after a restart or a failover) adopts every container a
//! previous one started, running or exited, with nothing else to do.
//!
//! ## Which address an instance advertises
//!
//! The container runs `app-server --listen 0.0.0.0:8080` and registers an
//! address that the gateways must be able to reach ([`Advertise`]):
//!
//! - [`Advertise::ContainerName`] (the default): `{container name}:8080`.
//!   Docker's embedded DNS resolves container names on a user-defined network
//!   (not on the default `bridge`), so this is for gateways running as
//!   containers on [`DockerConfig::network`], as in `compose.yaml`. Nothing is
//!   published on the host.
//! - [`Advertise::HostPort`]: port 8080 is published on `127.0.0.1:{a free
//!   port}` and that is what is advertised, for gateways running on the host
//!   (`autoscaler up` with the docker driver). Container IPs are deliberately
//!   not used: they are reachable from the host only on Linux, and not from
//!   containers on other networks.
//!
//! Either way the instance itself must reach etcd at [`DockerConfig::etcd_url`]
//! from inside the container: an etcd container on the same network
//! (`http://etcd:2379`), or a host etcd listening on an address the container
//! can route to (not `127.0.0.1`, which is the container's own loopback).
//!
//! The container's command is `--etcd`, `--prefix`, `--service`, `--id`,
//! `--listen 0.0.0.0:8080`, `--advertise` and `--lease-ttl`, then
//! [`DockerConfig::args`]; `autoscaler run --driver docker` fills the
//! configuration from its flags ([`super::docker_args`]).
//!
//! Stopping is `docker stop` with the grace as its timeout (SIGTERM, which
//! makes app-server drain and deregister, then SIGKILL), then removal; a
//! crashed container stays listed with its exit code (137 after SIGKILL)
//! until the controller stops it.
//!
//! ## Services with a spec
//!
//! A service whose spec has a `docker` section runs its own image: the
//! spec's command (default: the image's), env and `container_port` (the
//! placeholders filled with that port), and the identity the controller
//! gives every instance (`SHOAL_SERVICE`, `SHOAL_INSTANCE_ID`,
//! `SHOAL_VERSION`, `SHOAL_LABELS`), plus `SHOAL_ETCD`, `SHOAL_PREFIX`,
//! `SHOAL_LEASE_TTL`, `SHOAL_PORT` and `SHOAL_ADVERTISE` (the address
//! gateways use). With `registration: self` the program registers itself
//! from those. With `registration: managed` (a stock image that knows nothing
//! of etcd) a second container, the *registrar* ([`DockerConfig::registrar_image`],
//! `{name}-reg`), shares the instance's network namespace and runs `registry
//! run --attach`: it probes the program on localhost, registers it once
//! ready, and on a retire key or SIGTERM marks it draining and leaves after
//! the drain grace. Both carry the instance's labels; the instance counts
//! as exited when either has exited (the registrar's code first, so a
//! retired instance's 0 is seen), and stopping it stops the registrar first
//! (drain), then the program.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HealthConfig, HostConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use registry::spec::{RegistrationMode, Service, fill};
use tracing::{info, warn};

use super::{Driver, DriverError, Owned, StartSpec};

/// The image `docker/build-images.sh` builds.
pub const DEFAULT_IMAGE: &str = "shoal/app-server:dev";
/// The image with every Shoal binary, `registry` among them.
pub const DEFAULT_REGISTRAR_IMAGE: &str = "shoal/shoal:dev";
/// The port app-server listens on inside every container.
pub const CONTAINER_PORT: u16 = 8080;

/// Set to `true` on every container a Shoal driver starts.
pub const LABEL_MANAGED: &str = "shoal.managed";
/// The registry prefix of the controller that owns the container.
pub const LABEL_PREFIX: &str = "shoal.prefix";
pub const LABEL_SERVICE: &str = "shoal.service";
pub const LABEL_ID: &str = "shoal.id";
/// `registrar` on the container that registers a managed instance.
pub const LABEL_ROLE: &str = "shoal.role";
const ROLE_REGISTRAR: &str = "registrar";

/// A container still `created` (never started) after this long was left
/// behind by a controller that died between create and start: it is reported
/// as exited so that the controller reaps and replaces it.
const STUCK_CREATED: Duration = Duration::from_secs(60);

/// What address an instance registers for gateways to use; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Advertise {
    /// `{container name}:8080`, for gateways on the same user-defined network.
    #[default]
    ContainerName,
    /// `127.0.0.1:{published port}`, for gateways on the host.
    HostPort,
}

/// How to run instances as containers.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Image to run; its entrypoint must be app-server (or set `entrypoint`).
    pub image: String,
    /// Overrides the image's entrypoint, e.g. `["app-server"]` for the
    /// all-binaries `shoal/shoal:dev` image.
    pub entrypoint: Option<Vec<String>>,
    /// User-defined network to attach containers to; `None` is Docker's
    /// default `bridge`, which only [`Advertise::HostPort`] can use.
    pub network: Option<String>,
    pub advertise: Advertise,
    /// etcd endpoint(s), comma-separated, as seen from inside a container.
    pub etcd_url: String,
    /// Registry prefix, passed as `--prefix` and used to tell this
    /// controller's containers from other platforms' on the same engine.
    pub prefix: String,
    /// Lease TTL of the instances' registrations, passed as `--lease-ttl`.
    pub lease_ttl: Duration,
    /// Extra environment variables for every container.
    pub env: Vec<(String, String)>,
    /// Host files bind-mounted read-only into every container at the same
    /// (absolute) path: the etcd TLS files, so `SHOAL_ETCD_CA` & co. work
    /// unchanged inside.
    pub read_only_files: Vec<std::path::PathBuf>,
    /// Extra app-server arguments, after the ones the driver sets.
    pub args: Vec<String>,
    /// Extra container labels (the `shoal.*` labels always win).
    pub labels: Vec<(String, String)>,
    /// First part of container names.
    pub name_prefix: String,
    /// Give every container a Docker healthcheck, `app-server --healthcheck`
    /// (so `docker ps` shows whether an instance is ready); the image must
    /// have `app-server` on its `PATH`.
    pub healthcheck: bool,
    /// Image of the registrar that runs beside each managed instance of a
    /// spec'd service (see the module doc).
    pub registrar_image: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            image: DEFAULT_IMAGE.into(),
            entrypoint: None,
            network: Some("shoal".into()),
            advertise: Advertise::ContainerName,
            etcd_url: "http://etcd:2379".into(),
            prefix: registry::keys::DEFAULT_PREFIX.into(),
            lease_ttl: Duration::from_secs(5),
            env: Vec::new(),
            read_only_files: Vec::new(),
            args: Vec::new(),
            labels: Vec::new(),
            name_prefix: "shoal".into(),
            healthcheck: false,
            registrar_image: DEFAULT_REGISTRAR_IMAGE.into(),
        }
    }
}

/// Why [`DockerDriver::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot reach the Docker engine at {socket}: {reason} (is dockerd running, and may this user use its socket?)"
    )]
    Unreachable { socket: String, reason: String },
    #[error("image {0} not found: build it with docker/build-images.sh")]
    ImageMissing(String),
    #[error("network {0} not found: create it with `docker network create {0}`")]
    NetworkMissing(String),
    #[error("invalid docker driver configuration: {0}")]
    Config(String),
    #[error("the Docker engine refused a request: {0}")]
    Engine(String),
}

/// Containers on the local Docker engine.
pub struct DockerDriver {
    docker: Docker,
    config: DockerConfig,
}

impl DockerDriver {
    /// Connect to the local engine (`DOCKER_HOST` if it is a `unix://` path,
    /// else `/var/run/docker.sock`), agree on an API version, and check that
    /// the image and network exist, so that a misconfiguration shows up now
    /// rather than at the first scale-out.
    pub async fn connect(config: DockerConfig) -> Result<Self, ConnectError> {
        let network = config.network.as_deref();
        if matches!(network, Some("host" | "none")) {
            return Err(ConnectError::Config(format!(
                "network `{}` is not supported: use a user-defined bridge network",
                network.unwrap_or_default()
            )));
        }
        if config.advertise == Advertise::ContainerName && matches!(network, None | Some("bridge"))
        {
            return Err(ConnectError::Config(
                "advertising container names needs a user-defined network (Docker's default \
                 bridge has no DNS); set a network or advertise published host ports"
                    .into(),
            ));
        }
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| h.starts_with("unix://"))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let unreachable = |e: BollardError| ConnectError::Unreachable {
            socket: socket.clone(),
            reason: e.to_string(),
        };
        // The API version the engine speaks may be older than bollard's.
        let docker = Docker::connect_with_local_defaults()
            .map_err(unreachable)?
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        match docker.inspect_image(&config.image).await {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {
                return Err(ConnectError::ImageMissing(config.image.clone()));
            }
            Err(e) => return Err(ConnectError::Engine(e.to_string())),
        }
        if let Some(network) = network {
            match docker.inspect_network(network, None).await {
                Ok(_) => {}
                Err(e) if status(&e) == Some(404) => {
                    return Err(ConnectError::NetworkMissing(network.to_owned()));
                }
                Err(e) => return Err(ConnectError::Engine(e.to_string())),
            }
        }
        Ok(DockerDriver { docker, config })
    }

    /// The engine client, for callers that need more than the trait.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The container name of an instance: `{name_prefix}-{service}-{id[..8]}`,
    /// lower-cased, with anything but letters, digits and `-` made a `-` so
    /// that it is also a valid DNS name for [`Advertise::ContainerName`].
    pub fn container_name(&self, spec: &StartSpec) -> String {
        container_name(&self.config.name_prefix, spec)
    }

    fn owner_filter(&self) -> Vec<String> {
        vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_PREFIX}={}", self.config.prefix),
        ]
    }

    /// This driver's containers, all states, optionally only instance `id`'s.
    async fn containers(&self, id: Option<&str>) -> Result<Vec<ContainerSummary>, BollardError> {
        let mut labels = self.owner_filter();
        if let Some(id) = id {
            labels.push(format!("{LABEL_ID}={id}"));
        }
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker.list_containers(Some(options)).await
    }

    fn create_body(
        &self,
        spec: &StartSpec,
        name: &str,
        host_port: Option<u16>,
    ) -> ContainerCreateBody {
        let c = &self.config;
        let advertise = match host_port {
            Some(port) => format!("127.0.0.1:{port}"),
            None => format!("{name}:{CONTAINER_PORT}"),
        };
        let mut cmd = vec![
            "--etcd".to_owned(),
            c.etcd_url.clone(),
            "--prefix".to_owned(),
            c.prefix.clone(),
            "--service".to_owned(),
            spec.service.clone(),
            "--id".to_owned(),
            spec.id.clone(),
            "--listen".to_owned(),
            format!("0.0.0.0:{CONTAINER_PORT}"),
            "--advertise".to_owned(),
            advertise,
            "--lease-ttl".to_owned(),
            format!("{}ms", c.lease_ttl.as_millis()),
        ];
        cmd.extend(c.args.iter().cloned());
        // Docker's durations are nanoseconds.
        let healthcheck = c.healthcheck.then(|| HealthConfig {
            test: Some(vec![
                "CMD".into(),
                "app-server".into(),
                "--healthcheck".into(),
                "--listen".into(),
                format!("0.0.0.0:{CONTAINER_PORT}"),
            ]),
            interval: Some(2_000_000_000),
            timeout: Some(3_000_000_000),
            retries: Some(3),
            ..Default::default()
        });
        ContainerCreateBody {
            image: Some(c.image.clone()),
            healthcheck,
            hostname: Some(name.to_owned()),
            entrypoint: c.entrypoint.clone(),
            cmd: Some(cmd),
            env: Some(env_list(&c.env)),
            labels: Some(self.labels(spec, None)),
            exposed_ports: Some(vec![format!("{CONTAINER_PORT}/tcp")]),
            host_config: Some(self.host_config(c.network.clone(), CONTAINER_PORT, host_port)),
            ..Default::default()
        }
    }

    /// The labels of an instance's containers (`role`: the registrar's).
    fn labels(&self, spec: &StartSpec, role: Option<&str>) -> HashMap<String, String> {
        let c = &self.config;
        let mut labels: HashMap<String, String> = c.labels.iter().cloned().collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_PREFIX.into(), c.prefix.clone());
        labels.insert(LABEL_SERVICE.into(), spec.service.clone());
        labels.insert(LABEL_ID.into(), spec.id.clone());
        if let Some(role) = role {
            labels.insert(LABEL_ROLE.into(), role.into());
        }
        labels
    }

    /// On `network_mode`, `port` published on `127.0.0.1:{host_port}` if
    /// given, the read-only files bound, never restarted by Docker.
    fn host_config(
        &self,
        network_mode: Option<String>,
        port: u16,
        host_port: Option<u16>,
    ) -> HostConfig {
        let c = &self.config;
        let port_bindings = host_port.map(|host_port| {
            HashMap::from([(
                format!("{port}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host_port.to_string()),
                }]),
            )])
        });
        HostConfig {
            network_mode,
            port_bindings,
            binds: (!c.read_only_files.is_empty()).then(|| {
                c.read_only_files
                    .iter()
                    .map(|f| format!("{0}:{0}:ro", f.display()))
                    .collect()
            }),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }
    }

    /// The containers of an instance of a service with a spec: its program
    /// and, when the platform registers it, the registrar beside it (see
    /// the module doc), each with its name.
    fn spec_bodies(
        &self,
        spec: &StartSpec,
        service: &Service,
        name: &str,
        host_port: Option<u16>,
    ) -> Result<Vec<(String, ContainerCreateBody)>, String> {
        let Some(run) = &service.docker else {
            return Err(format!(
                "the spec of {} has no `docker` section and this controller runs the docker driver; add one (docker: {{image: ..., container_port: N}}) or run the service under a process-driver controller",
                spec.service
            ));
        };
        if service.data_dir {
            return Err(format!(
                "the spec of {} asks for data directories (`data_dir: true`), which the docker driver does not give yet (only the process driver does); run the service under a process-driver controller, or drop `data_dir` and mount a volume yourself",
                spec.service
            ));
        }
        let c = &self.config;
        let port = run.container_port;
        let version = service.version();
        let filled = |text: &String| fill(text, port, &spec.id, &spec.service, &version);
        let advertise = match host_port {
            Some(host_port) => format!("127.0.0.1:{host_port}"),
            None => format!("{name}:{port}"),
        };
        let lease_ttl = format!("{}ms", c.lease_ttl.as_millis());
        let mut env = c.env.clone();
        env.extend(spec.identity_env());
        env.extend([
            ("SHOAL_ETCD".to_owned(), c.etcd_url.clone()),
            ("SHOAL_PREFIX".to_owned(), c.prefix.clone()),
            ("SHOAL_LEASE_TTL".to_owned(), lease_ttl.clone()),
            ("SHOAL_PORT".to_owned(), port.to_string()),
            ("SHOAL_ADVERTISE".to_owned(), advertise.clone()),
        ]);
        env.extend(run.env.iter().map(|(k, v)| (k.clone(), filled(v))));
        let program = ContainerCreateBody {
            image: Some(run.image.clone()),
            hostname: Some(name.to_owned()),
            cmd: (!run.command.is_empty()).then(|| run.command.iter().map(filled).collect()),
            env: Some(env_list(&env)),
            labels: Some(self.labels(spec, None)),
            exposed_ports: Some(vec![format!("{port}/tcp")]),
            host_config: Some(self.host_config(c.network.clone(), port, host_port)),
            ..Default::default()
        };
        let mut bodies = vec![(name.to_owned(), program)];
        if service.registration == RegistrationMode::Managed {
            let mut cmd: Vec<String> = [
                "run",
                "--attach",
                "--etcd",
                &c.etcd_url,
                "--prefix",
                &c.prefix,
                "--service",
                &spec.service,
                "--id",
                &spec.id,
                "--port",
                &port.to_string(),
                "--advertise",
                &advertise,
                "--version-label",
                &version,
                "--drain-grace",
                &format!("{}s", service.drain_grace_secs),
                "--lease-ttl",
                &lease_ttl,
            ]
            .map(str::to_owned)
            .to_vec();
            cmd.extend(service.readiness.registry_run_flags());
            for (key, value) in &service.labels {
                cmd.extend(["--label".to_owned(), format!("{key}={value}")]);
            }
            let registrar = ContainerCreateBody {
                image: Some(c.registrar_image.clone()),
                entrypoint: Some(vec!["registry".to_owned()]),
                cmd: Some(cmd),
                env: Some(env_list(&c.env)),
                labels: Some(self.labels(spec, Some(ROLE_REGISTRAR))),
                host_config: Some(self.host_config(Some(format!("container:{name}")), port, None)),
                ..Default::default()
            };
            bodies.push((format!("{name}-reg"), registrar));
        }
        Ok(bodies)
    }

    /// Create and start container `name`; a container that cannot start is
    /// removed, so nothing half-made is listed as an instance.
    async fn create_and_start(&self, name: &str, body: ContainerCreateBody) -> Result<(), String> {
        let image = body.image.clone().unwrap_or_default();
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| match status(&e) {
                Some(404) => {
                    format!("image {image} not found: build it (docker/build-images.sh builds Shoal's) or fix the image name")
                }
                Some(409) => format!("a container named {name} already exists"),
                _ => format!("cannot create container {name}: {e}"),
            })?;
        for warning in &created.warnings {
            warn!(container = %name, warning, "Docker warned while creating the container");
        }
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            self.remove(name).await;
            return Err(format!("cannot start container {name}: {e}"));
        }
        Ok(())
    }

    /// Remove container `name` whatever its state, logging a failure.
    async fn remove(&self, name: &str) {
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = self.docker.remove_container(name, Some(remove)).await
            && status(&e) != Some(404)
        {
            warn!(container = %name, error = %e, "cannot remove the container that failed to start");
        }
    }
}

/// What [`Driver::list`] gathers of one instance's containers.
#[derive(Default)]
struct Instance {
    service: String,
    program_exit: Option<i32>,
    registrar_exit: Option<i32>,
}

fn is_registrar(c: &ContainerSummary) -> bool {
    c.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ROLE))
        .is_some_and(|role| role == ROLE_REGISTRAR)
}

fn env_list(env: &[(String, String)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The HTTP status of an engine error, if it is one.
fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn container_name(name_prefix: &str, spec: &StartSpec) -> String {
    let mut service = dns_safe(&spec.service);
    service.truncate(40);
    let id: String = dns_safe(&spec.id).chars().take(8).collect();
    format!("{}-{}-{}", dns_safe(name_prefix), service, id)
}

fn dns_safe(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-').to_owned()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Docker's `t` is whole seconds: round up, so a grace is never cut short.
fn stop_timeout_secs(grace: Duration) -> i32 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &StartSpec) -> Result<(), DriverError> {
        let fail = |reason: String| DriverError::Start {
            service: spec.service.clone(),
            id: spec.id.clone(),
            reason,
        };
        let name = self.container_name(spec);
        let host_port = match self.config.advertise {
            Advertise::ContainerName => None,
            Advertise::HostPort => {
                Some(free_port().map_err(|e| fail(format!("cannot find a free host port: {e}")))?)
            }
        };
        let bodies = match spec.spec.as_deref() {
            None => vec![(name.clone(), self.create_body(spec, &name, host_port))],
            Some(service) => self
                .spec_bodies(spec, service, &name, host_port)
                .map_err(fail)?,
        };
        let mut started: Vec<String> = Vec::new();
        for (container, body) in bodies {
            if let Err(e) = self.create_and_start(&container, body).await {
                // All or nothing: a program without its registrar would
                // never be routed to.
                for earlier in &started {
                    self.remove(earlier).await;
                }
                return Err(fail(e));
            }
            started.push(container);
        }
        info!(
            service = %spec.service,
            id = %spec.id,
            container = %name,
            host_port,
            "started instance container"
        );
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        let fail = |reason: String| DriverError::Stop {
            id: id.to_owned(),
            reason,
        };
        let containers = self
            .containers(Some(id))
            .await
            .map_err(|e| fail(format!("cannot list containers: {e}")))?;
        if containers.is_empty() {
            return Err(DriverError::Unknown(id.to_owned()));
        }
        // The registrar first: it drains the instance, then the program stops.
        let mut containers = containers;
        containers.sort_by_key(|c| !is_registrar(c));
        for container in containers {
            let Some(cid) = container.id.as_deref() else {
                continue;
            };
            let t = stop_timeout_secs(grace);
            // The engine answers once the container has stopped, up to `t`
            // seconds later: give the request that long and then some.
            let docker = self
                .docker
                .clone()
                .with_timeout(Duration::from_secs(u64::try_from(t).unwrap_or(0) + 30));
            let options = StopContainerOptionsBuilder::default().t(t).build();
            match docker.stop_container(cid, Some(options)).await {
                // 304: it had already stopped (a crash); 404: already gone.
                Ok(()) => {}
                Err(e) if matches!(status(&e), Some(304 | 404)) => {}
                Err(e) => return Err(fail(format!("cannot stop container {cid}: {e}"))),
            }
            let remove = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match self.docker.remove_container(cid, Some(remove)).await {
                Ok(()) => {}
                Err(e) if status(&e) == Some(404) => {}
                // 409: a removal is already in progress (another stop).
                Err(e) if status(&e) == Some(409) => {}
                Err(e) => return Err(fail(format!("cannot remove container {cid}: {e}"))),
            }
            info!(
                id,
                container = cid,
                "stopped and removed instance container"
            );
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Owned>, DriverError> {
        let list_failed = |e: BollardError| {
            DriverError::List(format!("cannot list containers on the Docker engine: {e}"))
        };
        let containers = self.containers(None).await.map_err(list_failed)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // An instance's containers: its program and, if managed, its registrar.
        let mut instances: HashMap<String, Instance> = HashMap::new();
        for c in containers {
            let labels = c.labels.clone().unwrap_or_default();
            let (Some(id), Some(service), Some(cid)) = (
                labels.get(LABEL_ID),
                labels.get(LABEL_SERVICE),
                c.id.as_deref(),
            ) else {
                warn!(container = ?c.names, "a managed container lacks the shoal.id or shoal.service label; ignoring it");
                continue;
            };
            let exited = match c.state {
                Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                    match self.docker.inspect_container(cid, None).await {
                        Ok(details) => Some(
                            details
                                .state
                                .and_then(|s| s.exit_code)
                                .and_then(|code| i32::try_from(code).ok())
                                .unwrap_or(-1),
                        ),
                        // Removed since it was listed: stopped, so not listed.
                        Err(e) if status(&e) == Some(404) => continue,
                        Err(e) => return Err(list_failed(e)),
                    }
                }
                Some(ContainerSummaryStateEnum::CREATED)
                    if now - c.created.unwrap_or(now) > STUCK_CREATED.as_secs() as i64 =>
                {
                    Some(-1)
                }
                // Being removed: a stop is under way.
                Some(ContainerSummaryStateEnum::REMOVING) => continue,
                _ => None,
            };
            let instance = instances.entry(id.clone()).or_insert_with(|| Instance {
                service: service.clone(),
                ..Instance::default()
            });
            if is_registrar(&c) {
                instance.registrar_exit = exited;
            } else {
                instance.program_exit = exited;
            }
        }
        let mut owned: Vec<Owned> = instances
            .into_iter()
            .map(|(id, i)| Owned {
                id,
                service: i.service,
                // The registrar's code first: 0 after a retirement.
                exited: i.registrar_exit.or(i.program_exit),
            })
            .collect();
        owned.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_dns_labels() {
        let spec = StartSpec {
            service: "My_App.v2".into(),
            id: "3F2A9C10-aaaa-bbbb".into(),
            spec: None,
        };
        assert_eq!(container_name("Shoal", &spec), "shoal-my-app-v2-3f2a9c10");
        let spec = StartSpec {
            service: "app".into(),
            id: "-_x".into(),
            spec: None,
        };
        assert_eq!(container_name("shoal", &spec), "shoal-app-x");
    }

    #[tokio::test]
    async fn unusable_networks_are_refused_before_connecting() {
        for (network, advertise) in [
            (None, Advertise::ContainerName),
            (Some("bridge"), Advertise::ContainerName),
            (Some("host"), Advertise::HostPort),
        ] {
            let config = DockerConfig {
                network: network.map(str::to_owned),
                advertise,
                ..DockerConfig::default()
            };
            let err = DockerDriver::connect(config).await.err();
            assert!(
                matches!(err, Some(ConnectError::Config(_))),
                "{network:?} {advertise:?}: {err:?}"
            );
        }
    }

    #[test]
    fn the_stop_timeout_rounds_up() {
        assert_eq!(stop_timeout_secs(Duration::ZERO), 0);
        assert_eq!(stop_timeout_secs(Duration::from_millis(300)), 1);
        assert_eq!(stop_timeout_secs(Duration::from_secs(10)), 10);
        assert_eq!(stop_timeout_secs(Duration::from_millis(10_001)), 11);
    }
}
