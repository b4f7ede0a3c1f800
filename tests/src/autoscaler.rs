//! A running `autoscaler run` process (the process driver, or any flags:
//! [`Autoscaler::start_with_args`]), started
//! against a test's etcd. It runs with `--stop-on-exit`, and dropping it
//! sends SIGTERM and waits briefly, so the instances it started do not
//! outlive the test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::binaries::{bin_path, logs_dir, workspace_root};
use crate::etcd::Etcd;
use crate::process::Proc;

/// A running controller.
pub struct Autoscaler {
    pub proc: Proc,
    /// Where its instances' output and pid files go; shared by controllers
    /// started with [`Autoscaler::start_sharing`], so that one adopts what
    /// another started.
    pub instance_logs: Arc<tempfile::TempDir>,
}

/// A fresh directory for instances' logs under `target/test-logs/`, deleted
/// with the last controller using it unless `SHOAL_TEST_KEEP_LOGS` is set;
/// then it stays in `target/test-logs/instances-*` (run with
/// `RUST_LOG=app_server=debug` to see what the instances did).
pub fn instance_logs_dir() -> Arc<tempfile::TempDir> {
    std::fs::create_dir_all(logs_dir()).expect("create target/test-logs");
    let mut dir = tempfile::Builder::new()
        .prefix("instances-")
        .tempdir_in(logs_dir())
        .expect("a directory for the instances' logs");
    dir.disable_cleanup(std::env::var_os("SHOAL_TEST_KEEP_LOGS").is_some());
    Arc::new(dir)
}

impl Autoscaler {
    /// Start `autoscaler run` against `etcd` with `extra` flags (`--interval 500ms`, ...).
    /// Returns at once: tests wait for the effects they need.
    pub fn start(etcd: &Etcd, extra: &[&str]) -> Autoscaler {
        Self::start_with_env(etcd, extra, &[])
    }

    /// [`Autoscaler::start`] with extra environment variables, which its
    /// instances inherit too (e.g. `SHOAL_KV_REPLICAS`).
    pub fn start_with_env(etcd: &Etcd, extra: &[&str], env: &[(&str, &str)]) -> Autoscaler {
        Self::start_sharing(etcd, extra, env, instance_logs_dir())
    }

    /// A controller whose instances' logs and pid files go to `instance_logs`,
    /// as several controllers on one machine share `--log-dir`. It runs in
    /// the workspace's root, as an operator runs it from a checkout, so the
    /// examples' relative paths (`examples/node-hello/server.js`) resolve.
    pub fn start_sharing(
        etcd: &Etcd,
        extra: &[&str],
        env: &[(&str, &str)],
        instance_logs: Arc<tempfile::TempDir>,
    ) -> Autoscaler {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--etcd".into(),
            etcd.endpoint(),
            "--driver".into(),
            "process".into(),
            "--log-dir".into(),
            instance_logs.path().display().to_string(),
            "--stop-on-exit".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let proc = Proc::spawn_in(
            "autoscaler",
            &bin_path("autoscaler"),
            &args,
            &env,
            &logs_dir(),
            &workspace_root(),
        );
        Autoscaler {
            proc,
            instance_logs,
        }
    }

    /// A controller run with exactly `args` after `autoscaler` (another
    /// driver, an etcd the harness did not start), in the workspace's root.
    pub fn start_with_args(args: &[String]) -> Autoscaler {
        let proc = Proc::spawn_in(
            "autoscaler",
            &bin_path("autoscaler"),
            args,
            &[],
            &logs_dir(),
            &workspace_root(),
        );
        Autoscaler {
            proc,
            instance_logs: instance_logs_dir(),
        }
    }

    /// SIGTERM, then wait for a clean exit (it stops its instances first).
    pub async fn stop(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.proc.signal(Signal::SIGTERM);
        self.proc.wait_exit(timeout).await
    }
}

/// Run `autoscaler --etcd ENDPOINT ARGS...` (the operator's CLI) to completion.
pub async fn autoscaler_cli(etcd: &Etcd, args: &[&str]) -> std::process::Output {
    autoscaler_cli_at(&etcd.endpoint(), args).await
}

/// Run `autoscaler --etcd ENDPOINT ARGS...` against any etcd endpoint.
pub async fn autoscaler_cli_at(endpoint: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin_path("autoscaler"))
        .arg("--etcd")
        .arg(endpoint)
        .args(args)
        .output()
        .await
        .expect("run autoscaler")
}

/// `autoscaler scale SERVICE N`, the operator's way; the CLI's stderr on failure.
pub async fn scale(etcd: &Etcd, service: &str, n: usize) -> anyhow::Result<()> {
    let output = autoscaler_cli(etcd, &["scale", service, &n.to_string()]).await;
    if !output.status.success() {
        anyhow::bail!(
            "autoscaler scale {service} {n} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// How many controllers campaign in the election (each holds a key under
/// `{prefix}/autoscaler/leader/`, the leader's the oldest); 0 if etcd does
/// not answer.
pub async fn election_candidates(client: &etcd_client::Client) -> usize {
    let prefix = format!("{}/", registry::Keys::default().leader());
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let mut client = client.clone();
    match tokio::time::timeout(Duration::from_secs(2), client.get(prefix, Some(options))).await {
        Ok(Ok(resp)) => resp.count() as usize,
        _ => 0,
    }
}

/// The leases of the controllers' election keys, the leader's first
/// (oldest key first); `None` if etcd does not answer within 2 s.
pub async fn election_leases(client: &etcd_client::Client) -> Option<Vec<i64>> {
    let prefix = format!("{}/", registry::Keys::default().leader());
    let options = etcd_client::GetOptions::new().with_prefix().with_sort(
        etcd_client::SortTarget::Create,
        etcd_client::SortOrder::Ascend,
    );
    let mut client = client.clone();
    let get = client.get(prefix, Some(options));
    let resp = tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()?
        .ok()?;
    Some(resp.kvs().iter().map(|kv| kv.lease()).collect())
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        if self.proc.has_exited() {
            return;
        }
        // A test that panicked: ask it to stop its instances, briefly.
        self.proc.signal(Signal::SIGTERM);
        let started = Instant::now();
        while !self.proc.has_exited() && started.elapsed() < Duration::from_secs(5) {
            // Polling the exit in `drop`, which cannot await `wait_until`.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
