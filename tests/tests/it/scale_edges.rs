//! The autoscaler at the edges of its range, end to end (real etcd, gateway,
//! `autoscaler run` with the process driver): scale from zero, where the
//! gateway holds the first request until an instance is ready, and a steady
//! load at the target, which must not move the replica count for 60 s.

use std::time::{Duration, Instant};

use shoal_tests::wait::holds_for;
use shoal_tests::{Load, Platform, wait_until_async};

use crate::autoscaler::{events, instances, ready};
use crate::gateway::http;

/// A gateway and a controller ticking every 500 ms, `app` under `policy`.
async fn controlled(policy: &str) -> Platform {
    Platform::builder()
        .policy("app", policy)
        .gateway(&[])
        .autoscalers(1)
        .autoscaler_flags(&["--interval", "500ms"])
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_the_first_request_is_held_and_answered_then_back_to_zero() {
    let platform = controlled(r#"{"service":"app","min":0,"max":2,"metric":"inflight","target":4,"scale_down_stabilization_secs":3}"#).await;
    let (client, gateway, scaler) = (&platform.client, platform.gateway(), platform.autoscaler());
    let http = http();

    for round in 1..=2 {
        // Nothing runs: the controller has no reason to start anything.
        wait_until_async(Duration::from_secs(30), "no instance", || async {
            instances(client).await.is_empty()
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
        let reasons: Vec<String> = events(client)
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
            instances(client).await.is_empty()
        })
        .await
        .unwrap();
        // No event marks "the controller has decided not to start anything":
        // the claim is that nothing starts over 8 ticks (4 s at 500 ms), so it
        // is watched that long. The decision (no held request, no instance:
        // stay at 0) is table-tested in autoscaler/src/decide.rs.
        let stayed = holds_for(Duration::from_secs(4), "no instance", || async {
            instances(client).await.is_empty()
        })
        .await;
        if let Err(e) = stayed {
            panic!("stays at zero: {e}; events {:#?}", events(client).await);
        }
    }
    let reasons: Vec<String> = events(client)
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
    // Two instances to start with, then min 1: the metric alone holds two.
    let platform = controlled(r#"{"service":"app","min":2,"max":4,"metric":"inflight","target":4,"scale_down_stabilization_secs":5}"#).await;
    let (client, gateway, scaler) = (&platform.client, platform.gateway(), platform.autoscaler());
    let keys = registry::Keys::default();
    let mut c = client.clone();
    wait_until_async(Duration::from_secs(20), "2 ready instances", || async {
        ready(&instances(client).await).len() == 2
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
    let before = events(client).await.len();
    // The claim is about 60 s of steady load: no event marks its end.
    let held = holds_for(Duration::from_secs(60), "2 instances", || async {
        instances(client).await.len() == 2
    })
    .await;
    let samples = match held {
        Ok(samples) => samples,
        Err(e) => {
            let moved: Vec<String> = events(client)
                .await
                .into_iter()
                .skip(before)
                .map(|(_, e)| e.reason)
                .collect();
            panic!(
                "the count moved: {e}: {moved:?}\nautoscaler log:\n{}",
                scaler.proc.stderr()
            );
        }
    };
    let report = load.stop().await;
    let changes: Vec<String> = events(client)
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
        samples, report.served
    );
}
