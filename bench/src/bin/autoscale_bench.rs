//! `autoscale-bench`: the autoscaler's reaction times and dropped requests,
//! measured end to end on this machine and printed as one table. Run it
//! through `bench/autoscale.sh`, which builds the release binaries first.
//!
//! One scenario per round, on a fresh etcd, gateway and `autoscaler run`
//! (process driver, 1 s interval) with the policy `app`: min 1, max 4,
//! in-flight target 2, scale-down window `SCALE_DOWN_WINDOW` s:
//! 1. *load step*: 2 clients of ~50 ms `/work` requests, then 6 more at once;
//!    the time until a 2nd and a 3rd instance first answer a request;
//! 2. *scale-in*: the 6 stop; the time until `app` is back to 1 instance;
//! 3. *rolling restart*: `autoscaler rollout restart app` under the 2 clients.
//!
//! Failed requests are counted per phase (any status but 200, any transport
//! error). Settings (environment): ROUNDS (default 3; medians are printed),
//! SCALE_DOWN_WINDOW (default 10), SHOAL_BIN_DIR (where the binaries are).

use std::time::{Duration, Instant};

use registry::model::ScalingPolicy;
use registry::{Instance, InstanceState, Keys, Store};
use shoal_tests::autoscaler::autoscaler_cli;
use shoal_tests::platform::APP;
use shoal_tests::{Load, Platform, wait_until_async};

/// One round's figures.
#[derive(Debug, Default, Clone)]
struct Round {
    second_serving: f64,
    third_serving: f64,
    step_served: u64,
    step_failed: usize,
    back_to_one: f64,
    scale_in_served: u64,
    scale_in_failed: usize,
    rollout_secs: f64,
    rollout_instances: usize,
    rollout_served: u64,
    rollout_failed: usize,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number")),
        Err(_) => default,
    }
}

async fn instances(client: &etcd_client::Client) -> Vec<Instance> {
    shoal_tests::binaries::service_instances(client, APP).await
}

