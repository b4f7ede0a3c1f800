//! The fault suite: each fault on a fresh platform under steady load, with
//! requests failed, acknowledged key-value writes lost, and time to recover.
//!
//! A platform ([`Platform`]) is a fresh etcd, a gateway (route `/kv/` →
//! `app` by consistent hash on the key) and `autoscaler run` (process driver)
//! with `app` pinned at [`FaultsConfig::instances`] instances. Under load
//! ([`under_load`]: GET `/` clients from [`crate::load`] and key-value
//! clients from [`crate::kv_check`], all through the gateway) a fault is
//! injected, recovery is waited for by polling, the load runs on for
//! [`FaultsConfig::steady`], and every key ever written is read back and
//! compared with its last acknowledged write.
//!
//! **Steady** ([`Platform::wait_steady`]), what "recovered" builds on: the
//! gateway says it is connected to etcd, exactly the expected instances of
//! `app` are registered and ready, the gateway lists each as ready, and a
//! change written to etcd now (a probe instance) reaches the gateway's table.
//!
//! One file per fault; [`FAULTS`] lists them by the name `FAULTS=` takes.
//! "Recovered" is defined in each fault's module doc and in bench/README.md.

pub mod cut_off;
pub mod etcd_restart;
pub mod etcd_unreachable;
pub mod etcd_wiped;
pub mod gateway_restart;
pub mod instance_frozen;
pub mod leader_killed;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use registry::{Instance, InstanceState, Keys};

pub use crate::binaries::readyz;
use crate::binaries::service_instances;
use crate::kv_check::KvClients;
use crate::{Autoscaler, Etcd, Gateway, Load, wait_until_async};

/// Every fault, by the name `FAULTS=` takes, in the order they run.
pub const FAULTS: &[&str] = &[
    "etcd-restart",
    "etcd-stopped",
    "etcd-frozen",
    "instance-frozen",
    "gateway-restart",
    "leader-killed",
    "cut-off",
    "etcd-wiped",
];

/// What to run.
#[derive(Debug, Clone)]
pub struct FaultsConfig {
    /// Instances of `app` the autoscaler keeps (pinned).
    pub instances: usize,
    /// Clients sending GET `/` back to back.
    pub get_clients: usize,
    /// Key-value clients, and keys each.
    pub kv_clients: usize,
    pub keys_per_client: usize,
    /// Load before each fault and after recovery.
    pub steady: Duration,
    /// How long etcd is unreachable (stopped or frozen).
    pub outage: Duration,
    /// How long an instance stays frozen.
    pub freeze: Duration,
    /// Lease TTL of the instances and of the autoscaler's leadership.
    pub lease_ttl: Duration,
    /// Longest wait for any recovery before the fault is reported as not recovered.
    pub recover_timeout: Duration,
    /// The faults to run (names from [`FAULTS`]).
    pub faults: Vec<String>,
}

