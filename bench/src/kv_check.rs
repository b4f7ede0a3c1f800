//! The key-value checker: the distributed store under membership changes,
//! end to end, with every acknowledged write accounted for.
//!
//! [`run`] starts a platform (`shoal_tests::Platform`): a fresh etcd, a
//! gateway (route `/kv/` → `app` by consistent hash on the key), and
//! `autoscaler run` (process driver) with `app` pinned at 2 instances,
//! R = `replicas`. Clients ([`crate::kv_load`]) write unique values to keys
//! of their own (and now and then delete one) and read them back through the
//! gateway, while the service is scaled 2 → 5, one instance is killed with
//! SIGKILL, and the service is scaled back to 2 (each change through the
//! `autoscaler scale` CLI, each followed by a phase of load). Finally every
//! key is read and compared with its last acknowledged write (see
//! [`crate::kv_load`] for what counts as lost or stale). Beside them, other
//! clients contend for a few hot keys ([`crate::kv_history`]), and each
//! key's recorded history is checked for linearizability
//! ([`crate::linearizability`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shoal_tests::Platform;
use shoal_tests::autoscaler::scale;
use shoal_tests::binaries::{instance_pid, service_instances, wait_ready};
use shoal_tests::cut_off::{cut_and_heal, platform_with_outsider};
use shoal_tests::netns::NetNs;
use shoal_tests::platform::{APP, KV_ROUTE, pinned_policy, short};
use shoal_tests::wait_until_async;

use crate::kv_history::HotKeyClients;
use crate::kv_load::KvClients;
use crate::linearizability::{self, Verdict};

/// What to run.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub clients: usize,
    /// Keys per client.
    pub keys_per_client: usize,
    /// Load time after each membership change settles.
    pub phase: Duration,
    pub replicas: usize,
    /// Clients contending for the hot keys, and how many hot keys.
    pub hot_clients: usize,
    pub hot_keys: usize,
    /// How long the linearizability checker may search one key's history.
    pub check_budget: Duration,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            clients: 8,
            keys_per_client: 50,
            phase: Duration::from_secs(10),
            replicas: 2,
            hot_clients: 6,
            hot_keys: 4,
            check_budget: Duration::from_secs(60),
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
    /// The first few failures with the detail Shoal gave.
    pub failure_examples: Vec<String>,
    /// (phase, seconds it took to reach its instance count).
    pub phases: Vec<(String, f64)>,
    /// Up to 10 examples of lost keys or stale reads.
    pub examples: Vec<String>,
    /// The hot keys' histories, checked.
    pub linearizability: Verdict,
}

impl CheckReport {
    /// The report, ending with the `ops N, acknowledged N, failed N, lost N` line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "phase (clients' clock)             reached in");
        for (phase, secs) in &self.phases {
            let _ = writeln!(out, "  {phase:<34} {secs:>6.2} s");
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
        for e in &self.failure_examples {
            let _ = writeln!(out, "    e.g. {e}");
        }
        for e in &self.examples {
            let _ = writeln!(out, "  example: {e}");
        }
        let _ = writeln!(out, "{}", self.linearizability.summary());
        let _ = write!(
            out,
            "ops {}, acknowledged {}, failed {}, lost {}",
            self.ops, self.acknowledged, self.failed, self.lost
        );
        out
    }
}

