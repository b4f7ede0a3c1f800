//! What an instance's containers are, for the drivers that run containers
//! on a Docker engine (`docker`: plain containers; `swarm`: one Swarm
//! service per instance): the configuration they share ([`DockerConfig`]),
//! the labels, the names, the engine checks at start-up, and each
//! container's image, entrypoint, arguments and environment
//! ([`instance_containers`]). Each driver turns a [`ContainerPlan`] into its
//! own API object (a container's create body, a service's task template);
//! nothing here talks to the engine except [`connect`] and the checks.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{HealthConfig, NetworkInspect};
use registry::spec::{RegistrationMode, fill};

use super::StartSpec;
use super::data_volumes::{DATA_MOUNT, DataVolume, LABEL_DATA_SLOT};

/// The image `docker/build-images.sh` builds.
pub const DEFAULT_IMAGE: &str = "shoal/app-server:dev";
/// The image with every Shoal binary, `registry` among them.
pub const DEFAULT_REGISTRAR_IMAGE: &str = "shoal/shoal:dev";
/// The port app-server listens on inside every container.
pub const CONTAINER_PORT: u16 = 8080;

/// Set to `true` on every container (and Swarm service) a Shoal driver starts.
pub const LABEL_MANAGED: &str = "shoal.managed";
/// The registry prefix of the controller that owns the container.
pub const LABEL_PREFIX: &str = "shoal.prefix";
pub const LABEL_SERVICE: &str = "shoal.service";
pub const LABEL_ID: &str = "shoal.id";
/// `registrar` on the container that registers a managed instance.
pub const LABEL_ROLE: &str = "shoal.role";
pub(crate) const ROLE_REGISTRAR: &str = "registrar";

/// What address an instance registers for gateways to use; see the `docker`
/// driver's module doc (the `swarm` driver always advertises its service's
/// name on the overlay network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Advertise {
    /// `{container name}:8080`, for gateways on the same user-defined network.
    #[default]
    ContainerName,
    /// `127.0.0.1:{published port}`, for gateways on the host.
    HostPort,
}

/// How to run instances as containers (the `docker` and `swarm` drivers).
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Image to run; its entrypoint must be app-server (or set `entrypoint`).
    pub image: String,
    /// Overrides the image's entrypoint, e.g. `["app-server"]` for the
    /// all-binaries `shoal/shoal:dev` image.
    pub entrypoint: Option<Vec<String>>,
    /// Network to attach containers to: a user-defined bridge network for
    /// the `docker` driver (`None` is Docker's default `bridge`, which only
    /// [`Advertise::HostPort`] can use), an overlay network for `swarm`.
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
    /// spec'd service (see the `docker` driver's module doc).
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

/// Why a container driver could not start.
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
    #[error("{0}")]
    Swarm(String),
}

/// One container of an instance, whichever driver runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Its container (or Swarm service) name; also its DNS name.
    pub name: String,
    pub image: String,
    /// Overrides the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Its arguments (Docker's `Cmd`, Swarm's `Args`); `None`: the image's.
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub labels: HashMap<String, String>,
    /// The port the program listens on inside the container.
    pub port: u16,
    /// The address the instance registers.
    pub advertise: String,
    /// Give it the `app-server --healthcheck` Docker healthcheck.
    pub healthcheck: bool,
    /// The registrar of a managed instance, which must share the program's
    /// network namespace (the program is the plan before it).
    pub registrar: bool,
    /// The named volume mounted at [`DATA_MOUNT`] (`data_dir: true`).
    pub data_volume: Option<String>,
}

impl ContainerPlan {
    /// `KEY=VALUE` strings, as the Engine API wants them.
    pub fn env_list(&self) -> Vec<String> {
        env_list(&self.env)
    }
}

