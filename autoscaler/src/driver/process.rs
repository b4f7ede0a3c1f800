//! The `process` driver: instances are local child processes started from a
//! command template. `{id}`, `{service}` and `{port}` (a free loopback port)
//! are replaced in every argument; stdout and stderr go to
//! `{log_dir}/{service}-{id}.log`. A reaper task per child records its exit,
//! so a crash shows up in [`Driver::list`] with its exit code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Driver, DriverError, Owned, StartSpec};

/// How to start an instance.
#[derive(Debug, Clone)]
pub struct ProcessTemplate {
    /// Program and arguments, with `{id}`, `{service}`, `{port}` placeholders.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
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
}

impl ProcessDriver {
    pub fn new(template: ProcessTemplate) -> Self {
        ProcessDriver {
            template,
            children: Arc::default(),
        }
    }

    fn argv(&self, spec: &StartSpec) -> Vec<String> {
        let port = free_port()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "0".into());
        self.template
            .argv
            .iter()
            .map(|a| {
                a.replace("{id}", &spec.id)
                    .replace("{service}", &spec.service)
                    .replace("{port}", &port)
            })
            .collect()
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
        let argv = self.argv(spec);
        let (program, args) = argv
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
        let mut child = Command::new(program)
            .args(args)
            .envs(self.template.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| fail(format!("cannot run `{program}`: {e}")))?;
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
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        let (pid, mut exit) = {
            let children = self.children.lock().expect("children lock poisoned");
            let child = children
                .get(id)
                .ok_or_else(|| DriverError::Unknown(id.to_owned()))?;
            (child.pid, child.exit.clone())
        };
        if exit.borrow().is_none() {
            let pid = Pid::from_raw(pid as i32);
            if let Err(e) = kill(pid, Signal::SIGTERM) {
                warn!(id, error = %e, "cannot send SIGTERM");
            }
            if tokio::time::timeout(grace, exit.wait_for(Option::is_some))
                .await
                .is_err()
            {
                warn!(
                    id,
                    grace_ms = grace.as_millis() as u64,
                    "instance did not exit in time; killing it"
                );
                kill(pid, Signal::SIGKILL).map_err(|e| DriverError::Stop {
                    id: id.to_owned(),
                    reason: e.to_string(),
                })?;
                if tokio::time::timeout(Duration::from_secs(5), exit.wait_for(Option::is_some))
                    .await
                    .is_err()
                {
                    return Err(DriverError::Stop {
                        id: id.to_owned(),
                        reason: "still running 5 s after SIGKILL".into(),
                    });
                }
            }
        }
        self.children
            .lock()
            .expect("children lock poisoned")
            .remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Owned>, DriverError> {
        let children = self.children.lock().expect("children lock poisoned");
        let mut owned: Vec<Owned> = children
            .iter()
            .map(|(id, c)| Owned {
                id: id.clone(),
                service: c.service.clone(),
                exited: *c.exit.borrow(),
            })
            .collect();
        owned.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(owned)
    }
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
        };
        (ProcessDriver::new(template), dir)
    }

    fn spec(id: &str) -> StartSpec {
        StartSpec {
            service: "app".into(),
            id: id.into(),
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
        });
        let err = d.start(&spec("x")).await.unwrap_err().to_string();
        assert!(
            err.starts_with("cannot start app/x: cannot run `/nonexistent/app-server`"),
            "{err}"
        );
    }
}
