//! The key-value checker: the distributed store under membership changes,
//! end to end, with every acknowledged write accounted for.
//!
//! [`run`] starts a fresh etcd, a gateway (route `/kv/` → `app` by
//! consistent hash on the key), and `autoscaler run` (process driver) with
//! `app` pinned at 2 instances, R = `replicas`. Clients write unique values
//! to keys of their own (and now and then delete one) and read them back
//! through the gateway, while the service is scaled 2 → 5, one instance is
//! killed with SIGKILL, and the service is scaled back to 2 (each change
//! through the `autoscaler scale` CLI, each followed by a phase of load).
//! Finally every key is read and compared with its last acknowledged write.
//!
//! A write that failed (any answer but 2xx, or no answer) may or may not have
//! been kept, so until the next acknowledged write a key may hold its last
//! acknowledged value or any value (or deletion) attempted since. A key is
//! **lost** when its final value is none of those; a **stale read** is a
//! read during the run that returned none of those.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng;
use registry::Keys;
use tokio::sync::Mutex;

use crate::autoscaler::scale;
use crate::binaries::{instance_pid, service_instances, wait_ready};
use crate::{Autoscaler, Etcd, Gateway, wait_until_async};

/// What to run.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub clients: usize,
    /// Keys per client.
    pub keys_per_client: usize,
    /// Load time after each membership change settles.
    pub phase: Duration,
    pub replicas: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            clients: 8,
            keys_per_client: 50,
            phase: Duration::from_secs(10),
            replicas: 2,
        }
    }
}

/// What happened.
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    pub ops: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub reads: u64,
    pub stale_reads: u64,
    pub keys: usize,
    pub lost: u64,
    /// Failure reasons with counts.
    pub failures: HashMap<String, u64>,
    /// (phase, seconds it took to reach its instance count).
    pub phases: Vec<(String, f64)>,
    /// Up to 10 examples of lost keys or stale reads.
    pub examples: Vec<String>,
}

impl CheckReport {
    /// The report, ending with the `ops N, acknowledged N, failed N, lost N` line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "phase                              reached in");
        for (phase, secs) in &self.phases {
            let _ = writeln!(out, "  {phase:<32} {secs:>6.2} s");
        }
        let _ = writeln!(
            out,
            "keys {}, reads {}, stale reads {}",
            self.keys, self.reads, self.stale_reads
        );
        let mut reasons: Vec<_> = self.failures.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        for (reason, n) in reasons {
            let _ = writeln!(out, "  failed {n:>6} × {reason}");
        }
        for e in &self.examples {
            let _ = writeln!(out, "  example: {e}");
        }
        let _ = write!(
            out,
            "ops {}, acknowledged {}, failed {}, lost {}",
            self.ops, self.acknowledged, self.failed, self.lost
        );
        out
    }
}

/// The state a key may be in: its last acknowledged value (`None`: absent)
/// and what was attempted since without an acknowledgement.
#[derive(Debug, Default, Clone)]
struct KeyState {
    acked: Option<String>,
    unsure: Vec<Option<String>>,
    written: bool,
}

impl KeyState {
    fn allows(&self, seen: &Option<String>) -> bool {
        *seen == self.acked || self.unsure.contains(seen)
    }
}

#[derive(Default)]
struct Tally {
    ops: u64,
    acknowledged: u64,
    failed: u64,
    reads: u64,
    stale_reads: u64,
    failures: HashMap<String, u64>,
    examples: Vec<String>,
}

