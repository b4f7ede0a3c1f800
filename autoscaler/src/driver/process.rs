//! The `process` driver: instances are local child processes, started from
//! the service's spec (`process:` in a [`Service`]) or, for a service
//! without one, from the `--command` template. `{id}`, `{service}`,
//! `{port}` (a free loopback port) and `{version}` are replaced in every
//! argument; stdout and stderr go to `{log_dir}/{service}-{id}.log`. A
//! reaper task per child records its exit, so a crash shows up in
//! [`Driver::list`] with its exit code.
//!
//! A spec with `registration: managed` (the default) runs the program under
//! `registry run` (the `registry` binary next to `autoscaler`), which
//! registers it under the controller's id once it answers, marks it
//! draining and sends it SIGTERM when it is retired, and deregisters it: any
//! program works unchanged, and the registration lives with the instance,
//! not with the controller, so a controller failover leaves it alone. With
//! `registration: self` the program registers itself. Either way every
//! instance gets `SHOAL_SERVICE`, `SHOAL_INSTANCE_ID`, `SHOAL_VERSION`, the
//! controller's etcd endpoints, prefix, lease TTL and credentials in its
//! environment, so `app-server` or a `registry run` inside the command picks
//! up the id the controller waits for.
//!
//! Instances outlive the controller process (stopping a controller must not
//! take a service down). Each one has a pid file ([`PidFile`]), so a
//! controller that takes over on the same machine with the same
//! `--log-dir` adopts the instances it finds alive there: it lists them,
//! stops them (SIGTERM to the pid, SIGKILL after the grace) and counts them
//! instead of starting duplicates. An adopted instance's exit code cannot be
//! known (it is not this process's child): it is reported as
//! [`UNKNOWN_EXIT`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use registry::spec::{RegistrationMode, Service, fill};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use super::data_slots::DataSlots;
use super::pidfile::PidFile;
use super::{Driver, DriverError, Owned, StartSpec};

/// The exit code reported for an adopted instance that is gone.
pub const UNKNOWN_EXIT: i32 = -1;

/// How to start an instance.
#[derive(Debug, Clone)]
pub struct ProcessTemplate {
    /// For a service without a spec: program and arguments, with `{id}`,
    /// `{service}`, `{port}` placeholders.
    pub argv: Vec<String>,
    /// Every instance's environment: the controller's etcd endpoints,
    /// prefix, lease TTL and credentials.
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    /// Where instances of services with `data_dir: true` keep their data
    /// directories ([`DataSlots`]).
    pub data_root: PathBuf,
    /// The `registry` binary that runs managed instances.
    pub registry: PathBuf,
}

/// One start, worked out: what to run, with what, where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Launch {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
}

struct Child {
    service: String,
    pid: u32,
    /// `None` while running, then the exit code.
    exit: watch::Receiver<Option<i32>>,
}

/// Local child processes.
pub struct ProcessDriver {
    template: ProcessTemplate,
    children: Arc<Mutex<HashMap<String, Child>>>,
    /// Ids of the instances adopted so far (logged once each).
    adopted: Mutex<HashSet<String>>,
    /// Held from claiming a data directory until the instance is in
    /// `children`, so two starts never claim the same one.
    data_slots: Mutex<DataSlots>,
}

impl ProcessDriver {
    pub fn new(template: ProcessTemplate) -> Self {
        ProcessDriver {
            data_slots: Mutex::new(DataSlots::new(template.data_root.clone())),
            template,
            children: Arc::default(),
            adopted: Mutex::default(),
        }
    }

    /// The instances running now: this driver's children that have not
    /// exited, and adopted ones whose process is alive.
    fn live_ids(&self) -> HashSet<String> {
        let children = self.children.lock().expect("children lock poisoned");
        let mut live: HashSet<String> = children
            .iter()
            .filter(|(_, child)| child.exit.borrow().is_none())
            .map(|(id, _)| id.clone())
            .collect();
        live.extend(
            PidFile::scan(&self.template.log_dir)
                .into_iter()
                .filter(|f| !children.contains_key(&f.id) && f.alive())
                .map(|f| f.id),
        );
        live
    }

