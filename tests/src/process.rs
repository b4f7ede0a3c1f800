//! A child process started by a test: stdout captured line by line, stderr
//! written to a log file that survives the test (for reading after a
//! failure), SIGKILLed on drop.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::wait::wait_until;

pub struct Proc {
    label: String,
    child: Child,
    pid: u32,
    stdout: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Start `program` with `args`; stderr goes to `{log_dir}/{label}-{pid}.log`.
    pub fn spawn(
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Proc {
        Self::spawn_in(label, program, args, env, log_dir, Path::new("."))
    }

    /// [`Proc::spawn`] in working directory `cwd`.
    pub fn spawn_in(
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
        cwd: &Path,
    ) -> Proc {
        Self::spawn_full(label, program, args, env, log_dir, cwd, None)
    }

    /// [`Proc::spawn`] as user and group `uid` (the caller is root), so
    /// that firewall rules can match its packets by owner.
    pub fn spawn_as(
        label: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
        uid: u32,
    ) -> Proc {
        Self::spawn_full(
            label,
            program,
            args,
            &[],
            log_dir,
            Path::new("."),
            Some(uid),
        )
    }

    fn spawn_full(
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
        cwd: &Path,
        uid: Option<u32>,
    ) -> Proc {
        std::fs::create_dir_all(log_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_dir.display()));
        let log = log_dir.join(format!("{label}-{}.log", uuid::Uuid::new_v4().simple()));
        let stderr =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        if let Some(uid) = uid {
            // std drops the supplementary groups too when root sets a uid.
            command.uid(uid).gid(uid);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let pid = child.id().expect("a just-spawned child has a pid");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let pipe = child.stdout.take().expect("stdout is piped");
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().expect("stdout lines poisoned").push(line);
            }
        });
        Proc {
            label: label.to_owned(),
            child,
            pid,
            stdout,
            log,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where this process's stderr is written.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines poisoned").clone()
    }

    /// The stderr log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for a stdout line that `pick` accepts and return what it made of it.
    pub async fn wait_stdout<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let mut found = None;
        let waited = wait_until(
            timeout,
            &format!("a stdout line from {}", self.label),
            || {
                found = self.stdout_lines().iter().find_map(|l| pick(l));
                found.is_some()
            },
        )
        .await;
        if let Err(e) = waited {
            panic!("{e}; stderr ({}):\n{}", self.log.display(), self.stderr());
        }
        found.expect("found is set when the wait succeeds")
    }

    /// Wait for the JSON stdout line whose `event` field is `event` (our
    /// binaries announce `listening`, `registered`, ... this way) and decode it.
    pub async fn wait_event<T: serde::de::DeserializeOwned>(
        &self,
        event: &str,
        timeout: Duration,
    ) -> T {
        self.wait_stdout(timeout, |line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            if value.get("event")?.as_str()? != event {
                return None;
            }
            serde_json::from_value(value).ok()
        })
        .await
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid as i32), signal).unwrap_or_else(|e| {
            panic!("cannot send {signal} to {} ({}): {e}", self.label, self.pid)
        });
    }

    /// SIGKILL and reap; nothing to do for a process reaped already (its
    /// pid may belong to another process by now).
    pub async fn kill9(&mut self) {
        if self.status.is_some() {
            return;
        }
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(5)).await;
    }

    /// Wait for the process to exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.status = Some(status);
                status
            }
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.label),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}; stderr ({}):\n{}",
                self.label,
                self.log.display(),
                self.stderr()
            ),
        }
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's start-up retry (`etcd::Etcd::launch`) reaps a member that
    /// died (`has_exited`) and then kills what it spawned: that must not
    /// signal the reaped pid (CI saw `cannot send SIGKILL to etcd: ESRCH`).
    #[tokio::test]
    async fn killing_a_process_reaped_already_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut proc = Proc::spawn(
            "true",
            Path::new("/bin/sh"),
            &["-c".to_owned(), "exit 0".to_owned()],
            &[],
            dir.path(),
        );
        crate::wait_until_async(Duration::from_secs(5), "sh to exit", || {
            std::future::ready(proc.has_exited())
        })
        .await
        .unwrap();
        proc.kill9().await;
        assert!(proc.status.is_some_and(|s| s.success()));
    }
}