/// The containers of an instance: its program, then, for a spec'd service
/// whose platform registers it (`registration: managed`), the registrar
/// beside it. `advertise` gives the address gateways use from the port the
/// program listens on; `data` is the volume claimed for a service with
/// `data_dir: true` (a driver that gives none passes `None`, and such a
/// spec is refused); `driver` names the driver in error messages.
pub fn instance_containers(
    config: &DockerConfig,
    spec: &StartSpec,
    advertise: impl Fn(u16) -> String,
    data: Option<&DataVolume>,
    driver: &str,
) -> Result<Vec<ContainerPlan>, String> {
    let c = config;
    let name = container_name(&c.name_prefix, spec);
    let lease_ttl = format!("{}ms", c.lease_ttl.as_millis());
    let Some(service) = spec.spec.as_deref() else {
        let advertise = advertise(CONTAINER_PORT);
        let mut args = vec![
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
            advertise.clone(),
            "--lease-ttl".to_owned(),
            lease_ttl,
        ];
        args.extend(c.args.iter().cloned());
        return Ok(vec![ContainerPlan {
            name,
            image: c.image.clone(),
            entrypoint: c.entrypoint.clone(),
            args: Some(args),
            env: c.env.clone(),
            labels: labels(c, spec, None),
            port: CONTAINER_PORT,
            advertise,
            healthcheck: c.healthcheck,
            registrar: false,
            data_volume: None,
        }]);
    };
    let Some(run) = &service.docker else {
        return Err(format!(
            "the spec of {} has no `docker` section and this controller runs the {driver} driver; add one (docker: {{image: ..., container_port: N}}) or run the service under a process-driver controller",
            spec.service
        ));
    };
    let data = match (service.data_dir, data) {
        (false, _) => None,
        (true, Some(data)) => Some(data),
        (true, None) => {
            return Err(format!(
                "the spec of {} asks for data directories (`data_dir: true`), which the {driver} driver does not give yet (the process and docker drivers do); run the service under one of those, or drop `data_dir` and mount a volume yourself",
                spec.service
            ));
        }
    };
    let port = run.container_port;
    let version = service.version();
    let filled = |text: &String| fill(text, port, &spec.id, &spec.service, &version);
    let advertise = advertise(port);
    let mut env = c.env.clone();
    env.extend(spec.identity_env());
    env.extend([
        ("SHOAL_ETCD".to_owned(), c.etcd_url.clone()),
        ("SHOAL_PREFIX".to_owned(), c.prefix.clone()),
        ("SHOAL_LEASE_TTL".to_owned(), lease_ttl.clone()),
        ("SHOAL_PORT".to_owned(), port.to_string()),
        ("SHOAL_ADVERTISE".to_owned(), advertise.clone()),
    ]);
    if data.is_some() {
        env.push(("SHOAL_DATA_DIR".to_owned(), DATA_MOUNT.to_owned()));
    }
    env.extend(run.env.iter().map(|(k, v)| (k.clone(), filled(v))));
    let mut program_labels = labels(c, spec, None);
    if let Some(data) = data {
        program_labels.insert(LABEL_DATA_SLOT.to_owned(), data.slot.to_string());
    }
    let program = ContainerPlan {
        name: name.clone(),
        image: run.image.clone(),
        entrypoint: None,
        args: (!run.command.is_empty()).then(|| run.command.iter().map(filled).collect()),
        env,
        labels: program_labels,
        port,
        advertise: advertise.clone(),
        healthcheck: false,
        registrar: false,
        data_volume: data.map(|d| d.name.clone()),
    };
    let mut plans = vec![program];
    if service.registration == RegistrationMode::Managed {
        let mut args: Vec<String> = [
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
        args.extend(service.readiness.registry_run_flags());
        for (key, value) in &service.labels {
            args.extend(["--label".to_owned(), format!("{key}={value}")]);
        }
        plans.push(ContainerPlan {
            name: format!("{name}-reg"),
            image: c.registrar_image.clone(),
            entrypoint: Some(vec!["registry".to_owned()]),
            args: Some(args),
            env: c.env.clone(),
            labels: labels(c, spec, Some(ROLE_REGISTRAR)),
            port,
            advertise,
            healthcheck: false,
            registrar: true,
            data_volume: None,
        });
    }
    Ok(plans)
}

/// The labels of an instance's containers (`role`: the registrar's).
pub fn labels(
    config: &DockerConfig,
    spec: &StartSpec,
    role: Option<&str>,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = config.labels.iter().cloned().collect();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_PREFIX.into(), config.prefix.clone());
    labels.insert(LABEL_SERVICE.into(), spec.service.clone());
    labels.insert(LABEL_ID.into(), spec.id.clone());
    if let Some(role) = role {
        labels.insert(LABEL_ROLE.into(), role.into());
    }
    labels
}