    /// What to run for `spec` on `port` (with `data_dir`, the directory
    /// claimed for it when its spec asks for one).
    fn launch(
        &self,
        spec: &StartSpec,
        port: u16,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Launch, String> {
        let mut env = self.template.env.clone();
        env.extend(spec.identity_env());
        if let Some(dir) = data_dir {
            env.push(("SHOAL_DATA_DIR".to_owned(), dir.display().to_string()));
        }
        let Some(service) = spec.spec.as_deref() else {
            let argv = self
                .template
                .argv
                .iter()
                .map(|a| fill(a, port, &spec.id, &spec.service, ""))
                .collect();
            return Ok(Launch {
                argv,
                env,
                cwd: None,
            });
        };
        let Some(run) = &service.process else {
            return Err(format!(
                "the spec of {} has no `process` section and this controller runs the process driver; add one (process: {{argv: [...], port_env: PORT}}) or run the service under a docker-driver controller",
                spec.service
            ));
        };
        let version = service.version();
        let filled = |text: &String| fill(text, port, &spec.id, &spec.service, &version);
        let program: Vec<String> = run.argv.iter().map(filled).collect();
        env.extend(run.env.iter().map(|(k, v)| (k.clone(), filled(v))));
        if let Some(var) = &run.port_env {
            env.push((var.clone(), port.to_string()));
        }
        env.push(("SHOAL_PORT".to_owned(), port.to_string()));
        let argv = match service.registration {
            RegistrationMode::SelfRegistered => program,
            RegistrationMode::Managed => {
                managed(&self.template.registry, service, spec, port, program)?
            }
        };
        Ok(Launch {
            argv,
            env,
            cwd: run.cwd.clone(),
        })
    }
}

/// `registry run ... -- PROGRAM`: the platform registers the instance.
fn managed(
    registry: &std::path::Path,
    service: &Service,
    spec: &StartSpec,
    port: u16,
    program: Vec<String>,
) -> Result<Vec<String>, String> {
    if let Some(program) = program.first() {
        find_program(
            program,
            spec.spec
                .as_deref()
                .and_then(|s| s.process.as_ref()?.cwd.as_deref()),
        )?;
    }
    if !registry.is_file() {
        return Err(format!(
            "managed registration runs the program under `registry run`, and there is no {}; build it (cargo build --bins) or declare `registration: self`",
            registry.display()
        ));
    }
    let mut argv = vec![
        registry.display().to_string(),
        "run".into(),
        "--service".into(),
        spec.service.clone(),
        "--id".into(),
        spec.id.clone(),
        "--port".into(),
        port.to_string(),
        "--version-label".into(),
        service.version(),
        "--drain-grace".into(),
        format!("{}s", service.drain_grace_secs),
    ];
    argv.extend(service.readiness.registry_run_flags());
    argv.push("--".into());
    argv.extend(program);
    Ok(argv)
}

/// Whether `program` can be run (from `cwd`, or found on `PATH`): a managed
/// instance's program is started by `registry run`, whose failure would
/// only show as an exit code, so a missing one is refused here, by name.
fn find_program(program: &str, cwd: Option<&str>) -> Result<(), String> {
    let found = if program.contains('/') {
        let path = std::path::Path::new(program);
        match cwd {
            Some(dir) if path.is_relative() => std::path::Path::new(dir).join(path).is_file(),
            _ => path.is_file(),
        }
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "cannot run `{program}`: no such program{}; fix the spec's process.argv",
            if program.contains('/') {
                String::new()
            } else {
                " on PATH".to_owned()
            }
        ))
    }
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()
        .map(|a| a.port())
}

