//! The local Docker engine for end-to-end tests, through its API (bollard):
//! finding it (a test skips without one, and fails under `CI=true`), the
//! images `docker/build-images.sh` builds, containers started and their
//! published ports, everything a test made removed on drop
//! ([`Leftovers`]), and a single-node Docker Swarm on the local engine
//! ([`SwarmGuard`]) that is left as it was found.
//!
//! ## The swarm, shared by processes
//!
//! A swarm is a property of the whole engine, and nextest runs every test
//! in a process of its own, as two checkouts' suites on one machine do. So
//! [`SwarmGuard::acquire`] first takes an exclusive lock on a file in the
//! temp directory (`shoal-swarm-test.lock`), held until the guard drops:
//! tests that need the swarm run one after the other, across processes.
//! Holding it, the guard initialises a swarm if the engine is in none
//! (`docker swarm init`, the swarm labelled `shoal.test.swarm=initialised`)
//! and on drop leaves it (`docker swarm leave --force`) and removes the
//! `docker_gwbridge` network that `init` created, also when the test
//! failed. An engine already in a swarm is used and left in it; one in a
//! swarm labelled as initialised by a test is a leftover of a test that
//! was killed before it could leave (the lock says no test is using it),
//! and is treated as this guard's own.

use std::collections::HashMap;
use std::fs::File;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error;
use bollard::models::{ContainerCreateBody, LocalNodeState, SwarmInitRequest, SwarmSpec};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LeaveSwarmOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, ListServicesOptionsBuilder, RemoveContainerOptionsBuilder,
};

use crate::skip_unless_ci;
use crate::wait::wait_until_async;

/// The label on everything a test creates: `shoal.test={run id}`.
pub const TEST_LABEL: &str = "shoal.test";
/// The label of a swarm a test initialised.
const SWARM_LABEL: &str = "shoal.test.swarm";
/// The network `docker swarm init` creates and `leave` keeps.
const GWBRIDGE: &str = "docker_gwbridge";

/// How to get the images.
pub const BUILD_IMAGES: &str = "build them with `cargo build --workspace --bins && SHOAL_IMAGE_PROFILE=debug SHOAL_PGO=0 docker/build-images.sh --no-build` (scripts/test does)";

/// The local engine, or `None` after a note when there is none (under
/// `CI=true`: a failure that says how to start one). `test` names the test.
pub async fn engine_or_skip(test: &str) -> Option<Docker> {
    let docker = match Docker::connect_with_local_defaults() {
        Ok(d) => d.negotiate_version().await,
        Err(e) => Err(e),
    };
    match docker {
        Ok(docker) => Some(docker),
        Err(e) => skip_unless_ci(&format!(
            "{test}: no Docker engine reachable ({e}); start dockerd, e.g. `service docker start`"
        )),
    }
}

/// Panics with the command that builds them if one of `images` is missing.
pub async fn require_images(docker: &Docker, images: &[&str]) {
    for image in images {
        if let Err(e) = docker.inspect_image(image).await {
            panic!("image {image} is missing ({e}): {BUILD_IMAGES}");
        }
    }
}

/// A fresh run id: 12 hex digits.
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// The HTTP status of an engine error, if it has one.
pub fn status(e: &Error) -> Option<u16> {
    match e {
        Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Create and start container `name`; its id.
pub async fn start_container(docker: &Docker, name: &str, body: ContainerCreateBody) -> String {
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let created = docker
        .create_container(Some(options), body)
        .await
        .unwrap_or_else(|e| panic!("docker create {name}: {e}"));
    docker
        .start_container(&created.id, None)
        .await
        .unwrap_or_else(|e| panic!("docker start {name}: {e}"));
    created.id
}

/// The host port that `port` (`8080/tcp`) of container `id` is published on.
pub async fn published_port(docker: &Docker, id: &str, port: &str) -> u16 {
    let details = docker
        .inspect_container(id, None)
        .await
        .unwrap_or_else(|e| panic!("docker inspect {id}: {e}"));
    details
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get(port).cloned().flatten())
        .and_then(|b| b.first().and_then(|b| b.host_port.clone()))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("container {id} publishes no {port}"))
}

