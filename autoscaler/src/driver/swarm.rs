//! The `swarm` driver: every instance is a Docker Swarm service of its own,
//! created through the Engine API (bollard) on a Swarm manager, so that
//! Swarm places it on a node, restarts it when it fails and attaches it to
//! an overlay network, while Shoal keeps deciding how many instances there
//! are and which one goes.
//!
//! ## One Swarm service per instance
//!
//! The service is named like the `docker` driver's container
//! (`{name_prefix}-{service}-{id[..8]}`), runs 1 replica, and carries the
//! labels `shoal.managed=true`, `shoal.prefix`, `shoal.service` and
//! `shoal.id` (its task containers carry the same but `shoal.managed`, so
//! that a `docker` driver never lists them as its own containers). Why not
//! one Swarm service per Shoal service, scaled by its replica count: Swarm
//! picks which task a scale-down removes, and Shoal retires drain-first: the
//! controller chooses the instance (the ready one with the fewest requests
//! in flight), writes its retire key, waits until it has drained and left
//! the registry, and only then stops it. With one service per instance,
//! stopping instance X is removing exactly X's service; nothing else moves.
//! The cost is one service object per instance (fine for the tens of
//! instances a service runs) and that `docker service ls` lists instances.
//!
//! The driver keeps no state: [`Driver::list`] asks the manager for the
//! services labelled with its registry prefix, and their tasks, so a
//! controller that restarts (or a standby taking over, on any manager)
//! adopts every instance a previous one started, with nothing else to do.
//!
//! ## Restarts belong to Swarm
//!
//! Restart policy `on-failure`, [`SwarmConfig::restart_delay`] apart, at
//! most [`SwarmConfig::restart_attempts`] times: a task that dies (a crash,
//! `docker kill`, a node lost) is replaced by Swarm with the **same spec**,
//! so the same instance id and environment. The new process registers again
//! under that id, on a lease of its own: its put takes the key over from the
//! dead process's lease (whose expiry then deletes nothing), `starting`
//! then `ready`. Until then the old entry stays for at most a lease TTL,
//! pointing at the service's name, which resolves to the new task once it
//! runs (the gateway's retries and ejection cover the gap). The controller
//! sees the instance as running throughout (it is not a crash to replace,
//! and no event is written for it); only when Swarm gives up (the attempts
//! used up) or the task ends on its own (exit 0, as a retired instance
//! does) is the instance listed as exited, with the task's exit code, and
//! the controller reaps it and, for a crash, starts a fresh instance with
//! its crash-loop back-off.
//!
//! ## The address an instance registers
//!
//! `{service name}:{port}`. The service's endpoint mode is `dnsrr`, so
//! Docker's DNS on the overlay network answers that name with the task's
//! own overlay IP: gateways attached to the network (containers, or other
//! services) connect straight to the task. Not an IP written in at start:
//! the task's IP is only known once Swarm has scheduled it, and changes
//! when Swarm restarts the task, while the name stays right. Not the
//! default `vip` mode either: its virtual IP goes through IPVS, which drops
//! idle connections after 15 minutes without a reset, and the gateway keeps
//! pooled connections to its instances. A gateway started with
//! `--allowed-backends` refuses host names, so that flag does not combine
//! with this driver.
//!
//! ## Stopping
//!
//! Removing the service: Swarm sends SIGTERM to the task (app-server and
//! `registry run` drain and leave the registry on it) and SIGKILL after the
//! service's stop grace period, which is [`SwarmConfig::stop_grace`] (the
//! controller's `--stop-timeout`) set when the service was created. `stop`
//! returns once the task's container is gone.
//!
//! A spec'd service runs its own image as in the `docker` driver, with
//! `registration: self` only: `managed` needs a registrar container in the
//! program's network namespace, which a Swarm service cannot share.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, LocalNodeState, Mount, MountType, NetworkAttachmentConfig,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task, TaskSpec, TaskSpecContainerSpec,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
};
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::containers::{
    Advertise, ConnectError, ContainerPlan, DockerConfig, LABEL_ID, LABEL_MANAGED, LABEL_PREFIX,
    LABEL_SERVICE, app_healthcheck, check_image, check_network, container_name,
    instance_containers, owner_filter, status,
};
use super::{Driver, DriverError, Owned, StartSpec};

/// A service with no task this long after it was created was left behind
/// (Swarm could not schedule it): it is reported as exited so that the
/// controller reaps and replaces it.
const NO_TASK: Duration = Duration::from_secs(60);
/// With no task meant to run and the last one ended this long ago, Swarm is
/// not going to restart it (even if its task history was trimmed below the
/// attempts count): the instance is exited.
const GIVEN_UP: Duration = Duration::from_secs(30);