/// Exit code as a shell reports it: the code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &StartSpec) -> Result<(), DriverError> {
        let fail = |reason: String| DriverError::Start {
            service: spec.service.clone(),
            id: spec.id.clone(),
            reason,
        };
        let port = free_port().ok_or_else(|| fail("no free loopback port".into()))?;
        let slots = self.data_slots.lock().expect("data slots lock poisoned");
        let data_dir = if spec.spec.as_ref().is_some_and(|s| s.data_dir) {
            let live = self.live_ids();
            let dir = slots
                .claim(&spec.service, &spec.id, |owner| live.contains(owner))
                .map_err(|e| {
                    fail(format!(
                        "cannot claim a data directory under {}: {e}; check --data-root",
                        self.template.data_root.display()
                    ))
                })?;
            info!(service = %spec.service, id = %spec.id, dir = %dir.display(), "data directory claimed");
            Some(dir)
        } else {
            None
        };
        let launch = self.launch(spec, port, data_dir.as_deref()).map_err(fail)?;
        let (program, args) = launch
            .argv
            .split_first()
            .ok_or_else(|| fail("the command template is empty".into()))?;
        std::fs::create_dir_all(&self.template.log_dir).map_err(|e| {
            fail(format!(
                "cannot create {}: {e}",
                self.template.log_dir.display()
            ))
        })?;
        let log_path = self
            .template
            .log_dir
            .join(format!("{}-{}.log", spec.service, spec.id));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| fail(format!("cannot create {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| fail(format!("cannot reuse {}: {e}", log_path.display())))?;
        let mut command = Command::new(program);
        if let Some(dir) = &launch.cwd {
            command.current_dir(dir);
        }
        let mut child = command
            .args(args)
            .envs(launch.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                let dir = launch
                    .cwd
                    .as_ref()
                    .map(|d| format!(" in {d}"))
                    .unwrap_or_default();
                fail(format!("cannot run `{program}`{dir}: {e}"))
            })?;
        let pid = child
            .id()
            .ok_or_else(|| fail("exited before it could be tracked".into()))?;
        let (exit_tx, exit_rx) = watch::channel(None);
        let id = spec.id.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => exit_code(status),
                Err(e) => {
                    warn!(%id, error = %e, "cannot wait for instance process; treating it as exited");
                    -1
                }
            };
            info!(%id, pid, code, "instance process exited");
            exit_tx.send_replace(Some(code));
        });
        match PidFile::of(&spec.service, &spec.id, pid) {
            Some(file) => {
                if let Err(e) = file.write(&self.template.log_dir) {
                    warn!(id = %spec.id, error = %e, "cannot write the pid file; another controller could not adopt this instance");
                }
            }
            None => warn!(id = %spec.id, pid, "exited at once; no pid file"),
        }
        info!(service = %spec.service, id = %spec.id, pid, log = %log_path.display(), "started instance process");
        self.children
            .lock()
            .expect("children lock poisoned")
            .insert(
                spec.id.clone(),
                Child {
                    service: spec.service.clone(),
                    pid,
                    exit: exit_rx,
                },
            );
        drop(slots);
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        let own = {
            let children = self.children.lock().expect("children lock poisoned");
            children
                .get(id)
                .map(|c| (c.service.clone(), c.pid, c.exit.clone()))
        };
        let (service, pid, exited) = match own {
            Some((service, pid, exit)) => {
                let mut exit = exit;
                let exited = async move {
                    if exit.wait_for(Option::is_some).await.is_err() {
                        // The reaper task is gone, so the process is too.
                    }
                };
                (service, pid, futures::future::Either::Left(exited))
            }
            None => {
                let file = PidFile::scan(&self.template.log_dir)
                    .into_iter()
                    .find(|f| f.id == id)
                    .ok_or_else(|| DriverError::Unknown(id.to_owned()))?;
                let (service, pid) = (file.service.clone(), file.pid);
                let gone = async move {
                    while file.alive() {
                        tokio::time::sleep(ADOPTED_POLL).await;
                    }
                };
                (service, pid, futures::future::Either::Right(gone))
            }
        };
        terminate(id, pid, grace, exited).await?;
        self.children
            .lock()
            .expect("children lock poisoned")
            .remove(id);
        PidFile::remove(&self.template.log_dir, &service, id);
        Ok(())
    }

    fn last_words(&self, service: &str, id: &str) -> Option<String> {
        let log = self.template.log_dir.join(format!("{service}-{id}.log"));
        let text = std::fs::read(&log).ok()?;
        last_lines(&String::from_utf8_lossy(&text))
    }

    async fn list(&self) -> Result<Vec<Owned>, DriverError> {
        let mut owned: Vec<Owned> = {
            let children = self.children.lock().expect("children lock poisoned");
            children
                .iter()
                .map(|(id, c)| Owned {
                    id: id.clone(),
                    service: c.service.clone(),
                    exited: *c.exit.borrow(),
                })
                .collect()
        };
        // Instances another controller process started here: adopted.
        for file in PidFile::scan(&self.template.log_dir) {
            if owned.iter().any(|o| o.id == file.id) {
                continue;
            }
            let alive = file.alive();
            if alive
                && self
                    .adopted
                    .lock()
                    .expect("adopted lock poisoned")
                    .insert(file.id.clone())
            {
                info!(service = %file.service, id = %file.id, pid = file.pid, "adopted an instance another controller started here (its pid file)");
            }
            owned.push(Owned {
                exited: (!alive).then_some(UNKNOWN_EXIT),
                id: file.id,
                service: file.service,
            });
        }
        owned.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(owned)
    }
}