/// Every Swarm service, container and network carrying one of `labels`
/// (`key=value` each), removed when dropped, so that a failed assertion
/// leaves nothing behind: services first, then containers (a service's
/// task containers go with it; standalone ones are removed by force), then,
/// once no container is left, the networks.
pub struct Leftovers {
    pub docker: Docker,
    pub labels: Vec<String>,
}

impl Leftovers {
    /// Remove everything now; what could not be removed is reported on stderr.
    pub async fn clean(docker: &Docker, labels: &[String]) {
        for label in labels {
            let filters = HashMap::from([("label", vec![label.clone()])]);
            // Not in a swarm: there are no services to remove.
            let options = ListServicesOptionsBuilder::default()
                .filters(&filters)
                .build();
            if let Ok(services) = docker.list_services(Some(options)).await {
                for id in services.into_iter().filter_map(|s| s.id) {
                    if let Err(e) = docker.delete_service(&id).await
                        && status(&e) != Some(404)
                    {
                        eprintln!("cleanup: cannot remove service {id}: {e}");
                    }
                }
            }
        }
        let containers = |docker: Docker, label: String| async move {
            let filters = HashMap::from([("label", vec![label])]);
            let options = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            docker.list_containers(Some(options)).await
        };
        for label in labels {
            match containers(docker.clone(), label.clone()).await {
                Ok(list) => {
                    for id in list.into_iter().filter_map(|c| c.id) {
                        let rm = RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .v(true)
                            .build();
                        if let Err(e) = docker.remove_container(&id, Some(rm)).await
                            && !matches!(status(&e), Some(404 | 409))
                        {
                            eprintln!("cleanup: cannot remove container {id}: {e}");
                        }
                    }
                }
                Err(e) => eprintln!("cleanup: cannot list containers labelled {label}: {e}"),
            }
        }
        // Swarm removes the tasks' containers of a removed service on its own.
        let gone = wait_until_async(Duration::from_secs(30), "containers removed", || {
            let docker = docker.clone();
            async move {
                for label in labels {
                    if !containers(docker.clone(), label.clone())
                        .await
                        .is_ok_and(|l| l.is_empty())
                    {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        if let Err(e) = gone {
            eprintln!("cleanup: {e}; see `docker ps -a --filter label=...` for {labels:?}");
        }
        for label in labels {
            let filters = HashMap::from([("label", vec![label.clone()])]);
            let options = ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build();
            let Ok(networks) = docker.list_networks(Some(options)).await else {
                continue;
            };
            for network in networks.into_iter().filter_map(|n| n.id) {
                // An overlay network's last endpoints can take a moment to
                // go, and a swarm removes the network itself a moment after
                // it accepted the removal: done once it is not found.
                let removed = wait_until_async(Duration::from_secs(20), "network removed", || {
                    let (docker, network) = (docker.clone(), network.clone());
                    async move {
                        match docker.remove_network(&network).await {
                            Ok(()) => !network_exists(&docker, &network).await,
                            Err(e) => status(&e) == Some(404),
                        }
                    }
                })
                .await;
                if let Err(e) = removed {
                    eprintln!("cleanup: network {network}: {e}");
                }
            }
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (docker, labels) = (self.docker.clone(), self.labels.clone());
        // Drop cannot await, and may run on the test's runtime: clean up
        // from a thread with a runtime of its own.
        block_on_thread(async move { Leftovers::clean(&docker, &labels).await });
    }
}

/// Run `task` to completion on a thread with a runtime of its own (for a
/// `Drop`, which cannot await).
fn block_on_thread<F: std::future::Future<Output = ()> + Send + 'static>(task: F) {
    let done = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime")
            .block_on(task);
    })
    .join();
    if done.is_err() {
        eprintln!("cleanup panicked; check `docker ps -a`, `docker service ls` and `docker info`");
    }
}

/// The engine's swarm state.
async fn swarm_state(docker: &Docker) -> Result<LocalNodeState, Error> {
    let info = docker.info().await?;
    Ok(info
        .swarm
        .and_then(|s| s.local_node_state)
        .unwrap_or(LocalNodeState::EMPTY))
}

async fn network_exists(docker: &Docker, name: &str) -> bool {
    docker.inspect_network(name, None).await.is_ok()
}

/// The local engine as a single-node swarm manager for one test; see the
/// module doc.
pub struct SwarmGuard {
    docker: Docker,
    /// This guard initialised the swarm (or took over a killed test's): it
    /// leaves it on drop.
    owned: bool,
    /// `docker_gwbridge` was not there before: removed after leaving.
    remove_gwbridge: bool,
    /// The lock that makes swarm tests take turns; released on drop.
    _lock: File,
}

impl SwarmGuard {
    /// Wait for the swarm lock, then make sure the engine is a swarm manager.
    pub async fn acquire(docker: &Docker) -> SwarmGuard {
        let path = std::env::temp_dir().join("shoal-swarm-test.lock");
        let lock = tokio::task::spawn_blocking(move || {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            file.lock()
                .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
            file
        })
        .await
        .expect("the lock task");
        let state = swarm_state(docker)
            .await
            .unwrap_or_else(|e| panic!("docker info: {e}"));
        let ours = match state {
            LocalNodeState::INACTIVE => false,
            LocalNodeState::ACTIVE => {
                let swarm = docker
                    .inspect_swarm()
                    .await
                    .unwrap_or_else(|e| panic!("docker swarm inspect: {e}"));
                let labels = swarm.spec.and_then(|s| s.labels).unwrap_or_default();
                if labels.contains_key(SWARM_LABEL) {
                    eprintln!(
                        "the engine is in a swarm a killed test initialised: using it, and leaving it at the end"
                    );
                    true
                } else {
                    eprintln!("the engine is in a swarm already: using it, and staying in it");
                    return SwarmGuard {
                        docker: docker.clone(),
                        owned: false,
                        remove_gwbridge: false,
                        _lock: lock,
                    };
                }
            }
            other => panic!(
                "the engine's swarm state is {other}: fix it by hand (`docker swarm leave --force`, or finish joining) and run again"
            ),
        };
        if ours {
            return SwarmGuard {
                docker: docker.clone(),
                owned: true,
                // Whether it was there before that test is not known: it is
                // only there because of a swarm.
                remove_gwbridge: true,
                _lock: lock,
            };
        }
        let gwbridge_before = network_exists(docker, GWBRIDGE).await;
        let request = SwarmInitRequest {
            listen_addr: Some("127.0.0.1:2377".into()),
            advertise_addr: Some("127.0.0.1".into()),
            spec: Some(SwarmSpec {
                labels: Some(HashMap::from([(SWARM_LABEL.into(), "initialised".into())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Owned from here: the guard leaves even if init failed half-way.
        let guard = SwarmGuard {
            docker: docker.clone(),
            owned: true,
            remove_gwbridge: !gwbridge_before,
            _lock: lock,
        };
        let started = Instant::now();
        docker
            .init_swarm(request)
            .await
            .unwrap_or_else(|e| panic!("docker swarm init: {e}"));
        eprintln!(
            "initialised a single-node swarm in {:.1} s; it is left at the end",
            started.elapsed().as_secs_f64()
        );
        guard
    }

    /// Whether this guard leaves the swarm when dropped.
    pub fn owned(&self) -> bool {
        self.owned
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let (docker, remove_gwbridge) = (self.docker.clone(), self.remove_gwbridge);
        block_on_thread(async move {
            let options = LeaveSwarmOptionsBuilder::default().force(true).build();
            if let Err(e) = docker.leave_swarm(Some(options)).await {
                eprintln!(
                    "cannot leave the swarm the test initialised ({e}): run `docker swarm leave --force`"
                );
                return;
            }
            if remove_gwbridge {
                let removed =
                    wait_until_async(Duration::from_secs(20), "docker_gwbridge removed", || {
                        let docker = docker.clone();
                        async move {
                            match docker.remove_network(GWBRIDGE).await {
                                Ok(()) => true,
                                Err(e) => status(&e) == Some(404),
                            }
                        }
                    })
                    .await;
                if let Err(e) = removed {
                    eprintln!("{e}: run `docker network rm {GWBRIDGE}`");
                }
            }
            match swarm_state(&docker).await {
                Ok(LocalNodeState::INACTIVE) => eprintln!("left the swarm the test initialised"),
                Ok(state) => eprintln!(
                    "the engine's swarm state is {state} after leaving: run `docker swarm leave --force`"
                ),
                Err(e) => eprintln!("docker info after leaving the swarm: {e}"),
            }
        });
    }
}
