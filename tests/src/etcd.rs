//! A real etcd server for one test: its own temp data dir and free loopback
//! ports. It can be stopped and started again on the same port with its data
//! ([`Etcd::restart`]), or replaced by an empty one ([`Etcd::wipe`]).
//!
//! The binary is `etcd` from PATH (Debian's `etcd-server`) or `SHOAL_ETCD_BIN`.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::Client;
use nix::sys::signal::Signal;
use registry::EtcdArgs;
use tempfile::TempDir;

use crate::binaries::logs_dir;
use crate::process::Proc;
use crate::wait::wait_until_async;

pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    generation: u32,
    proc: Option<Proc>,
}

fn etcd_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SHOAL_ETCD_BIN") {
        return PathBuf::from(path);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = PathBuf::from(dir).join("etcd");
        if candidate.is_file() {
            return candidate;
        }
    }
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if PathBuf::from(candidate).is_file() {
            return candidate.into();
        }
    }
    panic!(
        "etcd not found on PATH; install it with `apt-get install etcd-server` or set SHOAL_ETCD_BIN"
    );
}

impl Etcd {
    /// Start a fresh etcd and wait until it answers.
    pub async fn start() -> Etcd {
        crate::init_logging();
        let mut last_error = String::new();
        // Free ports are found by binding and releasing them; another process may
        // take one in between, so a failed start is retried on new ports.
        for _ in 0..3 {
            let mut etcd = Etcd {
                dir: tempfile::tempdir().expect("temp dir"),
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
                generation: 0,
                proc: None,
            };
            match etcd.launch().await {
                Ok(()) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn args(&self) -> EtcdArgs {
        EtcdArgs::for_endpoint(self.endpoint())
    }

    pub async fn client(&self) -> Client {
        self.args().connect().await.expect("etcd client")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join(format!("data-{}", self.generation))
    }

    async fn launch(&mut self) -> Result<(), String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let args: Vec<String> = [
            "--name",
            "shoal-test",
            "--data-dir",
            &self.data_dir().to_string_lossy(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("shoal-test={peer}"),
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Proc::spawn("etcd", &etcd_binary(), &args, &[], &logs_dir());
        let health = format!("{client}/health");
        let http = reqwest::Client::new();
        let up = wait_until_async(Duration::from_secs(15), "etcd /health", || {
            let http = http.clone();
            let health = health.clone();
            async move {
                match http
                    .get(&health)
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                {
                    Ok(resp) => resp.text().await.is_ok_and(|t| t.contains("\"true\"")),
                    Err(_) => false,
                }
            }
        })
        .await;
        match up {
            Ok(_) => {
                self.proc = Some(proc);
                Ok(())
            }
            Err(e) => {
                let exited = proc.has_exited();
                let log = proc.stderr();
                Err(format!("{e} (exited: {exited}); log:\n{log}"))
            }
        }
    }

    /// Kill etcd (SIGKILL: as abrupt as a crash).
    pub async fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9().await;
        }
    }

    /// Start etcd again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Start a stopped etcd again on the same ports with its data.
    pub async fn start_again(&mut self) {
        assert!(self.proc.is_none(), "etcd is still running");
        if let Err(e) = self.launch().await {
            panic!("etcd did not start again on port {}: {e}", self.client_port);
        }
    }

    /// Replace etcd by an empty one on the same ports: every key and lease is lost.
    pub async fn wipe(&mut self) {
        self.stop().await;
        self.generation += 1;
        self.start_again().await;
    }

    /// Freeze or thaw the server (SIGSTOP / SIGCONT).
    pub fn signal(&self, signal: Signal) {
        self.proc.as_ref().expect("etcd is running").signal(signal);
    }
}
