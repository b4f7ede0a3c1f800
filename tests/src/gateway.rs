//! A running `gateway` process: proxy and admin listeners on free loopback
//! ports, started against a test's etcd, and replaced on the same ports;
//! and [`TableWatch`], which follows its routing table through an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
        format!("http://{}{path}", self.admin_addr)
    }
}

/// Polls a gateway's `/api/v1/services` while an event happens: the fewest
/// routable (ready) instances of one service seen, and the most shown as
/// unconfirmed.
pub struct TableWatch {
    stop: Arc<AtomicBool>,
    min_ready: Arc<AtomicUsize>,
    max_unconfirmed: Arc<AtomicUsize>,
    polls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`TableWatch`] saw.
#[derive(Debug, Clone, Copy)]
pub struct TableSeen {
    pub min_ready: usize,
    pub max_unconfirmed: usize,
    /// Answers read (an unanswered poll counts nothing).
    pub polls: usize,
}

impl TableWatch {
    /// Start polling `gateway`'s table for `service` every 20 ms.
    pub fn start(http: &reqwest::Client, gateway: &Gateway, service: &str) -> TableWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
        let max_unconfirmed = Arc::new(AtomicUsize::new(0));
        let polls = Arc::new(AtomicUsize::new(0));
        let url = gateway.admin_url("/api/v1/services");
        let task = tokio::spawn({
            let (http, stop, service) = (http.clone(), stop.clone(), service.to_owned());
            let (min_ready, max_unconfirmed, polls) =
                (min_ready.clone(), max_unconfirmed.clone(), polls.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = http.get(&url).timeout(Duration::from_secs(2)).send().await;
                    if let Ok(services) = answer
                        && let Ok(services) = services.json::<serde_json::Value>().await
                    {
                        let this = services
                            .as_array()
                            .and_then(|all| all.iter().find(|s| s["name"] == service.as_str()))
                            .cloned()
                            .unwrap_or_default();
                        let count = |field: &str| this[field].as_u64().unwrap_or(0) as usize;
                        min_ready.fetch_min(count("ready_instances"), Ordering::Relaxed);
                        max_unconfirmed
                            .fetch_max(count("unconfirmed_instances"), Ordering::Relaxed);
                        polls.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        TableWatch {
            stop,
            min_ready,
            max_unconfirmed,
            polls,
            task,
        }
    }

    /// Stop polling; what was seen.
    pub async fn stop(self) -> TableSeen {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the table watch panicked");
        TableSeen {
            min_ready: self.min_ready.load(Ordering::Relaxed),
            max_unconfirmed: self.max_unconfirmed.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
        }
    }
}