impl Default for FaultsConfig {
    fn default() -> Self {
        FaultsConfig {
            instances: 3,
            get_clients: 4,
            kv_clients: 4,
            keys_per_client: 25,
            steady: Duration::from_secs(3),
            outage: Duration::from_secs(30),
            freeze: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(3),
            recover_timeout: Duration::from_secs(40),
            faults: FAULTS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// One row of the table.
#[derive(Debug, Default, Clone)]
pub struct FaultRow {
    pub fault: String,
    /// GET `/` sent, and failed.
    pub gets: u64,
    pub failed_gets: u64,
    /// Key-value operations sent (reads and writes), writes, and failed.
    pub kv_ops: u64,
    pub kv_writes: u64,
    pub failed_kv_writes: u64,
    pub failed_kv_reads: u64,
    /// Keys written, and keys whose last acknowledged write is gone.
    pub keys: usize,
    pub keys_lost: u64,
    pub stale_reads: u64,
    /// Time to recover (see the fault's definition); `None`: it did not.
    pub recovered: Option<Duration>,
    /// Timings and observations.
    pub notes: String,
    /// Failure reasons with counts, and lost keys.
    pub details: Vec<String>,
}

/// The whole run.
#[derive(Debug, Default, Clone)]
pub struct FaultsReport {
    pub rows: Vec<FaultRow>,
    /// Faults that could not run: (name, why).
    pub errors: Vec<(String, String)>,
}

impl FaultsReport {
    /// Acknowledged key-value writes lost over every fault.
    pub fn lost(&self) -> u64 {
        self.rows.iter().map(|r| r.keys_lost).sum()
    }

    /// The table (Markdown), the details under it, and a last summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| fault | requests | failed (GET / KV writes) | KV keys lost | time to recover | notes |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---:|---|");
        for r in &self.rows {
            let recovered = r.recovered.map_or("not recovered".to_owned(), |d| {
                format!("{:.2} s", d.as_secs_f64())
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} / {} | {} of {} | {} | {} |",
                r.fault,
                r.gets + r.kv_ops,
                ratio(r.failed_gets, r.gets),
                ratio(r.failed_kv_writes, r.kv_writes),
                r.keys_lost,
                r.keys,
                recovered,
                r.notes
            );
        }
        for r in &self.rows {
            for d in &r.details {
                let _ = writeln!(out, "  {}: {d}", r.fault);
            }
        }
        for (name, why) in &self.errors {
            let _ = writeln!(out, "  {name}: COULD NOT RUN: {why}");
        }
        let _ = write!(
            out,
            "faults {}, could not run {}, requests {}, failed GET {}, failed KV writes {}, KV keys lost {}",
            self.rows.len(),
            self.errors.len(),
            self.rows.iter().map(|r| r.gets + r.kv_ops).sum::<u64>(),
            self.rows.iter().map(|r| r.failed_gets).sum::<u64>(),
            self.rows.iter().map(|r| r.failed_kv_writes).sum::<u64>(),
            self.lost()
        );
        out
    }
}

fn ratio(failed: u64, of: u64) -> String {
    format!("{failed}/{of}")
}

/// Run the faults `config.faults` names, each on a fresh platform.
pub async fn run(config: &FaultsConfig) -> anyhow::Result<FaultsReport> {
    for name in &config.faults {
        if !FAULTS.contains(&name.as_str()) {
            bail!("unknown fault `{name}`; known: {}", FAULTS.join(","));
        }
    }
    let mut report = FaultsReport::default();
    for name in FAULTS
        .iter()
        .filter(|f| config.faults.iter().any(|n| n == *f))
    {
        eprintln!("faults: {name} ...");
        let row = match *name {
            "etcd-restart" => etcd_restart::run(config).await,
            "etcd-stopped" => etcd_unreachable::run(config, etcd_unreachable::How::Stopped).await,
            "etcd-frozen" => etcd_unreachable::run(config, etcd_unreachable::How::Frozen).await,
            "instance-frozen" => instance_frozen::run(config).await,
            "gateway-restart" => gateway_restart::run(config).await,
            "leader-killed" => leader_killed::run(config).await,
            "cut-off" => cut_off::run(config).await,
            "etcd-wiped" => etcd_wiped::run(config).await,
            other => unreachable!("{other} is in FAULTS"),
        };
        match row {
            Ok(row) => {
                eprintln!(
                    "faults: {name}: {} GET failed, {} KV writes failed, {} keys lost; {}",
                    row.failed_gets, row.failed_kv_writes, row.keys_lost, row.notes
                );
                report.rows.push(row);
            }
            Err(e) => {
                eprintln!("faults: {name} could not run: {e:#}");
                report.errors.push((name.to_string(), format!("{e:#}")));
            }
        }
    }
    Ok(report)
}

/// A fresh platform: etcd, a gateway and autoscaler(s) keeping `app` at
/// `config.instances` ready instances. Instances it did not start and that
/// outlive their controller (after a kill -9) are listed in `strays` and
/// killed on drop.
pub struct Platform {
    pub etcd: Etcd,
    pub client: etcd_client::Client,
    pub gateway: Gateway,
    pub autoscalers: Vec<Autoscaler>,
    pub http: reqwest::Client,
    pub instances: usize,
    pub lease_ttl: Duration,
    pub recover_timeout: Duration,
    /// Pids to SIGKILL on drop.
    pub strays: Vec<u32>,
}

/// The service of the probe instance [`Platform::gateway_watch_live`] writes.
const PROBE_SERVICE: &str = "faults-probe";

/// The `/kv/` route: consistent hash on the key (the first path segment).
const KV_ROUTE: &str = r#"{"path_prefix":"/kv/","service":"app","policy":"consistent-hash","hash_key":{"from":"path-segment","name":0}}"#;

impl Platform {
    /// Start everything with `controllers` autoscalers (ids `controller-0`,
    /// ...) and etcd also listening on `etcd_also_on`; returns once every
    /// instance is ready and the gateway routes to each.
    pub async fn start(
        config: &FaultsConfig,
        controllers: usize,
        etcd_also_on: Option<Ipv4Addr>,
    ) -> anyhow::Result<Platform> {
        let etcd = match etcd_also_on {
            Some(ip) => Etcd::start_also_on(ip).await,
            None => Etcd::start().await,
        };
        let client = etcd.client().await;
        // --reuse-port: the gateway-restart fault replaces it in place.
        // (Not --try-timeout: see bench/README.md, "instance frozen".)
        let gateway = Gateway::start(&etcd, &["--reuse-port"]).await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut platform = Platform {
            etcd,
            client,
            gateway,
            autoscalers: Vec::new(),
            http,
            instances: config.instances,
            lease_ttl: config.lease_ttl,
            recover_timeout: config.recover_timeout,
            strays: Vec::new(),
        };
        platform.write_config().await?;
        let ttl = format!("{}ms", config.lease_ttl.as_millis());
        for i in 0..controllers {
            let id = format!("controller-{i}");
            platform.autoscalers.push(Autoscaler::start(
                &platform.etcd,
                &["--interval", "500ms", "--lease-ttl", &ttl, "--id", &id],
            ));
        }
        platform
            .wait_recovered(Duration::from_secs(60))
            .await
            .context("the platform did not come up")?;
        Ok(platform)
    }

    /// The operator's configuration: the `/kv/` route and `app`'s policy.
    pub async fn write_config(&self) -> anyhow::Result<()> {
        let keys = Keys::default();
        let policy = format!(
            r#"{{"service":"app","min":1,"max":8,"metric":"inflight","target":1000,"pinned":{}}}"#,
            self.instances
        );
        let mut client = self.client.clone();
        client.put(keys.route("kv"), KV_ROUTE, None).await?;
        client.put(keys.policy("app"), policy, None).await?;
        Ok(())
    }

    /// Ids of the instances of `app` the gateway lists as `ready` (not
    /// ejected, not unconfirmed); `None` if its admin API does not answer.
    pub async fn gateway_ready(&self) -> Option<Vec<String>> {
        let detail = self.gateway_instances().await?;
        Some(
            detail
                .iter()
                .filter(|i| i["state"] == "ready")
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// Ids of the instances of `app` the gateway routes to: listed `ready`,
    /// or `unconfirmed` (left the registry while ready, still routed until
    /// an attempt fails or its grace ends); `None` if the admin API does not
    /// answer.
    pub async fn gateway_routable(&self) -> Option<Vec<String>> {
        let detail = self.gateway_instances().await?;
        Some(
            detail
                .iter()
                .filter(|i| i["state"] == "ready" || i["state"] == "unconfirmed")
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// The gateway's view of every instance of `app` (`/api/v1/services/app`).
    pub async fn gateway_instances(&self) -> Option<Vec<serde_json::Value>> {
        let url = self.gateway.admin_url("/api/v1/services/app");
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let detail: serde_json::Value = resp.json().await.ok()?;
        detail["instances"].as_array().cloned()
    }

    /// Whether the gateway says etcd is connected (`/healthz`).
    pub async fn gateway_connected(&self) -> bool {
        let resp = self
            .http
            .get(self.gateway.admin_url("/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match resp {
            Ok(resp) => resp
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["registry"] == "connected"),
            Err(_) => false,
        }
    }

    /// The steady state: the gateway says it is connected to etcd, exactly
    /// `instances` instances of `app` are registered, all ready, and the
    /// gateway lists each of them as ready.
    pub async fn is_recovered(&self) -> bool {
        let registered = service_instances(&self.client, "app").await;
        if registered.len() != self.instances
            || registered.iter().any(|i| i.state != InstanceState::Ready)
        {
            return false;
        }
        let Some(routed) = self.gateway_ready().await else {
            return false;
        };
        registered.iter().all(|i| routed.contains(&i.id)) && self.gateway_connected().await
    }

    /// Whether a change written to etcd now reaches the gateway's table: a
    /// probe instance of service `faults-probe` (no lease, an address
    /// nothing listens on, never sent a request) is put, waited for in
    /// `/api/v1/services/faults-probe` for up to `timeout`, and deleted.
    pub async fn gateway_watch_live(&self, timeout: Duration) -> bool {
        let mut probe = Instance::new(PROBE_SERVICE, "127.0.0.1:9".to_owned());
        probe.state = InstanceState::Ready;
        let key = Keys::default().instance(PROBE_SERVICE, &probe.id);
        let mut client = self.client.clone();
        let put = tokio::time::timeout(
            Duration::from_secs(2),
            client.put(key.as_str(), probe.to_json(), None),
        )
        .await;
        if !matches!(put, Ok(Ok(_))) {
            return false;
        }
        let url = self
            .gateway
            .admin_url(&format!("/api/v1/services/{PROBE_SERVICE}"));
        let seen = time_until(timeout, || async {
            let resp = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            match resp {
                Ok(resp) => resp.json::<serde_json::Value>().await.is_ok_and(|v| {
                    v["instances"]
                        .as_array()
                        .is_some_and(|all| all.iter().any(|i| i["id"] == probe.id.as_str()))
                }),
                Err(_) => false,
            }
        })
        .await
        .is_some();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.delete(key, None)).await;
        seen
    }

    /// Wait for the steady state ([`Platform::is_recovered`]) and then for a
    /// registry change to reach the gateway ([`Platform::gateway_watch_live`]),
    /// retrying both until `recover_timeout`; how long it took in all.
    pub async fn wait_steady(&self) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let left = self.recover_timeout.checked_sub(started.elapsed())?;
            time_until(left, || self.is_recovered()).await?;
            let left = self.recover_timeout.checked_sub(started.elapsed())?;
            if self
                .gateway_watch_live(left.min(Duration::from_secs(5)))
                .await
            {
                return Some(started.elapsed());
            }
        }
    }

    /// Poll [`Platform::is_recovered`]; how long it took.
    pub async fn wait_recovered(&self, timeout: Duration) -> anyhow::Result<Duration> {
        match wait_until_async(timeout, "the steady state", || self.is_recovered()).await {
            Ok(took) => Ok(took),
            Err(e) => bail!("{e}: {}", self.describe().await),
        }
    }

    /// What the registry and the gateway hold, for an error message.
    pub async fn describe(&self) -> String {
        let registered: Vec<String> = service_instances(&self.client, "app")
            .await
            .iter()
            .map(|i| format!("{} {:?}", short(&i.id), i.state))
            .collect();
        let routed: Vec<String> = self
            .gateway_instances()
            .await
            .unwrap_or_default()
            .iter()
            .map(|i| format!("{} {}", short(i["id"].as_str().unwrap_or("?")), i["state"]))
            .collect();
        format!(
            "registered {registered:?}, gateway lists {routed:?}, gateway connected {}",
            self.gateway_connected().await
        )
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for pid in &self.strays {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

/// The first 8 characters of an id.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// What a fault reports besides the load's counts.
pub struct Outcome {
    pub recovered: Option<Duration>,
    pub notes: String,
}

/// Run `fault` under load on `platform`: load for `config.steady`, the
/// fault (which waits for its own recovery), load for `config.steady`
/// more, then every key read back. The row is named `name`.
pub async fn under_load(
    name: &str,
    config: &FaultsConfig,
    platform: &mut Platform,
    fault: impl AsyncFnOnce(&mut Platform) -> anyhow::Result<Outcome>,
) -> anyhow::Result<FaultRow> {
    let http = platform.http.clone();
    let kv_base = platform.gateway.url("/kv/");
    let gets = Load::start(&http, &platform.gateway.url("/"), config.get_clients);
    let mut kv = KvClients::start(&http, &kv_base, config.kv_clients, config.keys_per_client);
    tokio::time::sleep(config.steady).await;
    let outcome = fault(platform).await;
    if outcome.is_ok() {
        tokio::time::sleep(config.steady).await;
    }
    let load = gets.stop().await;
    let tally = kv.stop().await?;
    let outcome = outcome?;
    // The gateway may have moved (a restart keeps its port, so the URL holds).
    let verdict = kv.verify(&http, &kv_base).await?;

    let mut details = Vec::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for failure in &load.failures {
        *reasons
            .entry(format!("GET /: {}", reason(failure)))
            .or_default() += 1;
    }
    for (reason, n) in &tally.failures {
        *reasons.entry(format!("KV {reason}")).or_default() += n;
    }
    for (reason, n) in reasons {
        details.push(format!("failed {n} × {reason}"));
    }
    details.extend(tally.examples.iter().cloned());
    details.extend(verdict.examples.iter().cloned());
    let mut notes = outcome.notes;
    if tally.failed_reads() > 0 {
        let _ = write!(notes, "; KV reads failed {}", tally.failed_reads());
    }
    if tally.stale_reads > 0 {
        let _ = write!(notes, "; stale KV reads {}", tally.stale_reads);
    }
    Ok(FaultRow {
        fault: name.to_owned(),
        gets: load.served + load.failures.len() as u64,
        failed_gets: load.failures.len() as u64,
        kv_ops: tally.ops,
        kv_writes: tally.writes,
        failed_kv_writes: tally.failed_writes(),
        failed_kv_reads: tally.failed_reads(),
        keys: verdict.keys,
        keys_lost: verdict.lost,
        stale_reads: tally.stale_reads,
        recovered: outcome.recovered,
        notes,
        details,
    })
}

/// A load failure, shortened to its kind: `status 502 Bad Gateway`,
/// `connect error`, `timeout`, or the first words of anything else.
fn reason(failure: &str) -> String {
    if let Some(status) = failure.strip_prefix("status ") {
        let code = status.split(':').next().unwrap_or(status);
        return format!("status {code}");
    }
    let lower = failure.to_lowercase();
    if lower.contains("timedout") || lower.contains("timeout") || lower.contains("timed out") {
        "timeout".into()
    } else if lower.contains("connect") {
        "connect error".into()
    } else if lower.contains("body") {
        "broken body".into()
    } else {
        failure.chars().take(60).collect()
    }
}

/// Poll `cond` for at most `timeout`; how long it took, or `None`.
pub async fn time_until<F, Fut>(timeout: Duration, cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_async(timeout, "", cond).await.ok()
}

/// `Some(d)` as `1.23 s`, `None` as `never`.
pub fn secs(d: Option<Duration>) -> String {
    d.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// Sleep until `since + total` (not at all if that has passed).
pub async fn sleep_rest(since: Instant, total: Duration) {
    tokio::time::sleep(total.saturating_sub(since.elapsed())).await;
}
