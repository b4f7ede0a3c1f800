//! Shoal's own binaries, as built by `cargo build --workspace --bins`, and
//! typed launchers for them.
//!
//! Binaries are looked up next to the test executable's `target/<profile>/`
//! directory (or in `SHOAL_BIN_DIR`). They must be built before the tests run;
//! `./scripts/test` does that.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use registry::Keys;
use serde::Deserialize;

use crate::etcd::Etcd;
use crate::process::Proc;

fn target_profile_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SHOAL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/it-<hash>  →  target/<profile>
    let exe = std::env::current_exe().expect("current test executable");
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// Path of one of our binaries; panics with the fix if it has not been built.
pub fn bin_path(name: &str) -> PathBuf {
    let path = target_profile_dir().join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}; build it first with `cargo build --workspace --bins` (./scripts/test does)",
        path.display()
    );
    path
}

/// The workspace's root directory (where `examples/` and `scripts/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// Where process logs go: `target/test-logs/`, kept after the run.
pub fn logs_dir() -> PathBuf {
    target_profile_dir()
        .parent()
        .map(|target| target.join("test-logs"))
        .unwrap_or_else(|| std::env::temp_dir().join("shoal-test-logs"))
}

/// Run `binary ARGS...` to completion, within `within`: a hang is a
/// failure of its own (the process is killed and the test panics).
pub async fn run_to_exit<S: AsRef<std::ffi::OsStr>>(
    binary: &str,
    args: &[S],
    within: std::time::Duration,
) -> Output {
    let out = tokio::time::timeout(
        within,
        tokio::process::Command::new(bin_path(binary))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| {
        let args: Vec<_> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        panic!("{binary} {args:?} did not exit within {within:?}")
    });
    out.unwrap_or_else(|e| panic!("cannot run {binary}: {e}"))
}

/// Run `registry ARGS...` against `etcd` to completion.
pub async fn registry_cli(etcd: &Etcd, args: &[&str]) -> Output {
    tokio::process::Command::new(bin_path("registry"))
        .arg("--etcd")
        .arg(etcd.endpoint())
        .args(args)
        .output()
        .await
        .expect("run registry")
}

/// Options for [`AppServer::start`]; `Default` is a fast-to-test configuration.
#[derive(Debug, Clone)]
pub struct AppServerOptions {
    pub service: String,
    pub lease_ttl: Duration,
    pub drain_grace: Duration,
    pub extra: Vec<String>,
}

impl Default for AppServerOptions {
    fn default() -> Self {
        AppServerOptions {
            service: "app".into(),
            lease_ttl: Duration::from_secs(3),
            drain_grace: Duration::from_millis(300),
            extra: Vec::new(),
        }
    }
}

impl AppServerOptions {
    /// The default options for an instance of `service`.
    pub fn for_service(service: &str) -> Self {
        AppServerOptions {
            service: service.to_owned(),
            ..Default::default()
        }
    }
}

/// The line app-server prints on stdout once it listens.
#[derive(Debug, Deserialize)]
struct Listening {
    addr: String,
    id: String,
}

/// A running `app-server` process.
pub struct AppServer {
    pub proc: Proc,
    pub addr: String,
    pub id: String,
    pub service: String,
}

impl AppServer {
    /// Start an app server against `etcd` and wait until it listens (not
    /// until it is registered: tests measure that themselves).
    pub async fn start(etcd: &Etcd, options: AppServerOptions) -> AppServer {
        let program = bin_path("app-server");
        AppServer::launch(&program, Vec::new(), etcd.endpoint(), options).await
    }

    /// Start an app server inside network namespace `netns`, listening on
    /// its address there and reaching etcd at `etcd_endpoint` (see
    /// [`Etcd::start_also_on`]), and wait until it listens.
    pub async fn start_in_netns(
        netns: &crate::netns::NetNs,
        etcd_endpoint: String,
        mut options: AppServerOptions,
    ) -> AppServer {
        let (program, mut prefix) = netns.exec_prefix();
        prefix.push(bin_path("app-server").display().to_string());
        options.extra.push("--listen".into());
        options.extra.push(format!("{}:0", netns.ns_ip));
        AppServer::launch(
            std::path::Path::new(&program),
            prefix,
            etcd_endpoint,
            options,
        )
        .await
    }

