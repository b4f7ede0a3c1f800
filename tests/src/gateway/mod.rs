//! A running `gateway` process: proxy and admin listeners on free loopback
//! ports, started against a test's etcd, and replaced on the same ports.
//!
//! - [`admin`]: what its admin API says about a service's instances and the
//!   registry connection, and waits on it.
//! - [`table_watch`]: [`TableWatch`], which follows its routing table
//!   through an event.

mod admin;
mod table_watch;

use std::time::Duration;

use serde::Deserialize;

use crate::binaries::{bin_path, logs_dir};
use crate::etcd::Etcd;
use crate::process::Proc;

pub use admin::AdminApi;
pub use table_watch::{TableSeen, TableWatch};

/// The line the gateway prints on stdout once both listeners are bound.
#[derive(Debug, Deserialize)]
struct Listening {
    addr: String,
    admin_addr: String,
    #[serde(default)]
    tls_addr: Option<String>,
    id: String,
}

/// A running gateway; SIGKILLed on drop.
pub struct Gateway {
    pub proc: Proc,
    /// The proxy listener, `127.0.0.1:port`.
    pub addr: String,
    /// The admin listener, `127.0.0.1:port`.
    pub admin_addr: String,
    /// The `--tls-listen` listener, when started with one.
    pub tls_addr: Option<String>,
    /// This gateway's id in the registry.
    pub id: String,
    /// Its flags after the listeners', for a replacement.
    extra: Vec<String>,
    etcd: String,
}

impl Gateway {
    /// Start a gateway against `etcd` with `extra` flags after the listeners'
    /// (`--default-policy round-robin`, `--hold-timeout 1s`, ...), and wait
    /// until it listens. Not until it has read the registry: tests wait for
    /// the routing they need themselves.
    pub async fn start(etcd: &Etcd, extra: &[&str]) -> Gateway {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Gateway::launch(etcd.endpoint(), "127.0.0.1:0", "127.0.0.1:0", extra).await
    }

    async fn launch(etcd: String, listen: &str, admin_listen: &str, extra: Vec<String>) -> Gateway {
        let mut args: Vec<String> = [
            "--etcd",
            &etcd,
            "--listen",
            listen,
            "--admin-listen",
            admin_listen,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let proc = Proc::spawn("gateway", &bin_path("gateway"), &args, &[], &logs_dir());
        let listening: Listening = proc.wait_event("listening", Duration::from_secs(10)).await;
        Gateway {
            proc,
            addr: listening.addr,
            admin_addr: listening.admin_addr,
            tls_addr: listening.tls_addr,
            id: listening.id,
            extra,
            etcd,
        }
    }

    /// Replace this gateway without refusing a connection: start a new one
    /// on the same two ports (both need `--reuse-port`, which this one must
    /// have been started with), and once it listens (it has read the
    /// registry), SIGTERM the old one and wait up to `timeout` for it to
    /// exit. Returns the old process's exit status.
    pub async fn replace(&mut self, timeout: Duration) -> std::process::ExitStatus {
        assert!(
            self.extra.iter().any(|flag| flag == "--reuse-port"),
            "Gateway::replace needs a gateway started with --reuse-port"
        );
        let new = Gateway::launch(
            self.etcd.clone(),
            &self.addr,
            &self.admin_addr,
            self.extra.clone(),
        )
        .await;
        let mut old = std::mem::replace(self, new);
        old.proc.signal(nix::sys::signal::Signal::SIGTERM);
        old.proc.wait_exit(timeout).await
    }

    /// `http://{proxy addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Wait until `GET {path}` through this gateway answers 200 (its routing
    /// table lists a ready instance for it); how long that took.
    pub async fn wait_answering(
        &self,
        http: &reqwest::Client,
        path: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let url = self.url(path);
        crate::wait_until_async(
            timeout,
            &format!("GET {path} through the gateway"),
            || async { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) },
        )
        .await
    }

    /// `http://{admin addr}{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        self.admin().url(path)
    }

    /// Its admin API's reads ([`AdminApi`]).
    pub fn admin(&self) -> AdminApi {
        AdminApi::at(&self.admin_addr)
    }
}
