//! Rolling restarts end to end: a real etcd, a gateway, `autoscaler run`
//! with the process driver, and steady load through the gateway while
//! `autoscaler rollout restart`, SIGUSR2 to the controller and the gateway's
//! admin API each replace every instance. Zero failed requests is the point.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shoal_tests::{Load, Platform, wait_until_async};

use crate::autoscaler::{autoscaler_cli, events, instances, ready};
use crate::gateway::http;

/// Three instances, held there whatever the load.
const POLICY: &str = r#"{"service":"app","min":3,"max":3,"metric":"inflight","target":100}"#;

async fn ready_ids(client: &etcd_client::Client) -> BTreeSet<String> {
    ready(&instances(client).await)
        .into_iter()
        .map(|i| i.id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_replaces_every_instance_and_drops_nothing() {
    let mut platform = Platform::builder()
        .policy("app", POLICY)
        .gateway(&[])
        .autoscalers(1)
        .autoscaler_flags(&["--interval", "500ms"])
        .start()
        .await;
    let (etcd, client, gateway) = (&platform.etcd, &platform.client, &platform.gateways[0]);
    let scaler = &mut platform.autoscalers[0];
    wait_until_async(Duration::from_secs(20), "3 ready instances", || async {
        ready_ids(client).await.len() == 3
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    let first = ready_ids(client).await;

    let http = http();
    let hello = gateway.url("/");
    wait_until_async(
        Duration::from_secs(5),
        "routed through the gateway",
        || async {
            http.get(&hello)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await
    .unwrap();
    let load = Load::start(&http, &hello, 4);

    // 1. The CLI: asks, shows progress, returns once done.
    let started = Instant::now();
    let (code, stdout, stderr) = tokio::time::timeout(
        Duration::from_secs(90),
        autoscaler_cli(&etcd.endpoint(), &["rollout", "restart", "app"]),
    )
    .await
    .expect("the rollout finishes within 90 s");
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nautoscaler log:\n{}",
        scaler.proc.stderr()
    );
    assert!(
        stdout.contains("3/3 replaced"),
        "progress reached the end: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("app: rolling restart done: 3 instance(s) replaced in"),
        "{stdout}"
    );
    let second = ready_ids(client).await;
    assert_eq!(second.len(), 3, "{second:?}");
    assert!(second.is_disjoint(&first), "every instance replaced");
    let during_cli = load.served();
    println!(
        "measured: rolling restart of 3 instances (CLI, surge 1) took {:.1} s; {during_cli} requests served so far",
        took.as_secs_f64()
    );

    // A second request while none is in progress is accepted; one while one
    // is in progress is refused with the reason.
    let (code, _, stderr) = autoscaler_cli(
        &etcd.endpoint(),
        &["rollout", "restart", "app", "--no-wait"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = autoscaler_cli(&etcd.endpoint(), &["rollout", "restart", "app"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("a rolling restart of app is already in progress (requested by cli"),
        "{stderr}"
    );
    let done = |n: usize| {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                events(&client)
                    .await
                    .iter()
                    .filter(|(_, e)| {
                        e.kind == "rollout" && e.reason.starts_with("rolling restart done")
                    })
                    .count()
                    >= n
                    && ready_ids(&client).await.len() == 3
            }
        }
    };
    wait_until_async(
        Duration::from_secs(90),
        "the --no-wait restart done",
        done(2),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    let third = ready_ids(client).await;
    assert!(third.is_disjoint(&second));

    // 2. SIGUSR2 to the controller: every service with a policy rolls.
    let signalled = Instant::now();
    scaler.proc.signal(Signal::SIGUSR2);
    wait_until_async(Duration::from_secs(90), "the SIGUSR2 restart done", done(3))
        .await
        .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    let fourth = ready_ids(client).await;
    assert!(fourth.is_disjoint(&third), "every instance replaced again");
    let by_signal = events(client)
        .await
        .into_iter()
        .any(|(_, e)| e.kind == "rollout" && e.reason.contains("requested by signal"));
    assert!(by_signal, "the request says it came from the signal");
    println!(
        "measured: SIGUSR2 rolling restart took {:.1} s",
        signalled.elapsed().as_secs_f64()
    );

    // 3. The admin API: the same request, from the gateway.
    let resp = http
        .post(gateway.admin_url("/api/v1/services/app/rollout"))
        .json(&serde_json::json!({ "max_surge": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        202,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    wait_until_async(Duration::from_secs(90), "the API restart done", done(4))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}; autoscaler log:
{}",
                scaler.proc.stderr()
            )
        });
    let fifth = ready_ids(client).await;
    assert!(fifth.is_disjoint(&fourth), "every instance replaced again");
    let by_api = events(client)
        .await
        .into_iter()
        .any(|(_, e)| e.kind == "rollout" && e.reason.contains("requested by api: max surge 2"));
    assert!(
        by_api,
        "the request says it came from the API, with its surge"
    );

    let report = load.stop().await;
    println!(
        "measured: {} requests through four rolling restarts, {} failed",
        report.served,
        report.failures.len()
    );
    assert!(report.served > 100, "the load ran: {}", report.served);
    assert!(report.failures.is_empty(), "{}", report.failure_summary());
    assert!(scaler.stop(Duration::from_secs(20)).await.success());
}