async fn round(window: u64) -> anyhow::Result<Round> {
    let policy = format!(
        r#"{{"service":"app","min":1,"max":4,"metric":"inflight","target":2,"scale_down_stabilization_secs":{window}}}"#
    );
    let mut platform = Platform::builder()
        .policy(APP, &policy)
        .gateway(&[])
        .autoscalers(1)
        .try_start()
        .await?;
    let client = platform.client.clone();
    let gateway = platform.gateway();
    let http = shoal_tests::http_client(Duration::from_secs(30));
    wait_until_async(Duration::from_secs(20), "1 ready instance", || async {
        instances(&client)
            .await
            .iter()
            .any(|i| i.state == InstanceState::Ready)
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // About 50 ms of work per request.
    let calibrate = gateway.url("/work?iterations=1000000");
    let mut elapsed_ms = 0.0;
    for _ in 0..3 {
        let work: serde_json::Value = http.get(&calibrate).send().await?.json().await?;
        elapsed_ms = work["elapsed_ms"].as_f64().unwrap_or(50.0);
    }
    let iterations = ((1_000_000.0 * 50.0 / elapsed_ms.max(0.1)) as u64).max(1000);
    let url = gateway.url(&format!("/work?iterations={iterations}"));

    let base = Load::start(&http, &url, 2);
    // The scenario's first phase: 2 s of the base load alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let step_at = Instant::now();
    let step = Load::start(&http, &url, 6);
    let mut r = Round::default();
    let serving_after = |n: usize| {
        let (base, step) = (&base, &step);
        async move {
            wait_until_async(Duration::from_secs(30), "instances serving", || async {
                let mut seen = base.first_served();
                seen.extend(step.first_served());
                seen.sort_by_key(|(_, at)| *at);
                seen.dedup_by(|a, b| a.0 == b.0);
                seen.len() >= n
            })
            .await
            .map_err(anyhow::Error::msg)?;
            let mut seen = base.first_served();
            seen.extend(step.first_served());
            let mut firsts: Vec<Instant> = Vec::new();
            let mut ids: Vec<String> = Vec::new();
            seen.sort_by_key(|(_, at)| *at);
            for (id, at) in seen {
                if !ids.contains(&id) {
                    ids.push(id);
                    firsts.push(at);
                }
            }
            anyhow::Ok(
                firsts[n - 1]
                    .saturating_duration_since(step_at)
                    .as_secs_f64(),
            )
        }
    };
    r.second_serving = serving_after(2).await?;
    r.third_serving = serving_after(3).await?;
    // The load step goes on 3 s with three instances serving.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let step_report = step.stop().await;
    r.step_served = step_report.served;
    r.step_failed = step_report.failures.len();

    let lighter = Instant::now();
    wait_until_async(
        Duration::from_secs(window + 60),
        "back to 1 instance",
        || async { instances(&client).await.len() == 1 },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    r.back_to_one = lighter.elapsed().as_secs_f64();
    let base_report = base.stop().await;
    r.scale_in_served = base_report.served;
    r.scale_in_failed = base_report.failures.len();

    // The rolling restart under the 2 clients; the policy keeps 2 running.
    let policy: ScalingPolicy = serde_json::from_str(
        r#"{"service":"app","min":2,"max":4,"metric":"inflight","target":2,"scale_down_stabilization_secs":30}"#,
    )?;
    Store::etcd(client.clone(), Keys::default())
        .put_policy(&policy)
        .await?;
    wait_until_async(Duration::from_secs(20), "2 ready instances", || async {
        instances(&client)
            .await
            .iter()
            .filter(|i| i.state == InstanceState::Ready)
            .count()
            == 2
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let load = Load::start(&http, &url, 2);
    let rolled = Instant::now();
    let out = autoscaler_cli(&platform.etcd, &["rollout", "restart", APP]).await;
    r.rollout_secs = rolled.elapsed().as_secs_f64();
    r.rollout_instances = 2;
    let report = load.stop().await;
    anyhow::ensure!(
        out.status.success(),
        "rollout restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    r.rollout_served = report.served;
    r.rollout_failed = report.failures.len();
    for failure in step_report
        .failures
        .iter()
        .chain(&base_report.failures)
        .chain(&report.failures)
        .take(5)
    {
        eprintln!("failed request: {failure}");
    }
    platform.autoscalers[0].stop(Duration::from_secs(30)).await;
    Ok(r)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rounds = env_u64("ROUNDS", 3).max(1);
    let window = env_u64("SCALE_DOWN_WINDOW", 10);
    let mut all = Vec::new();
    for n in 1..=rounds {
        eprintln!("round {n}/{rounds} ...");
        let r = round(window).await?;
        eprintln!("  {r:?}");
        all.push(r);
    }
    let m = |f: fn(&Round) -> f64| median(all.iter().map(f).collect());
    let sum = |f: fn(&Round) -> usize| all.iter().map(f).sum::<usize>();
    let served = |f: fn(&Round) -> u64| all.iter().map(f).sum::<u64>();
    println!();
    println!(
        "Autoscaler reaction, {rounds} round(s), medians (interval 1 s, in-flight target 2, scale-down window {window} s)"
    );
    println!();
    println!("| phase | time | requests failed / sent |");
    println!("|---|---|---|");
    println!(
        "| load step 2 → 8 clients: 2nd instance serving | {:.2} s | {} / {} |",
        m(|r| r.second_serving),
        sum(|r| r.step_failed),
        served(|r| r.step_served)
    );
    println!(
        "| load step: 3rd instance serving | {:.2} s | (same) |",
        m(|r| r.third_serving)
    );
    println!(
        "| scale-in 8 → 2 clients: back to 1 instance | {:.2} s | {} / {} |",
        m(|r| r.back_to_one),
        sum(|r| r.scale_in_failed),
        served(|r| r.scale_in_served)
    );
    println!(
        "| rolling restart of {} instances under 2 clients | {:.2} s | {} / {} |",
        all[0].rollout_instances,
        m(|r| r.rollout_secs),
        sum(|r| r.rollout_failed),
        served(|r| r.rollout_served)
    );
    let failed = sum(|r| r.step_failed + r.scale_in_failed + r.rollout_failed);
    println!();
    println!(
        "autoscale bench: {rounds} round(s), 2nd instance serving after {:.2} s, 3rd after {:.2} s, {failed} failed requests",
        m(|r| r.second_serving),
        m(|r| r.third_serving)
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