/// Run the whole check; see the module doc.
pub async fn run(config: CheckConfig) -> anyhow::Result<CheckReport> {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let keys = Keys::default();
    let route = r#"{"path_prefix":"/kv/","service":"app","policy":"consistent-hash","hash_key":{"from":"path-segment","name":0}}"#;
    client.clone().put(keys.route("kv"), route, None).await?;
    let policy =
        r#"{"service":"app","min":1,"max":8,"metric":"inflight","target":1000,"pinned":2}"#;
    client.clone().put(keys.policy("app"), policy, None).await?;
    let gateway = Gateway::start(&etcd, &[]).await;
    let replicas = config.replicas.to_string();
    let _scaler = Autoscaler::start_with_env(
        &etcd,
        &["--interval", "500ms", "--lease-ttl", "3s"],
        &[("SHOAL_KV_REPLICAS", replicas.as_str())],
    );
    let mut report = CheckReport::default();
    let started = Instant::now();
    wait_ready(&client, "app", 2, Duration::from_secs(30)).await?;
    report
        .phases
        .push(("2 instances ready".into(), started.elapsed().as_secs_f64()));

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let states: Arc<Vec<Mutex<KeyState>>> = Arc::new(
        (0..config.clients * config.keys_per_client)
            .map(|_| Mutex::default())
            .collect(),
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for c in 0..config.clients {
        let (http, states, tally, running) =
            (http.clone(), states.clone(), tally.clone(), running.clone());
        let base = gateway.url("/kv/");
        let per = config.keys_per_client;
        clients.push(tokio::spawn(async move {
            client_loop(c, per, &http, &base, &states, &tally, &running).await;
        }));
    }

    tokio::time::sleep(config.phase).await;
    scale(&etcd, "app", 5).await?;
    let at = Instant::now();
    wait_ready(&client, "app", 5, Duration::from_secs(30)).await?;
    report
        .phases
        .push(("scaled 2 → 5".into(), at.elapsed().as_secs_f64()));
    tokio::time::sleep(config.phase).await;

    let victim = pick_victim(&http, &client).await?;
    kill(Pid::from_raw(victim.1 as i32), Signal::SIGKILL).context("kill -9")?;
    let at = Instant::now();
    wait_until_async(
        Duration::from_secs(30),
        "the killed instance to leave the registry",
        || async {
            !service_instances(&client, "app")
                .await
                .iter()
                .any(|i| i.id == victim.0)
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    wait_ready(&client, "app", 5, Duration::from_secs(30)).await?;
    report.phases.push((
        format!("kill -9 {} → 5 ready", short(&victim.0)),
        at.elapsed().as_secs_f64(),
    ));
    tokio::time::sleep(config.phase).await;

    scale(&etcd, "app", 2).await?;
    let at = Instant::now();
    wait_until_async(Duration::from_secs(60), "2 instances", || async {
        service_instances(&client, "app").await.len() == 2
    })
    .await
    .map_err(anyhow::Error::msg)?;
    report
        .phases
        .push(("scaled 5 → 2".into(), at.elapsed().as_secs_f64()));
    tokio::time::sleep(config.phase).await;

    running.store(false, Ordering::Release);
    for c in clients {
        c.await?;
    }

    // Every key ever written, read once more.
    let base = gateway.url("/kv/");
    let mut lost = 0;
    let mut examples = Vec::new();
    let mut checked = 0;
    for (i, state) in states.iter().enumerate() {
        let state = state.lock().await.clone();
        if !state.written {
            continue;
        }
        checked += 1;
        let key = key_name(i / config.keys_per_client, i % config.keys_per_client);
        let seen = read_final(&http, &base, &key).await?;
        if !state.allows(&seen) {
            lost += 1;
            if examples.len() < 10 {
                examples.push(format!(
                    "{key}: holds {seen:?}, last acknowledged {:?} (unsure {:?})",
                    state.acked, state.unsure
                ));
            }
        }
    }
    let tally = tally.lock().await;
    report.ops = tally.ops;
    report.acknowledged = tally.acknowledged;
    report.failed = tally.failed;
    report.reads = tally.reads;
    report.stale_reads = tally.stale_reads;
    report.failures = tally.failures.clone();
    report.keys = checked;
    report.lost = lost;
    report.examples = tally
        .examples
        .iter()
        .cloned()
        .chain(examples)
        .take(10)
        .collect();
    Ok(report)
}

fn key_name(client: usize, n: usize) -> String {
    format!("c{client}-k{n}")
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

async fn client_loop(
    c: usize,
    per: usize,
    http: &reqwest::Client,
    base: &str,
    states: &[Mutex<KeyState>],
    tally: &Mutex<Tally>,
    running: &AtomicBool,
) {
    let mut n = 0u64;
    while running.load(Ordering::Acquire) {
        let (k, roll) = {
            let mut rng = rand::rng();
            (rng.random_range(0..per), rng.random_range(0..100u32))
        };
        let key = key_name(c, k);
        let url = format!("{base}{key}");
        // One client owns its keys: the state cannot change under us.
        let mut state = states[c * per + k].lock().await;
        n += 1;
        if roll < 45 || !state.written {
            let value = format!("{key}-v{n}");
            let answer = http.put(&url).body(value.clone()).send().await;
            state.written = true;
            let ok = record(tally, "PUT", answer.map(|r| r.status())).await;
            if ok {
                state.acked = Some(value);
                state.unsure.clear();
            } else {
                state.unsure.push(Some(value));
            }
        } else if roll < 50 {
            let answer = http.delete(&url).send().await;
            // 404 means it was already absent: acknowledged as absent.
            let answer = answer.map(|r| {
                if r.status() == 404 {
                    reqwest::StatusCode::NO_CONTENT
                } else {
                    r.status()
                }
            });
            if record(tally, "DELETE", answer).await {
                state.acked = None;
                state.unsure.clear();
            } else {
                state.unsure.push(None);
            }
        } else {
            let seen = match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => r.text().await.ok().map(Some),
                Ok(r) if r.status() == 404 => Some(None),
                Ok(r) => {
                    record(tally, "GET", Ok(r.status())).await;
                    continue;
                }
                Err(e) => {
                    record(tally, "GET", Err(e)).await;
                    continue;
                }
            };
            let mut t = tally.lock().await;
            t.ops += 1;
            t.reads += 1;
            match seen {
                Some(seen) => {
                    t.acknowledged += 1;
                    if !state.allows(&seen) {
                        t.stale_reads += 1;
                        if t.examples.len() < 5 {
                            t.examples.push(format!(
                                "stale read of {key}: {seen:?}, expected {:?} or {:?}",
                                state.acked, state.unsure
                            ));
                        }
                    }
                }
                None => {
                    t.failed += 1;
                    *t.failures.entry("GET: unreadable body".into()).or_default() += 1;
                }
            }
        }
    }
}

/// Count one write; true if acknowledged (2xx).
async fn record(
    tally: &Mutex<Tally>,
    method: &str,
    answer: Result<reqwest::StatusCode, reqwest::Error>,
) -> bool {
    let mut t = tally.lock().await;
    t.ops += 1;
    match answer {
        Ok(status) if status.is_success() => {
            t.acknowledged += 1;
            true
        }
        Ok(status) => {
            t.failed += 1;
            *t.failures.entry(format!("{method}: {status}")).or_default() += 1;
            false
        }
        Err(e) => {
            t.failed += 1;
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "transport"
            };
            *t.failures
                .entry(format!("{method}: {kind} error"))
                .or_default() += 1;
            false
        }
    }
}

async fn read_final(
    http: &reqwest::Client,
    base: &str,
    key: &str,
) -> anyhow::Result<Option<String>> {
    // A final read must get an answer: retry transport errors and 5xx briefly.
    for _ in 0..20 {
        match http.get(format!("{base}{key}")).send().await {
            Ok(r) if r.status() == 200 => return Ok(Some(r.text().await?)),
            Ok(r) if r.status() == 404 => return Ok(None),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    bail!("the final read of {key} got no answer in 5 s")
}

/// A ready instance's id and pid (from its hello line).
async fn pick_victim(
    http: &reqwest::Client,
    client: &etcd_client::Client,
) -> anyhow::Result<(String, u32)> {
    let instances = service_instances(client, "app").await;
    let victim = instances.first().context("no instance to kill")?;
    let pid = instance_pid(http, &victim.addr).await?;
    Ok((victim.id.clone(), pid))
}
