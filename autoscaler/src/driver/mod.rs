//! Drivers start and stop instances; the controller decides when.
//!
//! [`Driver`] is the seam a Kubernetes or Nomad driver would implement later:
//! start an instance with a given id, stop one (gracefully, then by force),
//! and list the instances this driver owns — including ones that have exited,
//! so the controller can tell a crash from a retirement. Instances register
//! themselves in etcd; a driver never writes the registry.
//!
//! - [`process`]: local child processes from a spec or a command template;
//!   [`pidfile`] lets another controller process adopt them; [`data_slots`]
//!   their data directories.
//! - [`docker`]: containers through the Docker Engine API, adopted by label;
//!   [`docker_args`] its flags in `autoscaler run`.
//! - [`swarm`]: one Docker Swarm service per instance, adopted by label; it
//!   takes the docker driver's flags.
//! - [`containers`]: what the docker and swarm drivers share: their
//!   configuration, labels, names, engine checks, and each instance's
//!   containers (image, command, environment).

pub mod containers;
pub mod data_slots;
pub mod data_volumes;
pub mod docker;
pub mod docker_args;
pub mod pidfile;
pub mod process;
pub mod swarm;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use registry::spec::Service;

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartSpec {
    pub service: String,
    /// The instance id it must register under (uuid v4 from the controller).
    pub id: String,
    /// The service's declared workload; `None`: the driver's default
    /// (`--command`, `--image`).
    pub spec: Option<Arc<Service>>,
}

impl StartSpec {
    /// The environment every instance gets, so that whatever registers it
    /// (the program itself, `registry run`) uses the controller's id and
    /// version: `SHOAL_SERVICE`, `SHOAL_INSTANCE_ID`, and with a spec
    /// `SHOAL_VERSION` and `SHOAL_LABELS`.
    pub fn identity_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("SHOAL_SERVICE".to_owned(), self.service.clone()),
            ("SHOAL_INSTANCE_ID".to_owned(), self.id.clone()),
        ];
        if let Some(spec) = &self.spec {
            env.push(("SHOAL_VERSION".to_owned(), spec.version()));
            if !spec.labels.is_empty() {
                let labels: Vec<String> = spec
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                env.push(("SHOAL_LABELS".to_owned(), labels.join(",")));
            }
        }
        env
    }
}

/// An instance a driver owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub id: String,
    pub service: String,
    /// `None` while running; the exit code (or 128+signal) once it has exited.
    pub exited: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot start {service}/{id}: {reason}")]
    Start {
        service: String,
        id: String,
        reason: String,
    },
    #[error("no instance {0} is owned by this driver")]
    Unknown(String),
    #[error("cannot stop {id}: {reason}")]
    Stop { id: String, reason: String },
    #[error("{0}")]
    List(String),
}

/// Starts, stops and lists instances.
pub trait Driver: Send + Sync + 'static {
    /// A short name for logs and events (`process`, `docker`, `swarm`).
    fn name(&self) -> &'static str;

    /// Start an instance; returns once it has been launched (not once it is ready:
    /// readiness is read from the registry).
    fn start(&self, spec: &StartSpec) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Stop an instance: SIGTERM (or the platform's equivalent), then force after `grace`.
    /// Stopping an instance that has already exited forgets it and succeeds.
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Every instance this driver owns, running or exited (not yet stopped).
    fn list(&self) -> impl Future<Output = Result<Vec<Owned>, DriverError>> + Send;

    /// The end of what an instance printed, if the driver keeps it: what
    /// a crash event quotes, so a program that cannot start says why.
    fn last_words(&self, _service: &str, _id: &str) -> Option<String> {
        None
    }
}