/// Whether `c` is an instance's registrar (not its program).
pub(super) fn is_registrar(c: &bollard::models::ContainerSummary) -> bool {
    c.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ROLE))
        .is_some_and(|role| role == ROLE_REGISTRAR)
}

/// The label filter of every container (or service) a controller with
/// registry prefix `prefix` owns, for the Engine API's `label` filter.
pub fn owner_filter(prefix: &str) -> Vec<String> {
    vec![
        format!("{LABEL_MANAGED}=true"),
        format!("{LABEL_PREFIX}={prefix}"),
    ]
}

/// The Docker healthcheck `app-server --healthcheck` on `port`.
pub fn app_healthcheck(port: u16) -> HealthConfig {
    // Docker's durations are nanoseconds.
    HealthConfig {
        test: Some(vec![
            "CMD".into(),
            "app-server".into(),
            "--healthcheck".into(),
            "--listen".into(),
            format!("0.0.0.0:{port}"),
        ]),
        interval: Some(2_000_000_000),
        timeout: Some(3_000_000_000),
        retries: Some(3),
        ..Default::default()
    }
}

/// The container name of an instance: `{name_prefix}-{service}-{id[..8]}`,
/// lower-cased, with anything but letters, digits and `-` made a `-` so
/// that it is also a valid DNS name.
pub fn container_name(name_prefix: &str, spec: &StartSpec) -> String {
    let mut service = dns_safe(&spec.service);
    service.truncate(40);
    let id: String = dns_safe(&spec.id).chars().take(8).collect();
    format!("{}-{}-{}", dns_safe(name_prefix), service, id)
}

pub(super) fn dns_safe(s: &str) -> String {
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

pub fn env_list(env: &[(String, String)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The HTTP status of an engine error, if it is one.
pub fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Connect to the local engine (`DOCKER_HOST` if it is a `unix://` path,
/// else `/var/run/docker.sock`) and agree on an API version.
pub async fn connect() -> Result<Docker, ConnectError> {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| h.starts_with("unix://"))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let unreachable = |e: BollardError| ConnectError::Unreachable {
        socket: socket.clone(),
        reason: e.to_string(),
    };
    // The API version the engine speaks may be older than bollard's.
    Docker::connect_with_local_defaults()
        .map_err(unreachable)?
        .negotiate_version()
        .await
        .map_err(unreachable)
}

/// Fails with the command that builds it if `image` is not on the engine.
pub async fn check_image(docker: &Docker, image: &str) -> Result<(), ConnectError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(()),
        Err(e) if status(&e) == Some(404) => Err(ConnectError::ImageMissing(image.to_owned())),
        Err(e) => Err(ConnectError::Engine(e.to_string())),
    }
}

/// The network `network`, or an error saying how to create it.
pub async fn check_network(docker: &Docker, network: &str) -> Result<NetworkInspect, ConnectError> {
    match docker.inspect_network(network, None).await {
        Ok(n) => Ok(n),
        Err(e) if status(&e) == Some(404) => Err(ConnectError::NetworkMissing(network.to_owned())),
        Err(e) => Err(ConnectError::Engine(e.to_string())),
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

    #[test]
    fn the_default_instance_is_app_server_advertising_what_the_driver_says() {
        let spec = StartSpec {
            service: "app".into(),
            id: "0123456789".into(),
            spec: None,
        };
        let plans = instance_containers(
            &DockerConfig::default(),
            &spec,
            |port| format!("somewhere:{port}"),
            None,
            "docker",
        )
        .unwrap();
        assert_eq!(plans.len(), 1);
        let p = &plans[0];
        assert_eq!(p.name, "shoal-app-01234567");
        assert_eq!(p.advertise, "somewhere:8080");
        let args = p.args.clone().unwrap();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(after("--advertise"), "somewhere:8080");
        assert_eq!(after("--id"), "0123456789");
        assert_eq!(after("--listen"), "0.0.0.0:8080");
        assert_eq!(p.labels[LABEL_ID], "0123456789");
        assert_eq!(p.labels[LABEL_MANAGED], "true");
    }
}
