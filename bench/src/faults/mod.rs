//! The fault suite: each fault on a fresh platform under steady load, with
//! requests failed, acknowledged key-value writes lost, and time to recover.
//!
//! Each fault gets a fresh platform ([`platform`], on `shoal_tests::Platform`):
//! etcd, a gateway (route `/kv/` → `app` by consistent hash on the key) and
//! `autoscaler run` (process driver) with `app` pinned at
//! [`FaultsConfig::instances`] instances. Under load ([`under_load`]: GET `/`
//! clients from `shoal_tests::load` and key-value clients from
//! [`crate::kv_load`], all through the gateway) a fault is injected,
//! recovery is waited for by polling, the load runs on for
//! [`FaultsConfig::steady`], and every key ever written is read back and
//! compared with its last acknowledged write.
//!
//! **Recovered** (`Platform::wait_recovered`, [`recovered`]): the gateway
//! says it is connected to etcd, exactly the expected instances of `app`
//! are registered and ready, the gateway lists each as ready, and a change
//! written to etcd now (a probe instance) reaches the gateway's table.
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
use std::time::Duration;

use anyhow::bail;
use shoal_tests::platform::{KV_ROUTE, PlatformBuilder};
use shoal_tests::{Load, Platform, wait_until_async};

use crate::kv_load::KvClients;

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

/// A fresh platform for one fault: `controllers` autoscalers (ids
/// `controller-0`, ...) keeping `app` at `config.instances` ready instances,
/// a gateway with `--reuse-port` (the gateway-restart fault replaces it in
/// place; not `--try-timeout`: see bench/README.md, "instance frozen"), and
/// the `/kv/` route. [`PlatformBuilder::try_start`] returns once every
/// instance is ready and the gateway routes to each.
pub fn platform(config: &FaultsConfig, controllers: usize) -> PlatformBuilder {
    let ttl = format!("{}ms", config.lease_ttl.as_millis());
    Platform::builder()
        .route("kv", KV_ROUTE)
        .pinned(config.instances)
        .gateway(&["--reuse-port"])
        .autoscalers(controllers)
        .autoscaler_flags(&["--interval", "500ms", "--lease-ttl", &ttl])
}

/// Wait until `p` has recovered (see the module doc), up to
/// `config.recover_timeout`; how long it took.
pub async fn recovered(p: &Platform, config: &FaultsConfig) -> Option<Duration> {
    p.wait_recovered(config.recover_timeout).await
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
    let kv_base = platform.gateway().url("/kv/");
    let gets = Load::start(&http, &platform.gateway().url("/"), config.get_clients);
    let mut kv = KvClients::start(&http, &kv_base, config.kv_clients, config.keys_per_client);
    // Steady load before and after the fault: its length is the setting
    // (STEADY_SECS), so its end is a time, not a condition.
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
    details.extend(
        tally
            .failure_examples
            .iter()
            .map(|e| format!("e.g. KV {e}")),
    );
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

/// Poll `cond` for at most `timeout`; how long it took, or `None` (a fault
/// that does not recover is a row of the table, not an error).
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