/// How to run instances as Swarm services.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Image, command, env, labels and names, as for the `docker` driver;
    /// `network` must be an overlay network (attachable, so that gateway
    /// containers can join it), and `advertise` stays `container-name`.
    pub containers: DockerConfig,
    /// The services' stop grace period: SIGTERM, then SIGKILL this much later.
    pub stop_grace: Duration,
    /// How long Swarm waits before restarting a failed task.
    pub restart_delay: Duration,
    /// How many times Swarm restarts a failed task before giving up (then
    /// the controller replaces the instance).
    pub restart_attempts: u32,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            containers: DockerConfig::default(),
            stop_grace: Duration::from_secs(10),
            restart_delay: Duration::from_secs(1),
            restart_attempts: 3,
        }
    }
}

/// Swarm services on the manager the local engine is.
pub struct SwarmDriver {
    docker: Docker,
    config: SwarmConfig,
}

impl SwarmDriver {
    /// Connect to the local engine (as the `docker` driver does), and check
    /// that it is a Swarm manager, that the image exists and that the
    /// network is an overlay network, so that a misconfiguration shows up
    /// now rather than at the first scale-out.
    pub async fn connect(config: SwarmConfig) -> Result<Self, ConnectError> {
        let c = &config.containers;
        if c.advertise != Advertise::ContainerName {
            return Err(ConnectError::Config(
                "the swarm driver advertises each instance's service name on the overlay \
                 network; --advertise host-port is for the docker driver"
                    .into(),
            ));
        }
        let Some(network) = c.network.as_deref() else {
            return Err(ConnectError::Config(
                "the swarm driver needs an overlay network: pass --network NAME (create it \
                 with `docker network create --driver overlay --attachable NAME`)"
                    .into(),
            ));
        };
        let docker = super::containers::connect().await?;
        let info = docker
            .info()
            .await
            .map_err(|e| ConnectError::Engine(e.to_string()))?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm.local_node_state.unwrap_or(LocalNodeState::EMPTY);
        if state != LocalNodeState::ACTIVE {
            return Err(ConnectError::Swarm(format!(
                "the Docker engine is not in a swarm (state: {}): run `docker swarm init` on it, \
                 or point DOCKER_HOST at a manager of the swarm",
                if state == LocalNodeState::EMPTY {
                    "unknown".to_owned()
                } else {
                    state.to_string()
                }
            )));
        }
        if swarm.control_available != Some(true) {
            return Err(ConnectError::Swarm(
                "the Docker engine is a swarm worker, and only a manager creates services: run \
                 the controller against a manager (DOCKER_HOST), or `docker node promote` this node"
                    .into(),
            ));
        }
        check_image(&docker, &c.image).await?;
        let inspected = check_network(&docker, network).await?;
        if inspected.driver.as_deref() != Some("overlay") {
            return Err(ConnectError::Config(format!(
                "network {network} is a {} network; Swarm services need an overlay network: \
                 `docker network create --driver overlay --attachable {network}`",
                inspected.driver.as_deref().unwrap_or("unknown")
            )));
        }
        Ok(SwarmDriver { docker, config })
    }

    /// The engine client, for callers that need more than the trait.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The Swarm service name of an instance (its DNS name on the overlay
    /// network): the `docker` driver's container name.
    pub fn service_name(&self, spec: &StartSpec) -> String {
        container_name(&self.config.containers.name_prefix, spec)
    }

    /// This driver's services, optionally only instance `id`'s.
    async fn services(
        &self,
        id: Option<&str>,
    ) -> Result<Vec<bollard::models::Service>, BollardError> {
        let mut labels = owner_filter(&self.config.containers.prefix);
        if let Some(id) = id {
            labels.push(format!("{LABEL_ID}={id}"));
        }
        let filters = HashMap::from([("label", labels)]);
        let options = ListServicesOptionsBuilder::default()
            .filters(&filters)
            .build();
        self.docker.list_services(Some(options)).await
    }

    /// Whether any container of instance `id` (a task of its service) is
    /// still on this engine, in any state.
    async fn has_containers(&self, id: &str) -> Result<bool, BollardError> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_PREFIX}={}", self.config.containers.prefix),
                format!("{LABEL_ID}={id}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        Ok(!self.docker.list_containers(Some(options)).await?.is_empty())
    }
}