/// Run the whole check; see the module doc.
pub async fn run(config: CheckConfig) -> anyhow::Result<CheckReport> {
    let replicas = config.replicas.to_string();
    // The policy, not `.pinned(2)`: the time to the first two ready
    // instances is the report's first phase.
    let platform = Platform::builder()
        .route("kv", KV_ROUTE)
        .policy(APP, &pinned_policy(APP, 2))
        .gateway(&[])
        .autoscalers(1)
        .autoscaler_flags(&["--interval", "500ms", "--lease-ttl", "3s"])
        .instance_env("SHOAL_KV_REPLICAS", &replicas)
        .try_start()
        .await?;
    let (client, http) = (&platform.client, &platform.http);
    let base = platform.gateway().url("/kv/");
    let mut report = CheckReport::default();
    let started = Instant::now();
    wait_ready(client, APP, 2, Duration::from_secs(30)).await?;
    report
        .phases
        .push(("2 instances ready".into(), started.elapsed().as_secs_f64()));

    let kv = KvClients::start(http, &base, config.clients, config.keys_per_client);
    let hot = HotKeyClients::start(http, &base, config.hot_clients, config.hot_keys);

    load_phase(&config).await;
    scale(&platform.etcd, APP, 5).await?;
    let at = Instant::now();
    let clock = kv.elapsed().as_secs_f64();
    wait_ready(client, APP, 5, Duration::from_secs(30)).await?;
    report.phases.push((
        format!("scaled 2 → 5 at {clock:.1} s"),
        at.elapsed().as_secs_f64(),
    ));
    load_phase(&config).await;

    let victim = pick_victim(http, client).await?;
    kill(Pid::from_raw(victim.1 as i32), Signal::SIGKILL).context("kill -9")?;
    let at = Instant::now();
    let clock = kv.elapsed().as_secs_f64();
    wait_until_async(
        Duration::from_secs(30),
        "the killed instance to leave the registry",
        || async {
            !service_instances(client, APP)
                .await
                .iter()
                .any(|i| i.id == victim.0)
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    wait_ready(client, APP, 5, Duration::from_secs(30)).await?;
    report.phases.push((
        format!("kill -9 {} at {clock:.1} s → 5 ready", short(&victim.0)),
        at.elapsed().as_secs_f64(),
    ));
    load_phase(&config).await;

    scale(&platform.etcd, APP, 2).await?;
    let at = Instant::now();
    let clock = kv.elapsed().as_secs_f64();
    wait_until_async(Duration::from_secs(60), "2 instances", || async {
        service_instances(client, APP).await.len() == 2
    })
    .await
    .map_err(anyhow::Error::msg)?;
    report.phases.push((
        format!("scaled 5 → 2 at {clock:.1} s"),
        at.elapsed().as_secs_f64(),
    ));
    load_phase(&config).await;

    finish(&config, kv, hot, http, &base, report).await
}

/// The same clients while one more instance, in a network namespace, is cut
/// off from etcd (not from the gateway or its peers, which listen on the
/// namespace's host address) and healed
/// ([`shoal_tests::cut_off`]): its lease expires, it fences itself and
/// leaves the others' view, then rejoins. One phase of load before the cut
/// and one after the heal. `netns`: from `NetNs::create`.
pub async fn run_cut_off(config: CheckConfig, mut netns: NetNs) -> anyhow::Result<CheckReport> {
    let replicas = config.replicas.to_string();
    let builder = Platform::builder()
        .route("kv", KV_ROUTE)
        .pinned(2)
        .gateway(&[])
        .autoscalers(1)
        .autoscaler_flags(&["--interval", "500ms", "--lease-ttl", "3s"])
        .instance_env("SHOAL_KV_REPLICAS", &replicas);
    let (platform, outsider) =
        platform_with_outsider(builder, &netns, Duration::from_secs(3)).await?;
    let base = platform.gateway().url("/kv/");
    let mut report = CheckReport::default();
    let kv = KvClients::start(
        &platform.http,
        &base,
        config.clients,
        config.keys_per_client,
    );
    let hot = HotKeyClients::start(&platform.http, &base, config.hot_clients, config.hot_keys);
    load_phase(&config).await;
    let clock = kv.elapsed().as_secs_f64();
    let times = cut_and_heal(&platform, &mut netns, &outsider, Duration::from_secs(30)).await?;
    let secs =
        |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    report.phases.push((
        format!(
            "cut {} off etcd at {clock:.1} s: fenced {}, out of rotation {}, serving again {} after the heal",
            short(&outsider.id),
            secs(times.fenced),
            secs(times.out_of_rotation),
            secs(times.serving)
        ),
        kv.elapsed().as_secs_f64() - clock,
    ));
    anyhow::ensure!(
        times.serving.is_some(),
        "the cut-off instance did not serve again after the heal"
    );
    load_phase(&config).await;
    finish(&config, kv, hot, &platform.http, &base, report).await
}

/// Stop the clients, read every key back and check the hot keys' histories.
async fn finish(
    config: &CheckConfig,
    mut kv: KvClients,
    mut hot: HotKeyClients,
    http: &reqwest::Client,
    base: &str,
    mut report: CheckReport,
) -> anyhow::Result<CheckReport> {
    let tally = kv.stop().await?;
    let recording = hot.stop().await?;
    report.linearizability = linearizability::check(recording, config.check_budget).await;
    let verdict = kv.verify(http, base).await?;
    report.ops = tally.ops;
    report.acknowledged = tally.acknowledged;
    report.failed = tally.failed;
    report.reads = tally.reads;
    report.stale_reads = tally.stale_reads;
    report.failures = tally.failures.clone();
    report.failure_examples = tally.failure_examples.clone();
    report.keys = verdict.keys;
    report.lost = verdict.lost;
    report.examples = tally
        .examples
        .iter()
        .cloned()
        .chain(verdict.examples)
        .take(10)
        .collect();
    Ok(report)
}

/// One phase of load after a change: its length is the setting
/// (`PHASE_SECS`), so its end is a time, not a condition.
async fn load_phase(config: &CheckConfig) {
    tokio::time::sleep(config.phase).await;
}

/// A ready instance's id and pid (from its hello line).
async fn pick_victim(
    http: &reqwest::Client,
    client: &etcd_client::Client,
) -> anyhow::Result<(String, u32)> {
    let instances = service_instances(client, APP).await;
    let victim = instances.first().context("no instance to kill")?;
    let pid = instance_pid(http, &victim.addr).await?;
    Ok((victim.id.clone(), pid))
}
