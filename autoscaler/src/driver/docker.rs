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
//! previous one started, running or exited, with nothing else to do. A
//! spec'd service with `data_dir: true` gets a named volume per slot
//! ([`data_volumes`]), found again through the same labels.
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
//! configuration from its flags ([`super::docker_args`]). What the container
//! is (image, command, environment, labels, name) comes from
//! [`super::containers`], which the `swarm` driver shares.
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
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HostConfig, Mount, MountType,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use tracing::{info, warn};

pub use super::containers::{
    Advertise, CONTAINER_PORT, ConnectError, DEFAULT_IMAGE, DEFAULT_REGISTRAR_IMAGE, DockerConfig,
    LABEL_ID, LABEL_MANAGED, LABEL_PREFIX, LABEL_ROLE, LABEL_SERVICE,
};
use super::containers::{
    ContainerPlan, app_healthcheck, check_image, check_network, container_name,
    instance_containers, is_registrar, owner_filter, status,
};
use super::data_volumes::{self, DATA_MOUNT};
use super::{Driver, DriverError, Owned, StartSpec};

/// A container still `created` (never started) after this long was left
/// behind by a controller that died between create and start: it is reported
/// as exited so that the controller reaps and replaces it.
const STUCK_CREATED: Duration = Duration::from_secs(60);

/// Containers on the local Docker engine.
pub struct DockerDriver {
    docker: Docker,
    config: DockerConfig,
    /// One data-volume claim at a time (`data_volumes::claim`).
    claims: tokio::sync::Mutex<()>,
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
        let docker = super::containers::connect().await?;
        check_image(&docker, &config.image).await?;
        if let Some(network) = network {
            check_network(&docker, network).await?;
        }
        Ok(DockerDriver {
            docker,
            config,
            claims: tokio::sync::Mutex::new(()),
        })
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

    /// This driver's containers, all states, optionally only instance `id`'s.
    async fn containers(&self, id: Option<&str>) -> Result<Vec<ContainerSummary>, BollardError> {
        let mut labels = owner_filter(&self.config.prefix);
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

    /// The create body of one of an instance's containers: the program on
    /// the configured network (its port published on `host_port` if
    /// given), or its registrar in the program's network namespace.
    fn create_body(
        &self,
        plan: &ContainerPlan,
        program: &str,
        host_port: Option<u16>,
    ) -> ContainerCreateBody {
        let (network_mode, host_port, exposed) = if plan.registrar {
            (Some(format!("container:{program}")), None, None)
        } else {
            (
                self.config.network.clone(),
                host_port,
                Some(vec![format!("{}/tcp", plan.port)]),
            )
        };
        ContainerCreateBody {
            image: Some(plan.image.clone()),
            healthcheck: plan.healthcheck.then(|| app_healthcheck(plan.port)),
            hostname: (!plan.registrar).then(|| plan.name.clone()),
            entrypoint: plan.entrypoint.clone(),
            cmd: plan.args.clone(),
            env: Some(plan.env_list()),
            labels: Some(plan.labels.clone()),
            exposed_ports: exposed,
            host_config: Some(self.host_config(
                network_mode,
                plan.port,
                host_port,
                plan.data_volume.as_deref(),
            )),
            ..Default::default()
        }
    }

    /// On `network_mode`, `port` published on `127.0.0.1:{host_port}` if
    /// given, the read-only files bound, never restarted by Docker.
    fn host_config(
        &self,
        network_mode: Option<String>,
        port: u16,
        host_port: Option<u16>,
        data_volume: Option<&str>,
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
            mounts: data_volume.map(|volume| {
                vec![Mount {
                    target: Some(DATA_MOUNT.to_owned()),
                    source: Some(volume.to_owned()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]
            }),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }
    }
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
        let advertise = |port: u16| match host_port {
            Some(host_port) => format!("127.0.0.1:{host_port}"),
            None => format!("{name}:{port}"),
        };
        // A data-volume claim waits for the others and holds its lock until
        // the instance's containers exist, so the next claim sees its slot.
        let (_claiming, data) = if spec.spec.as_deref().is_some_and(|s| s.data_dir) {
            let claiming = self.claims.lock().await;
            let containers = self.containers(None).await.map_err(|e| {
                fail(format!(
                    "cannot list containers to claim a data volume: {e}"
                ))
            })?;
            let data = data_volumes::claim(&self.docker, &self.config, &spec.service, &containers)
                .await
                .map_err(fail)?;
            info!(service = %spec.service, id = %spec.id, volume = %data.name, "data volume claimed");
            (Some(claiming), Some(data))
        } else {
            (None, None)
        };
        let plans = instance_containers(&self.config, spec, advertise, data.as_ref(), "docker")
            .map_err(fail)?;
        let bodies = plans
            .iter()
            .map(|plan| (plan.name.clone(), self.create_body(plan, &name, host_port)));
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
