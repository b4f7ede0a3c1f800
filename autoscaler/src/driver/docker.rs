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
use tracing::{info, warn};

use super::{Driver, DriverError, Owned, StartSpec};

/// The image `docker/build-images.sh` builds.
pub const DEFAULT_IMAGE: &str = "shoal/app-server:dev";
/// The port app-server listens on inside every container.
pub const CONTAINER_PORT: u16 = 8080;

/// Set to `true` on every container a Shoal driver starts.
pub const LABEL_MANAGED: &str = "shoal.managed";
/// The registry prefix of the controller that owns the container.
pub const LABEL_PREFIX: &str = "shoal.prefix";
pub const LABEL_SERVICE: &str = "shoal.service";
pub const LABEL_ID: &str = "shoal.id";

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
        let mut labels: HashMap<String, String> = c.labels.iter().cloned().collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_PREFIX.into(), c.prefix.clone());
        labels.insert(LABEL_SERVICE.into(), spec.service.clone());
        labels.insert(LABEL_ID.into(), spec.id.clone());
        let port_key = format!("{CONTAINER_PORT}/tcp");
        let port_bindings = host_port.map(|port| {
            HashMap::from([(
                port_key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(port.to_string()),
                }]),
            )])
        });
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
            env: Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(vec![port_key]),
            host_config: Some(HostConfig {
                network_mode: c.network.clone(),
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
            }),
            ..Default::default()
        }
    }
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
        let body = self.create_body(spec, &name, host_port);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                fail(match status(&e) {
                    Some(404) => format!(
                        "image {} not found: build it with docker/build-images.sh",
                        self.config.image
                    ),
                    Some(409) => format!("a container named {name} already exists"),
                    _ => format!("cannot create container {name}: {e}"),
                })
            })?;
        for warning in &created.warnings {
            warn!(container = %name, warning, "Docker warned while creating the container");
        }
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            // Leave nothing half-made behind: a created container would be
            // listed as an instance that never starts.
            let remove = RemoveContainerOptionsBuilder::default().force(true).build();
            if let Err(re) = self
                .docker
                .remove_container(&created.id, Some(remove))
                .await
            {
                warn!(container = %name, error = %re, "cannot remove the container that failed to start");
            }
            return Err(fail(format!("cannot start container {name}: {e}")));
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
        let mut owned = Vec::with_capacity(containers.len());
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
            owned.push(Owned {
                id: id.clone(),
                service: service.clone(),
                exited,
            });
        }
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
