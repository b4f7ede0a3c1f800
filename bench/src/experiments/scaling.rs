//! Experiment 1, `scaling`: `GET /work?iterations=10000000` requests/s
//! through the gateway with one instance, then with one instance per core.
//!
//! The source compared one single-threaded Node.js process with one worker
//! per CPU. A Shoal app server is not single-threaded: `/work` runs on
//! tokio's blocking pool, so one instance already uses every core, and on
//! one machine the 1 → N ratio is expected near 1; the row reports it, and
//! its share of the ideal (N = the cores), as the source's figure asks.
//!
//! The goal is on what N instances reach through the gateway against what
//! the machine gives the same busy loop at the same moment: the loop run
//! back to back on N threads of this process, no HTTP at all, for one phase
//! just before. At least 0.7 of it, leaving 30 % for the gateway and the
//! load generator, which share the same cores. This baseline, rather than
//! N × the rate of one request alone, keeps the verdict about Shoal on a
//! shared machine whose other tenants take cores away (both are shown).

use std::time::{Duration, Instant};

use app_server::routes::work::busy_loop;

use shoal_tests::Load;
use shoal_tests::autoscaler::scale;
use shoal_tests::binaries::{service_instances, wait_ready};
use shoal_tests::platform::APP;

use super::{Config, Row, measure_for, platform, verdict};

pub const NAME: &str = "scaling";
pub const SOURCE: &str = "9–10x with one worker per CPU (many-core machine)";
const ITERATIONS: u64 = 10_000_000;
const PATH: &str = "/work?iterations=10000000";
/// Share of the ideal N instances must reach.
const GOAL: f64 = 0.7;

pub async fn run(config: &Config) -> anyhow::Result<Row> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let platform = platform().pinned(1).try_start().await?;
    let http = platform.http.clone();
    let clients = config.clients.max(2 * cores);

    // One request alone, straight to the instance: the single-core rate.
    let instance = service_instances(&platform.client, APP)
        .await
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no instance registered"))?;
    let mut alone_ms = Vec::new();
    for _ in 0..5 {
        let report: serde_json::Value = http
            .get(format!("http://{}{PATH}", instance.addr))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        alone_ms.push(report["elapsed_ms"].as_f64().unwrap_or(f64::NAN));
    }
    alone_ms.sort_by(f64::total_cmp);
    let request_ms = alone_ms[alone_ms.len() / 2];
    let ideal = cores as f64 * 1000.0 / request_ms;

    let url = platform.gateway().url(PATH);
    let one = rate(&http, &url, clients, config.phase).await?;
    scale(&platform.etcd, APP, cores).await?;
    wait_ready(&platform.client, APP, cores, Duration::from_secs(60)).await?;
    let phase = config.phase;
    let machine = tokio::task::spawn_blocking(move || loop_alone_rate(cores, phase)).await?;
    let many = rate(&http, &url, clients, config.phase).await?;

    let ratio = many / one;
    let efficiency = many / machine;
    Ok(Row {
        experiment: NAME,
        shoal: format!(
            "1 inst {one:.1}/s, {cores} inst {many:.1}/s: ×{ratio:.2} ({:.2} of ideal ×{cores}); the loop alone on {cores} threads {machine:.1}/s (ideal {ideal:.1}/s at {request_ms:.1} ms each) → {cores} inst = {efficiency:.2} of it",
            ratio / cores as f64
        ),
        source: SOURCE,
        goal: format!("{cores} inst ≥ {GOAL} × the loop alone on {cores} threads"),
        verdict: verdict(efficiency >= GOAL),
        details: vec![format!(
            "{clients} clients, {:?} per phase; one request alone took {alone_ms:?} ms; one instance already runs /work on every core (blocking pool), so ×1 is the expected 1 → {cores} ratio on one machine",
            config.phase
        )],
    })
}

/// Busy loops of `/work`'s size per second on `threads` threads of this
/// process for `phase`: what the machine gives the work itself right now.
fn loop_alone_rate(threads: usize, phase: Duration) -> f64 {
    let started = Instant::now();
    let done: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0;
                    while started.elapsed() < phase {
                        std::hint::black_box(busy_loop(ITERATIONS));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a busy-loop thread panicked"))
            .sum()
    });
    done as f64 / started.elapsed().as_secs_f64()
}

/// Requests/s served (200) by `clients` clients on `url` for `phase`; any
/// failure makes the measurement invalid.
async fn rate(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    phase: Duration,
) -> anyhow::Result<f64> {
    let load = Load::start(http, url, clients);
    let started = Instant::now();
    measure_for(phase).await;
    let report = load.stop().await;
    let secs = started.elapsed().as_secs_f64();
    if let Some(first) = report.failures.first() {
        anyhow::bail!(
            "{} of the /work requests failed, first: {first}",
            report.failures.len()
        );
    }
    Ok(report.served as f64 / secs)
}