    async fn launch(
        program: &std::path::Path,
        mut args: Vec<String>,
        etcd_endpoint: String,
        options: AppServerOptions,
    ) -> AppServer {
        args.extend([
            "--etcd".to_owned(),
            etcd_endpoint,
            "--service".to_owned(),
            options.service.clone(),
            "--lease-ttl".to_owned(),
            format!("{}ms", options.lease_ttl.as_millis()),
            "--drain-grace".to_owned(),
            format!("{}ms", options.drain_grace.as_millis()),
        ]);
        args.extend(options.extra);
        let proc = Proc::spawn(
            "app-server",
            program,
            &args,
            &[],
            &crate::binaries::logs_dir(),
        );
        let listening: Listening = proc.wait_event("listening", Duration::from_secs(10)).await;
        AppServer {
            proc,
            addr: listening.addr,
            id: listening.id,
            service: options.service,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// This instance's registry key under the default prefix.
    pub fn key(&self) -> String {
        Keys::default().instance(&self.service, &self.id)
    }

    /// Wait until `/readyz` says ready: registered on a lease, so its
    /// key-value store coordinates (before that it answers 503 `lease_lost`;
    /// for its join delay after, it holds requests for its keys).
    pub async fn wait_ready(&self, http: &reqwest::Client) {
        crate::wait_until_async(Duration::from_secs(10), "the app server ready", || async {
            readyz(http, &self.addr)
                .await
                .is_some_and(|(code, _)| code == 200)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Every registered instance of `service` that decodes; none if etcd does not answer.
pub async fn service_instances(
    client: &etcd_client::Client,
    service: &str,
) -> Vec<registry::Instance> {
    use registry::RegistryValue;
    let keys = Keys::default();
    let options = etcd_client::GetOptions::new().with_prefix();
    let mut client = client.clone();
    let listed = tokio::time::timeout(
        Duration::from_secs(2),
        client.get(keys.service_instances(service), Some(options)),
    )
    .await;
    let Ok(Ok(resp)) = listed else {
        return Vec::new();
    };
    resp.kvs()
        .iter()
        .filter_map(|kv| {
            registry::Instance::decode(&keys, &String::from_utf8_lossy(kv.key()), kv.value()).ok()
        })
        .collect()
}

/// Wait until `service` has exactly `n` instances, all ready.
pub async fn wait_ready(
    client: &etcd_client::Client,
    service: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    crate::wait_until_async(
        timeout,
        &format!("{n} ready instances of {service}"),
        || async {
            let all = service_instances(client, service).await;
            all.len() == n
                && all
                    .iter()
                    .all(|i| i.state == registry::InstanceState::Ready)
        },
    )
    .await
    .map(drop)
    .map_err(anyhow::Error::msg)
}

/// Wait until every one of `servers` is registered and ready (up to 10 s each).
pub async fn wait_instances_ready(
    client: &etcd_client::Client,
    servers: &[AppServer],
) -> anyhow::Result<()> {
    for server in servers {
        let key = server.key();
        crate::wait_until_async(
            Duration::from_secs(10),
            &format!("{} ({}) registered and ready", server.id, server.service),
            || async {
                instance_in_registry(client, &key)
                    .await
                    .is_some_and(|i| i.state == registry::InstanceState::Ready)
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Read an instance's registry entry, if present and decodable.
pub async fn instance_in_registry(
    client: &etcd_client::Client,
    key: &str,
) -> Option<registry::Instance> {
    use registry::RegistryValue;
    let mut client = client.clone();
    let resp = tokio::time::timeout(Duration::from_secs(2), client.get(key, None))
        .await
        .ok()?
        .ok()?;
    let kv = resp.kvs().first()?;
    registry::Instance::decode(&Keys::default(), key, kv.value()).ok()
}

/// The pid of the app server listening on `addr`, from its hello line
/// (`Hello from instance ID (pid N)`).
pub async fn instance_pid(http: &reqwest::Client, addr: &str) -> anyhow::Result<u32> {
    use anyhow::Context;
    let hello = http
        .get(format!("http://{addr}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    hello
        .rsplit("(pid ")
        .next()
        .and_then(|s| s.trim_end_matches(')').trim().parse().ok())
        .with_context(|| format!("no pid in {hello:?}"))
}

/// `/readyz` of the app server at `addr`: (status code, its `status` field:
/// `ready`, `starting`, `draining`, `fenced`); `None` without an answer in 1 s.
pub async fn readyz(http: &reqwest::Client, addr: &str) -> Option<(u16, String)> {
    let resp = http
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    let code = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.ok()?;
    Some((code, body["status"].as_str()?.to_owned()))
}
