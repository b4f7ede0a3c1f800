//! Losing most of the registry at once under load: the instances' keys
//! deleted (`etcdctl del --prefix`) while their leases live, or etcd wiped
//! (stopped, data dir replaced, started again). The gateway keeps routing to
//! the instances it knew, shown as `unconfirmed`, until they register again;
//! no request fails and the table is never empty.

use std::time::{Duration, Instant};

use shoal_tests::gateway::{TableSeen, TableWatch};
use shoal_tests::{Etcd, Load, Platform, wait_until};

use super::{http, wait_known};
use crate::{is_ready, wait_instance};

/// Three instances behind a gateway, all known to it as ready, under load:
/// run `event`, then wait until every instance is registered again and
/// ready in the gateway; assert nothing failed and the table never lost an
/// instance.
async fn survive(what: &str, event: impl AsyncFnOnce(&mut Etcd)) {
    let mut platform = Platform::builder()
        .app_servers(3)
        .gateway(&[])
        .start()
        .await;
    let (apps, gateway) = (&platform.app_servers, &platform.gateways[0]);
    let http = http();
    let load = Load::start(&http, &gateway.url("/"), 8);
    let table = TableWatch::start(&http, gateway, "app");
    // Under way before the event: requests served, the table read.
    load.wait_more_served(50, Duration::from_secs(10))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the table watch's first read",
        || table.polls() > 0,
    )
    .await
    .unwrap();
    let served_before = load.served();

    event(&mut platform.etcd).await;
    let after_event = Instant::now();
    let client = platform.etcd.client().await;
    for app in apps {
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
    wait_known(&http, gateway, "app", &ids, Duration::from_secs(5)).await;
    // And the load goes on past that, with the table watched.
    load.wait_more_served(50, Duration::from_secs(10))
        .await
        .unwrap();

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
    survive(
        "etcdctl del --prefix instances/",
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
    survive("etcd wiped", async |etcd: &mut Etcd| etcd.wipe().await).await;
}
