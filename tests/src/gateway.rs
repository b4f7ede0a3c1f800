//! A running `gateway` process: proxy and admin listeners on free loopback
//! ports, started against a test's etcd.

use std::time::Duration;

use serde::Deserialize;

use crate::binaries::{bin_path, logs_dir};
use crate::etcd::Etcd;
use crate::process::Proc;

/// The line the gateway prints on stdout once both listeners are bound.
#[derive(Debug, Deserialize)]
struct Listening {
    addr: String,
    admin_addr: String,
    id: String,
}

/// A running gateway; SIGKILLed on drop.
pub struct Gateway {
    pub proc: Proc,
    /// The proxy listener, `127.0.0.1:port`.
    pub addr: String,
    /// The admin listener, `127.0.0.1:port`.
    pub admin_addr: String,
    /// This gateway's id in the registry.
    pub id: String,
}

impl Gateway {
    /// Start a gateway against `etcd` with `extra` flags after the listeners'
    /// (`--default-policy round-robin`, `--hold-timeout 1s`, ...), and wait
    /// until it listens. Not until it has read the registry: tests wait for
    /// the routing they need themselves.
    pub async fn start(etcd: &Etcd, extra: &[&str]) -> Gateway {
        let mut args: Vec<String> = [
            "--etcd",
            &etcd.endpoint(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn("gateway", &bin_path("gateway"), &args, &[], &logs_dir());
        let listening: Listening = proc.wait_event("listening", Duration::from_secs(10)).await;
        Gateway {
            proc,
            addr: listening.addr,
            admin_addr: listening.admin_addr,
            id: listening.id,
        }
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
        format!("http://{}{path}", self.admin_addr)
    }
}
