//! The Docker engine through its API (bollard): finding it (or skipping),
//! the images the check needs, and what the check does to and reads from
//! containers: the app servers the autoscaler manages (by the labels
//! `shoal.managed=true` and `shoal.prefix`), `docker kill`, `docker start`,
//! `docker network disconnect`, health, logs, an exec, and what is left
//! after `down`.

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use bollard::errors::Error;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{HealthStatusEnum, NetworkDisconnectRequest};
use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures::StreamExt;

/// The images the check runs (`tests/compose/offline.yaml`).
const IMAGES: [&str; 3] = ["shoal/shoal:dev", "shoal/etcd:dev", "shoal/node-hello:dev"];
/// How to get them.
const FIX: &str = "build them with `SHOAL_PGO=0 docker/build-images.sh shoal etcd node-hello` (scripts/test does; node-hello needs Node.js installed)";

/// Whether a missing engine or compose fails the check (`CI=true`) rather
/// than skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip the check with `why`, or under `CI=true` fail with `why` and `fix`.
pub fn unavailable(why: &str, fix: &str) {
    assert!(
        !in_ci(),
        "compose check: FAILED — {why} (CI=true: the check must run; {fix})"
    );
    eprintln!("compose check: skipped — {why}");
}

/// The engine, or `None` (after a note) when there is none and this is not CI.
pub async fn connect_or_skip() -> Option<Docker> {
    let docker = match Docker::connect_with_local_defaults() {
        Ok(d) => d.negotiate_version().await,
        Err(e) => Err(e),
    };
    match docker {
        Ok(docker) => Some(docker),
        Err(e) => {
            unavailable(
                &format!("no Docker engine reachable ({e})"),
                "start dockerd, e.g. `service docker start`",
            );
            None
        }
    }
}

/// Panic with the command that builds them if an image is missing.
pub async fn require_images(docker: &Docker) {
    for image in IMAGES {
        if let Err(e) = docker.inspect_image(image).await {
            panic!("compose check: FAILED — image {image} is missing ({e}): {FIX}");
        }
    }
}