/// The end of an instance's output, for the event of a crash: its last
/// three non-empty lines as plain text (no colour codes, no tabs), at most
/// 400 characters.
fn last_lines(output: &str) -> Option<String> {
    let plain: Vec<String> = output
        .lines()
        .map(|l| registry::model::plain_text(&without_escape_sequences(l), usize::MAX))
        .collect();
    let lines: Vec<&str> = plain
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        return None;
    }
    let mut chars = tail.chars();
    let start: String = chars.by_ref().take(400).collect();
    Some(if chars.next().is_some() {
        format!("{start}…")
    } else {
        start
    })
}

/// `line` without its terminal escape sequences (`ESC [ … final`), the
/// colours a program prints when it logs to what it thinks is a terminal.
fn without_escape_sequences(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How often an adopted instance (not this process's child, so it cannot
/// be waited for) is checked for having exited.
const ADOPTED_POLL: Duration = Duration::from_millis(50);

/// SIGTERM `pid` unless `exited` is already done, SIGKILL after `grace`.
async fn terminate(
    id: &str,
    pid: u32,
    grace: Duration,
    exited: impl std::future::Future<Output = ()>,
) -> Result<(), DriverError> {
    let mut exited = std::pin::pin!(exited);
    if futures::poll!(exited.as_mut()).is_ready() {
        return Ok(());
    }
    let pid = Pid::from_raw(pid as i32);
    if let Err(e) = kill(pid, Signal::SIGTERM) {
        warn!(id, error = %e, "cannot send SIGTERM");
    }
    if tokio::time::timeout(grace, exited.as_mut()).await.is_ok() {
        return Ok(());
    }
    warn!(
        id,
        grace_ms = grace.as_millis() as u64,
        "instance did not exit in time; killing it"
    );
    kill(pid, Signal::SIGKILL).map_err(|e| DriverError::Stop {
        id: id.to_owned(),
        reason: e.to_string(),
    })?;
    tokio::time::timeout(Duration::from_secs(5), exited)
        .await
        .map_err(|_| DriverError::Stop {
            id: id.to_owned(),
            reason: "still running 5 s after SIGKILL".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(script: &str) -> (ProcessDriver, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let template = ProcessTemplate {
            argv: vec![
                "sh".into(),
                "-c".into(),
                script.into(),
                "sh".into(),
                "{service}".into(),
                "{id}".into(),
            ],
            env: vec![("GREETING".into(), "hi".into())],
            log_dir: dir.path().to_path_buf(),
            data_root: dir.path().join("data"),
            registry: PathBuf::from("/nonexistent/registry"),
        };
        (ProcessDriver::new(template), dir)
    }

    fn spec(id: &str) -> StartSpec {
        StartSpec {
            service: "app".into(),
            id: id.into(),
            spec: None,
        }
    }

    async fn wait_exited(d: &ProcessDriver, id: &str) -> Option<i32> {
        for _ in 0..500 {
            if let Some(o) = d.list().await.unwrap().into_iter().find(|o| o.id == id)
                && o.exited.is_some()
            {
                return o.exited;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    #[tokio::test]
    async fn placeholders_env_and_logs() {
        let (d, dir) = driver(r#"echo "$GREETING $1 $2"; exit 3"#);
        d.start(&spec("i1")).await.unwrap();
        assert_eq!(
            wait_exited(&d, "i1").await,
            Some(3),
            "a crash is visible with its exit code"
        );
        let log = std::fs::read_to_string(dir.path().join("app-i1.log")).unwrap();
        assert_eq!(log, "hi app i1\n");
        assert_eq!(d.last_words("app", "i1").as_deref(), Some("hi app i1"));
        assert_eq!(last_lines("a\n\nb\nc\nd\n").as_deref(), Some("b / c / d"));
        assert_eq!(last_lines("\n  \n"), None);
    }

    #[test]
    fn last_words_are_plain_text_without_colour_codes_or_tabs() {
        let coloured =
            "\u{1b}[2m2026-12-02T14:00:00Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m bind:\tin use\r\n";
        assert_eq!(
            last_lines(coloured).as_deref(),
            Some("2026-12-02T14:00:00Z ERROR bind: in use")
        );
    }

    #[tokio::test]
    async fn stop_is_graceful_then_forced() {
        let (d, _dir) = driver("trap 'exit 0' TERM; while :; do sleep 0.05; done");
        d.start(&spec("polite")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // let sh install its trap
        d.stop("polite", Duration::from_secs(5)).await.unwrap();
        assert!(
            d.list().await.unwrap().is_empty(),
            "a stopped instance is forgotten"
        );

        let (d, _dir) = driver("trap '' TERM; while :; do sleep 0.05; done");
        d.start(&spec("stubborn")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        d.stop("stubborn", Duration::from_millis(300))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(
            d.stop("stubborn", Duration::ZERO).await,
            Err(DriverError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = ProcessDriver::new(ProcessTemplate {
            argv: vec!["/nonexistent/app-server".into()],
            env: vec![],
            log_dir: dir.path().to_path_buf(),
            data_root: dir.path().join("data"),
            registry: PathBuf::from("/nonexistent/registry"),
        });
        let err = d.start(&spec("x")).await.unwrap_err().to_string();
        assert!(
            err.starts_with("cannot start app/x: cannot run `/nonexistent/app-server`"),
            "{err}"
        );
    }

    fn declared(registration: &str) -> StartSpec {
        let service: Service = serde_json::from_value(serde_json::json!({
            "name": "web",
            "process": {
                "argv": ["sh", "-c", "exec server --port {port} --name {service}-{id}"],
                "port_env": "PORT",
                "env": {"GREETING": "hi from {id}"},
                "cwd": "/tmp"
            },
            "readiness": {"path": "/ready"},
            "registration": registration,
            "drain_grace_secs": 2
        }))
        .unwrap();
        StartSpec {
            service: "web".into(),
            id: "i1".into(),
            spec: Some(std::sync::Arc::new(service)),
        }
    }

    fn env_of<'a>(launch: &'a Launch, name: &str) -> Option<&'a str> {
        launch
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_managed_spec_runs_under_registry_run_with_the_controllers_id() {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry");
        std::fs::write(&registry, "").unwrap();
        let d = ProcessDriver::new(ProcessTemplate {
            argv: vec!["unused".into()],
            env: vec![("SHOAL_ETCD".into(), "http://127.0.0.1:2379".into())],
            log_dir: dir.path().to_path_buf(),
            data_root: dir.path().join("data"),
            registry: registry.clone(),
        });
        let spec = declared("managed");
        let version = spec.spec.as_ref().unwrap().version();
        let launch = d.launch(&spec, 4321, None).unwrap();
        let registry = registry.display().to_string();
        let expected: Vec<&str> = vec![
            &registry,
            "run",
            "--service",
            "web",
            "--id",
            "i1",
            "--port",
            "4321",
            "--version-label",
            &version,
            "--drain-grace",
            "2s",
            "--health-path",
            "/ready",
            "--",
            "sh",
            "-c",
            "exec server --port 4321 --name web-i1",
        ];
        assert_eq!(launch.argv, expected);
        assert_eq!(launch.cwd.as_deref(), Some("/tmp"));
        assert_eq!(env_of(&launch, "PORT"), Some("4321"));
        assert_eq!(env_of(&launch, "GREETING"), Some("hi from i1"));
        assert_eq!(env_of(&launch, "SHOAL_INSTANCE_ID"), Some("i1"));
        assert_eq!(env_of(&launch, "SHOAL_VERSION"), Some(version.as_str()));
        assert_eq!(env_of(&launch, "SHOAL_ETCD"), Some("http://127.0.0.1:2379"));
    }

    #[test]
    fn a_self_registering_spec_runs_as_is_with_its_identity_in_the_environment() {
        let (d, _dir) = driver("true");
        let launch = d.launch(&declared("self"), 4321, None).unwrap();
        assert_eq!(launch.argv[0], "sh");
        assert_eq!(env_of(&launch, "SHOAL_INSTANCE_ID"), Some("i1"));
        assert_eq!(env_of(&launch, "SHOAL_SERVICE"), Some("web"));
        assert_eq!(env_of(&launch, "SHOAL_PORT"), Some("4321"));
    }

    #[test]
    fn unusable_specs_are_refused_by_name() {
        let (d, _dir) = driver("true");
        let mut missing = declared("managed");
        std::sync::Arc::make_mut(missing.spec.as_mut().unwrap())
            .process
            .as_mut()
            .unwrap()
            .argv[0] = "no-such-program-here".into();
        let err = d.launch(&missing, 1, None).unwrap_err();
        assert!(
            err.contains("`no-such-program-here`") && err.contains("PATH"),
            "{err}"
        );

        let no_registry = d.launch(&declared("managed"), 1, None).unwrap_err();
        assert!(no_registry.contains("registry run"), "{no_registry}");

        let mut docker_only = declared("self");
        let service = std::sync::Arc::make_mut(docker_only.spec.as_mut().unwrap());
        service.process = None;
        let err = d.launch(&docker_only, 1, None).unwrap_err();
        assert!(err.contains("no `process` section"), "{err}");
    }

    #[tokio::test]
    async fn another_driver_on_the_same_log_dir_adopts_and_stops_an_instance() {
        let (first, dir) = driver("trap 'exit 0' TERM; while :; do sleep 0.05; done");
        first.start(&spec("kept")).await.unwrap();
        let second = ProcessDriver::new(ProcessTemplate {
            argv: vec!["unused".into()],
            env: vec![],
            log_dir: dir.path().to_path_buf(),
            data_root: dir.path().join("data"),
            registry: PathBuf::from("/nonexistent/registry"),
        });
        let adopted = second.list().await.unwrap();
        assert_eq!(adopted.len(), 1);
        assert_eq!((adopted[0].id.as_str(), adopted[0].exited), ("kept", None));

        second.stop("kept", Duration::from_secs(5)).await.unwrap();
        assert!(
            second.list().await.unwrap().is_empty(),
            "stopped and forgotten"
        );
        // 0 once sh's trap is installed, 128 + 15 before: SIGTERM, not SIGKILL.
        let code = wait_exited(&first, "kept").await;
        assert!(matches!(code, Some(0) | Some(143)), "{code:?}");
        assert!(matches!(
            second.stop("kept", Duration::ZERO).await,
            Err(DriverError::Unknown(_))
        ));
    }
}