/// The service spec of an instance: one replica of its program on the
/// overlay network, found by DNS at its own IP, restarted on failure.
fn service_spec(config: &SwarmConfig, plan: &ContainerPlan) -> ServiceSpec {
    let c = &config.containers;
    let mut container_labels = plan.labels.clone();
    container_labels.remove(LABEL_MANAGED);
    let mounts = c
        .read_only_files
        .iter()
        .map(|f| Mount {
            target: Some(f.display().to_string()),
            source: Some(f.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let container = TaskSpecContainerSpec {
        image: Some(plan.image.clone()),
        labels: Some(container_labels),
        // Swarm's `Command` is Docker's entrypoint, `Args` its cmd.
        command: plan.entrypoint.clone(),
        args: plan.args.clone(),
        hostname: Some(plan.name.clone()),
        env: Some(plan.env_list()),
        mounts: (!mounts.is_empty()).then_some(mounts),
        stop_grace_period: Some(nanos(config.stop_grace)),
        health_check: plan.healthcheck.then(|| app_healthcheck(plan.port)),
        ..Default::default()
    };
    ServiceSpec {
        name: Some(plan.name.clone()),
        labels: Some(plan.labels.clone()),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                delay: Some(nanos(config.restart_delay)),
                max_attempts: Some(i64::from(config.restart_attempts)),
                window: Some(0),
            }),
            networks: c.network.as_ref().map(|network| {
                vec![NetworkAttachmentConfig {
                    target: Some(network.clone()),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: None,
        }),
        ..Default::default()
    }
}

/// A duration in the nanoseconds the Engine API counts in.
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn parse_time(t: Option<&String>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Whether an instance whose service has these tasks has exited, and with
/// what code: `None` while a task is meant to run (running, starting, or
/// waiting out the restart delay) or Swarm still has attempts left;
/// `Some(code)` once a task completed (exit 0) or Swarm gave up.
fn exited(
    tasks: &[Task],
    created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    attempts: u32,
) -> Option<i32> {
    let since = |t: Option<DateTime<Utc>>| {
        t.map_or(Duration::ZERO, |t| {
            (now - t).to_std().unwrap_or(Duration::ZERO)
        })
    };
    if tasks.is_empty() {
        return (since(created) > NO_TASK).then_some(-1);
    }
    let meant_to_run = tasks.iter().any(|t| {
        !matches!(
            t.desired_state,
            Some(TaskState::SHUTDOWN | TaskState::REMOVE | TaskState::COMPLETE)
        )
    });
    if meant_to_run {
        return None;
    }
    let state = |t: &Task| t.status.as_ref().and_then(|s| s.state);
    let code = |t: &Task| {
        t.status
            .as_ref()
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.exit_code)
            .and_then(|c| i32::try_from(c).ok())
    };
    if let Some(done) = tasks.iter().find(|t| state(t) == Some(TaskState::COMPLETE)) {
        return Some(code(done).unwrap_or(0));
    }
    let newest = tasks
        .iter()
        .max_by_key(|t| parse_time(t.status.as_ref().and_then(|s| s.timestamp.as_ref())))?;
    let ended = parse_time(newest.status.as_ref().and_then(|s| s.timestamp.as_ref()));
    let failures = tasks
        .iter()
        .filter(|t| {
            matches!(
                state(t),
                Some(TaskState::FAILED | TaskState::REJECTED | TaskState::ORPHANED)
            )
        })
        .count();
    let given_up = failures > attempts as usize || since(ended) > GIVEN_UP;
    given_up.then(|| code(newest).unwrap_or(-1))
}

impl Driver for SwarmDriver {
    fn name(&self) -> &'static str {
        "swarm"
    }

    async fn start(&self, spec: &StartSpec) -> Result<(), DriverError> {
        let fail = |reason: String| DriverError::Start {
            service: spec.service.clone(),
            id: spec.id.clone(),
            reason,
        };
        let name = self.service_name(spec);
        let advertise = |port: u16| format!("{name}:{port}");
        let plans = instance_containers(&self.config.containers, spec, advertise, None, "swarm")
            .map_err(fail)?;
        if plans.iter().any(|p| p.registrar) {
            return Err(fail(format!(
                "the spec of {} says `registration: managed`, whose registrar must share the \
                 program's network namespace, which a Swarm service cannot; make the program \
                 register itself (`registration: self`, from the SHOAL_* environment) or run \
                 the service under a docker-driver controller",
                spec.service
            )));
        }
        let Some(plan) = plans.first() else {
            return Err(fail("no container to run".into()));
        };
        let created = self
            .docker
            .create_service(service_spec(&self.config, plan), None)
            .await
            .map_err(|e| {
                fail(match status(&e) {
                    Some(409) => format!("a Swarm service named {name} already exists"),
                    _ => format!("cannot create Swarm service {name}: {e}"),
                })
            })?;
        if let Some(warning) = created.warnings.iter().flatten().next() {
            warn!(service = %name, warning, "Swarm warned while creating the service");
        }
        info!(
            service = %spec.service,
            id = %spec.id,
            swarm_service = %name,
            "created the instance's Swarm service"
        );
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        let fail = |reason: String| DriverError::Stop {
            id: id.to_owned(),
            reason,
        };
        let services = self
            .services(Some(id))
            .await
            .map_err(|e| fail(format!("cannot list Swarm services: {e}")))?;
        if services.is_empty() {
            return Err(DriverError::Unknown(id.to_owned()));
        }
        for service in &services {
            let Some(sid) = service.id.as_deref() else {
                continue;
            };
            match self.docker.delete_service(sid).await {
                Ok(()) => {}
                // Removed meanwhile (another stop).
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(fail(format!("cannot remove Swarm service {sid}: {e}"))),
            }
        }
        // Swarm stops the task (SIGTERM, SIGKILL after the service's stop
        // grace) and removes its container after the service is gone.
        let limit = grace.max(self.config.stop_grace) + Duration::from_secs(30);
        let started = tokio::time::Instant::now();
        loop {
            match self.has_containers(id).await {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return Err(fail(format!("cannot list containers: {e}"))),
            }
            if started.elapsed() > limit {
                return Err(fail(format!(
                    "its Swarm service is removed but its task's container is still there \
                     after {limit:?}; see `docker ps -a --filter label={LABEL_ID}={id}`"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        info!(id, "removed the instance's Swarm service");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Owned>, DriverError> {
        let list_failed =
            |e: BollardError| DriverError::List(format!("cannot list Swarm services: {e}"));
        let services = self.services(None).await.map_err(list_failed)?;
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filters = HashMap::from([("service", ids)]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        let tasks = self
            .docker
            .list_tasks(Some(options))
            .await
            .map_err(|e| DriverError::List(format!("cannot list Swarm tasks: {e}")))?;
        let mut by_service: HashMap<String, Vec<Task>> = HashMap::new();
        for task in tasks {
            if let Some(sid) = task.service_id.clone() {
                by_service.entry(sid).or_default().push(task);
            }
        }
        let now = Utc::now();
        let mut owned = Vec::new();
        for service in services {
            let labels = service
                .spec
                .as_ref()
                .and_then(|s| s.labels.clone())
                .unwrap_or_default();
            let (Some(id), Some(name)) = (labels.get(LABEL_ID), labels.get(LABEL_SERVICE)) else {
                warn!(swarm_service = ?service.spec.as_ref().and_then(|s| s.name.clone()), "a managed Swarm service lacks the shoal.id or shoal.service label; ignoring it");
                continue;
            };
            let tasks = service
                .id
                .as_ref()
                .and_then(|sid| by_service.get(sid))
                .map_or(&[][..], Vec::as_slice);
            owned.push(Owned {
                id: id.clone(),
                service: name.clone(),
                exited: exited(
                    tasks,
                    parse_time(service.created_at.as_ref()),
                    now,
                    self.config.restart_attempts,
                ),
            });
        }
        owned.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerStatus, TaskStatus};

    use super::*;

    fn task(desired: TaskState, state: TaskState, code: Option<i64>, ago_secs: i64) -> Task {
        let now = Utc::now();
        Task {
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                timestamp: Some((now - chrono::Duration::seconds(ago_secs)).to_rfc3339()),
                container_status: Some(ContainerStatus {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_instance_is_exited_only_once_swarm_will_not_run_it_again() {
        use TaskState::*;
        let now = Utc::now();
        let just_now = Some(now);
        // Just created, no task yet: starting. Long without one: exited.
        assert_eq!(exited(&[], just_now, now, 3), None);
        let long_ago = Some(now - chrono::Duration::seconds(120));
        assert_eq!(exited(&[], long_ago, now, 3), Some(-1));
        // Running.
        assert_eq!(
            exited(&[task(RUNNING, RUNNING, None, 5)], just_now, now, 3),
            None
        );
        // Killed, its replacement waiting out the restart delay.
        let killed = task(SHUTDOWN, FAILED, Some(137), 1);
        assert_eq!(
            exited(
                &[killed.clone(), task(READY, READY, None, 0)],
                just_now,
                now,
                3
            ),
            None
        );
        // Killed, the replacement not created yet: attempts left, so not exited.
        assert_eq!(
            exited(std::slice::from_ref(&killed), just_now, now, 3),
            None
        );
        // Attempts used up: exited with the last code.
        let failed: Vec<Task> = (0..4).map(|i| task(SHUTDOWN, FAILED, Some(1), i)).collect();
        assert_eq!(exited(&failed, just_now, now, 3), Some(1));
        // A retired instance's program ends with 0: complete, not restarted.
        assert_eq!(
            exited(&[task(SHUTDOWN, COMPLETE, Some(0), 0)], just_now, now, 3),
            Some(0)
        );
        // Failed long ago and nothing since: Swarm is not restarting it.
        assert_eq!(
            exited(&[task(SHUTDOWN, FAILED, Some(2), 60)], just_now, now, 3),
            Some(2)
        );
    }

    fn start_spec(spec: Option<serde_json::Value>) -> StartSpec {
        StartSpec {
            service: "app".into(),
            id: "0123456789abcdef".into(),
            spec: spec.map(|json| {
                let service: registry::spec::Service = serde_json::from_value(json).unwrap();
                std::sync::Arc::new(service)
            }),
        }
    }

    #[test]
    fn an_instance_is_one_replica_found_by_its_name_restarted_on_failure() {
        let config = SwarmConfig {
            containers: DockerConfig {
                network: Some("overlay-net".into()),
                read_only_files: vec!["/etc/shoal/ca.pem".into()],
                ..DockerConfig::default()
            },
            stop_grace: Duration::from_secs(7),
            ..SwarmConfig::default()
        };
        let spec = start_spec(None);
        let name = container_name(&config.containers.name_prefix, &spec);
        let plans = instance_containers(
            &config.containers,
            &spec,
            |p| format!("{name}:{p}"),
            None,
            "swarm",
        )
        .unwrap();
        let s = service_spec(&config, &plans[0]);
        assert_eq!(s.name.as_deref(), Some("shoal-app-01234567"));
        let labels = s.labels.clone().unwrap();
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_ID], "0123456789abcdef");
        assert_eq!(
            s.mode.and_then(|m| m.replicated).and_then(|r| r.replicas),
            Some(1)
        );
        assert_eq!(
            s.endpoint_spec.and_then(|e| e.mode),
            Some(EndpointSpecModeEnum::DNSRR)
        );
        let task = s.task_template.unwrap();
        let restart = task.restart_policy.unwrap();
        assert_eq!(
            restart.condition,
            Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE)
        );
        assert_eq!(restart.max_attempts, Some(3));
        assert_eq!(restart.delay, Some(1_000_000_000));
        assert_eq!(
            task.networks.unwrap()[0].target.as_deref(),
            Some("overlay-net")
        );
        let container = task.container_spec.unwrap();
        let container_labels = container.labels.unwrap();
        assert!(
            !container_labels.contains_key(LABEL_MANAGED),
            "a docker driver must not list task containers as its own"
        );
        assert_eq!(container_labels[LABEL_ID], "0123456789abcdef");
        assert_eq!(container.stop_grace_period, Some(7_000_000_000));
        let args = container.args.unwrap();
        let advertise = args.iter().position(|a| a == "--advertise").unwrap();
        assert_eq!(args[advertise + 1], "shoal-app-01234567:8080");
        let mount = &container.mounts.unwrap()[0];
        assert_eq!(mount.source.as_deref(), Some("/etc/shoal/ca.pem"));
        assert_eq!(mount.read_only, Some(true));
    }

    #[tokio::test]
    async fn a_managed_spec_is_refused_with_what_to_do_instead() {
        // No request reaches the engine: the spec is refused first.
        let driver = SwarmDriver {
            docker: Docker::connect_with_local_defaults().unwrap(),
            config: SwarmConfig::default(),
        };
        let spec = start_spec(Some(serde_json::json!({
            "name": "app",
            "docker": {"image": "node:22", "container_port": 3000}
        })));
        let err = driver.start(&spec).await.unwrap_err().to_string();
        assert!(
            err.contains("registration: managed") && err.contains("registration: self"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unusable_configurations_are_refused_before_connecting() {
        for containers in [
            DockerConfig {
                network: None,
                ..DockerConfig::default()
            },
            DockerConfig {
                advertise: Advertise::HostPort,
                ..DockerConfig::default()
            },
        ] {
            let config = SwarmConfig {
                containers,
                ..SwarmConfig::default()
            };
            let err = SwarmDriver::connect(config).await.err();
            assert!(matches!(err, Some(ConnectError::Config(_))), "{err:?}");
        }
    }
}
