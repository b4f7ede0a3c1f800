//! Losing most of the registry at once under load: the instances' keys
//! deleted (`etcdctl del --prefix`) while their leases live, or etcd wiped
//! (stopped, data dir replaced, started again). The gateway keeps routing to
//! the instances it knew, shown as `unconfirmed`, until they register again;
//! no request fails and the table is never empty.

use std::time::{Duration, Instant};

use shoal_tests::gateway::{TableSeen, TableWatch};
use shoal_tests::{AppServer, Etcd, Gateway, Load};

use super::{http, start_apps, wait_known};
use crate::{is_ready, wait_instance};

/// Three instances behind a gateway, all known to it as ready.
async fn three_behind_a_gateway(etcd: &Etcd) -> (Vec<AppServer>, Gateway, reqwest::Client) {
    let apps = start_apps(etcd, 3, "app").await;
    let gateway = Gateway::start(etcd, &[]).await;
    let http = http();
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    wait_known(&http, &gateway, "app", &ids, Duration::from_secs(10)).await;
    (apps, gateway, http)
}

/// Under load, run `event`, then wait until every instance is registered
/// again and ready in the gateway; assert nothing failed and the table
/// never lost an instance.
async fn survive(what: &str, etcd: &mut Etcd, event: impl AsyncFnOnce(&mut Etcd)) {
    let (apps, gateway, http) = three_behind_a_gateway(etcd).await;
    let load = Load::start(&http, &gateway.url("/"), 8);
    let table = TableWatch::start(&http, &gateway, "app");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served_before = load.served();

    event(etcd).await;
    let after_event = Instant::now();
    let client = etcd.client().await;
    for app in &apps {
        wait_instance(
            &client,
            &app.key(),
            Duration::from_secs(10),
            "registered again",
            is_ready,
        )
        .await;
    }
    let registered = after_event.elapsed();
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    // Confirmed again: listed as ready (not unconfirmed) by the gateway.
    wait_known(&http, &gateway, "app", &ids, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let TableSeen {
        min_ready,
        max_unconfirmed,
        polls,
    } = table.stop().await;
    let report = load.stop().await;
    assert!(
        report.failures.is_empty(),
        "{what}: {}",
        report.failure_summary()
    );
    assert!(
        report.served > served_before,
        "{what}: no request was served during the event"
    );
    assert!(polls > 0, "{what}: the admin API was never read");
    assert_eq!(
        min_ready, 3,
        "{what}: the gateway's table lost instances (fewest ready seen: {min_ready})"
    );
    println!(
        "measured: {what}: {} requests, 0 failed; every instance registered again {} ms after the event; \
         table never below 3 ready ({polls} polls, up to {max_unconfirmed} unconfirmed)",
        report.served,
        registered.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_every_instance_key_under_load_fails_nothing_and_they_come_back() {
    let mut etcd = Etcd::start().await;
    survive(
        "etcdctl del --prefix instances/",
        &mut etcd,
        async |etcd: &mut Etcd| {
            let status = tokio::process::Command::new("etcdctl")
                .args([
                    "--endpoints",
                    &etcd.endpoint(),
                    "del",
                    "--prefix",
                    "/shoal/instances/",
                ])
                .status()
                .await
                .expect("etcdctl runs (apt-get install etcd-client)");
            assert!(status.success(), "etcdctl del failed: {status}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiping_etcd_under_load_fails_nothing_and_every_instance_comes_back() {
    let mut etcd = Etcd::start().await;
    survive("etcd wiped", &mut etcd, async |etcd: &mut Etcd| {
        etcd.wipe().await
    })
    .await;
}