/// The HTTP status of an engine error, if it has one.
fn status(e: &Error) -> Option<u16> {
    match e {
        Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine, seen from one compose project and registry prefix.
#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    /// `SHOAL_PREFIX`, which the autoscaler puts on its containers' labels.
    pub prefix: String,
    /// The compose project's name.
    pub project: String,
    /// `SHOAL_NETWORK`.
    pub network: String,
}

impl Engine {
    /// Containers matching every `label` (`key=value`); running ones only
    /// unless `all`: id → labels.
    async fn containers(
        &self,
        labels: Vec<String>,
        all: bool,
    ) -> BTreeMap<String, HashMap<String, String>> {
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::default()
            .all(all)
            .filters(&filters)
            .build();
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .unwrap_or_else(|e| panic!("docker ps: {e}"));
        listed
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect()
    }

    /// The running app servers the autoscaler manages for this prefix:
    /// container id → instance id (label `shoal.id`).
    pub async fn managed(&self) -> BTreeMap<String, String> {
        self.managed_containers(false)
            .await
            .into_iter()
            .map(|(container, labels)| {
                let id = labels.get("shoal.id").cloned().unwrap_or_default();
                (container, id)
            })
            .collect()
    }

    async fn managed_containers(&self, all: bool) -> BTreeMap<String, HashMap<String, String>> {
        let labels = vec![
            "shoal.managed=true".to_owned(),
            format!("shoal.prefix={}", self.prefix),
        ];
        self.containers(labels, all).await
    }

    /// Every container of the compose project, running or not.
    pub async fn project_containers(&self) -> Vec<String> {
        let label = format!("com.docker.compose.project={}", self.project);
        self.containers(vec![label], true)
            .await
            .into_keys()
            .collect()
    }

    /// Every app-server container of this prefix, running or not.
    pub async fn managed_any_state(&self) -> Vec<String> {
        self.managed_containers(true).await.into_keys().collect()
    }

    /// The container of compose service `service`.
    pub async fn service_container(&self, service: &str) -> String {
        let labels = vec![
            format!("com.docker.compose.project={}", self.project),
            format!("com.docker.compose.service={service}"),
        ];
        self.containers(labels, true)
            .await
            .into_keys()
            .next()
            .unwrap_or_else(|| panic!("no container of service {service}"))
    }

    /// `docker kill` (SIGKILL).
    pub async fn kill(&self, container: &str) {
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        self.docker
            .kill_container(container, Some(options))
            .await
            .unwrap_or_else(|e| panic!("docker kill {container}: {e}"));
    }

    /// `docker start`.
    pub async fn start(&self, container: &str) {
        self.docker
            .start_container(container, None)
            .await
            .unwrap_or_else(|e| panic!("docker start {container}: {e}"));
    }

    /// `docker network disconnect` from the project's network.
    pub async fn disconnect(&self, container: &str) {
        let request = NetworkDisconnectRequest {
            container: container.to_owned(),
            force: Some(false),
        };
        self.docker
            .disconnect_network(&self.network, request)
            .await
            .unwrap_or_else(|e| panic!("docker network disconnect {container}: {e}"));
    }

    /// Whether the container exists at all (running or not).
    pub async fn exists(&self, container: &str) -> bool {
        match self.docker.inspect_container(container, None).await {
            Ok(_) => true,
            Err(e) if status(&e) == Some(404) => false,
            Err(e) => panic!("docker inspect {container}: {e}"),
        }
    }

    /// Whether its Docker healthcheck says `healthy`.
    pub async fn is_healthy(&self, container: &str) -> bool {
        let Ok(details) = self.docker.inspect_container(container, None).await else {
            return false;
        };
        details
            .state
            .and_then(|s| s.health)
            .and_then(|h| h.status)
            .is_some_and(|s| s == HealthStatusEnum::HEALTHY)
    }

    /// Its stdout and stderr since `since` (unix seconds), or the last
    /// `tail` lines when `since` is 0.
    pub async fn logs(&self, container: &str, since: i64, tail: &str) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .since(since as i32)
            .tail(tail)
            .build();
        let mut stream = self.docker.logs(container, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
        }
        text
    }

    /// Run `cmd` in `container` (`docker exec`); its exit code and output.
    pub async fn exec(&self, container: &str, cmd: &[&str]) -> (Option<i64>, String) {
        let options = CreateExecOptions {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(container, options)
            .await
            .unwrap_or_else(|e| panic!("docker exec {container} {cmd:?}: {e}"));
        let mut output = String::new();
        if let Ok(StartExecResults::Attached {
            output: mut out, ..
        }) = self.docker.start_exec(&exec.id, None).await
        {
            while let Some(Ok(chunk)) = out.next().await {
                output.push_str(&chunk.to_string());
            }
        }
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .ok()
            .and_then(|i| i.exit_code);
        (code, output)
    }

    /// Whether the project's network exists.
    pub async fn network_exists(&self) -> bool {
        match self.docker.inspect_network(&self.network, None).await {
            Ok(_) => true,
            Err(e) if status(&e) == Some(404) => false,
            Err(e) => panic!("docker network inspect {}: {e}", self.network),
        }
    }

    /// Each app server's state and last 20 log lines, for a failure.
    pub async fn describe_app_servers(&self) -> String {
        let mut out = String::new();
        for container in self.managed_any_state().await {
            let state = match self.docker.inspect_container(&container, None).await {
                Ok(d) => format!(
                    "{} {:?} exit={:?}",
                    d.name.unwrap_or_default(),
                    d.state.as_ref().and_then(|s| s.status),
                    d.state.as_ref().and_then(|s| s.exit_code)
                ),
                Err(e) => e.to_string(),
            };
            out.push_str(&format!("---- app server {state}\n"));
            out.push_str(&self.logs(&container, 0, "20").await);
        }
        out
    }

    /// Remove what `down` may have left after a failure: app servers of
    /// this prefix (force) and the network.
    pub async fn remove_leftovers(&self) {
        let force = RemoveContainerOptionsBuilder::default().force(true).build();
        for container in self.managed_any_state().await {
            if let Err(e) = self
                .docker
                .remove_container(&container, Some(force.clone()))
                .await
            {
                eprintln!("compose check: cannot remove {container}: {e}");
            }
        }
        if self.network_exists().await
            && let Err(e) = self.docker.remove_network(&self.network).await
        {
            eprintln!("compose check: cannot remove network {}: {e}", self.network);
        }
    }
}
