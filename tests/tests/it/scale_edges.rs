//! The autoscaler at the edges of its range, end to end (real etcd, gateway,
//! `autoscaler run` with the process driver): scale from zero, where the
//! gateway holds the first request until an instance is ready, and a steady
//! load at the target, which must not move the replica count for 60 s.

use std::time::{Duration, Instant};

use registry::Keys;
use shoal_tests::{Autoscaler, Etcd, Gateway, Load, wait_until_async};

use crate::autoscaler::{events, instances, ready};
use crate::gateway::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_the_first_request_is_held_and_answered_then_back_to_zero() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let gateway = Gateway::start(&etcd, &[]).await;
    let mut c = client.clone();
    c.put(
        Keys::default().policy("app"),
        r#"{"service":"app","min":0,"max":2,"metric":"inflight","target":4,"scale_down_stabilization_secs":3}"#,
        None,
    )
    .await
    .unwrap();
    let scaler = Autoscaler::start(&etcd, &["--interval", "500ms"]);
    let http = http();

    for round in 1..=2 {
        // Nothing runs: the controller has no reason to start anything.
        wait_until_async(Duration::from_secs(30), "no instance", || async {
            instances(&client).await.is_empty()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));

        let sent = Instant::now();
        let resp = http.get(gateway.url("/")).send().await.unwrap_or_else(|e| {
            panic!(
                "round {round}: {e}; autoscaler log:\n{}",
                scaler.proc.stderr()
            )
        });
        let answered = sent.elapsed();
        assert_eq!(resp.status(), 200, "round {round}: held, then served");
        println!(
            "measured: scale from zero (round {round}): first request answered after {:.2} s",
            answered.as_secs_f64()
        );
        assert!(
            answered < Duration::from_secs(10),
            "answered within the gateway's hold timeout"
        );
        let reasons: Vec<String> = events(&client)
            .await
            .into_iter()
            .map(|(_, e)| e.reason)
            .collect();
        let from_zero = reasons
            .iter()
            .filter(|r| r.contains("scale from zero"))
            .count();
        assert_eq!(
            from_zero, round,
            "one start from zero per held request: {reasons:#?}"
        );
        // Back to zero after the window, and it stays there: the traffic
        // served before the scale-down is not a reason to start again.
        wait_until_async(Duration::from_secs(30), "back to no instance", || async {
            instances(&client).await.is_empty()
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(instances(&client).await.is_empty(), "stays at zero");
    }
    let reasons: Vec<String> = events(&client)
        .await
        .into_iter()
        .map(|(_, e)| e.reason)
        .collect();
    let from_zero = reasons
        .iter()
        .filter(|r| r.contains("scale from zero"))
        .count();
    assert_eq!(from_zero, 2, "no flapping: {reasons:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_load_at_the_target_leaves_the_replica_count_alone_for_60_s() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let gateway = Gateway::start(&etcd, &[]).await;
    let keys = Keys::default();
    let mut c = client.clone();
    // Two instances to start with, then min 1: the metric alone holds two.
    c.put(
        keys.policy("app"),
        r#"{"service":"app","min":2,"max":4,"metric":"inflight","target":4,"scale_down_stabilization_secs":5}"#,
        None,
    )
    .await
    .unwrap();
    let scaler = Autoscaler::start(&etcd, &["--interval", "500ms"]);
    wait_until_async(Duration::from_secs(20), "2 ready instances", || async {
        ready(&instances(&client).await).len() == 2
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    let http = http();
    let url = gateway.url("/work?iterations=2000000");
    wait_until_async(Duration::from_secs(5), "routed", || async {
        http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await
    .unwrap();

    // 8 clients over 2 instances: 4 in flight each, the target.
    let load = Load::start(&http, &url, 8);
    c.put(
        keys.policy("app"),
        r#"{"service":"app","min":1,"max":4,"metric":"inflight","target":4,"scale_down_stabilization_secs":5}"#,
        None,
    )
    .await
    .unwrap();
    let before = events(&client).await.len();
    let started = Instant::now();
    let mut counts = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        let all = instances(&client).await;
        counts.push(all.len());
        assert_eq!(
            all.len(),
            2,
            "after {:.1} s the count moved: {:?}\nautoscaler log:\n{}",
            started.elapsed().as_secs_f64(),
            events(&client)
                .await
                .into_iter()
                .skip(before)
                .map(|(_, e)| e.reason)
                .collect::<Vec<_>>(),
            scaler.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = load.stop().await;
    let changes: Vec<String> = events(&client)
        .await
        .into_iter()
        .skip(before)
        .filter(|(_, e)| e.current != e.desired)
        .map(|(_, e)| e.reason)
        .collect();
    assert!(changes.is_empty(), "no change decided: {changes:?}");
    assert!(report.failures.is_empty(), "{:?}", report.failures.first());
    println!(
        "measured: steady load (8 clients, in-flight target 4 per instance): 2 instances for 60 s over {} samples, {} requests, 0 failed",
        counts.len(),
        report.served
    );
}
