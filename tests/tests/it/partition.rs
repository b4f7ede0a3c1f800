//! An app server cut off from etcd but not from the gateway (its own network
//! namespace, packets to etcd dropped): its lease expires, it fences itself
//! within a lease TTL, the gateway stops routing to it without a failed
//! request, and once the cut is healed it registers again and serves.
//!
//! Needs root for `ip netns` and `iptables`: skipped with a note otherwise,
//! except under `CI=true`, where it fails.

use std::time::Duration;

use shoal_tests::Load;
use shoal_tests::faults::FaultsConfig;
use shoal_tests::faults::cut_off::{cut_and_heal, platform_with_outsider};
use shoal_tests::netns::NetNs;

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_etcd_fences_is_dropped_without_failures_and_rejoins() {
    let Some(mut netns) = NetNs::create_or_skip("the partition test") else {
        return;
    };
    let config = FaultsConfig {
        instances: 2,
        lease_ttl: TTL,
        recover_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let (platform, outsider) = platform_with_outsider(&config, &netns)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let load = Load::start(&platform.http, &platform.gateway.url("/"), 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let times = cut_and_heal(&platform, &mut netns, &outsider)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    println!(
        "measured: cut off from etcd (lease TTL {TTL:?}): {times:?}; {} GETs served",
        report.served
    );

    let fenced = times
        .fenced
        .expect("the cut-off instance never said `fenced`");
    assert!(
        fenced <= TTL + Duration::from_secs(2),
        "fenced {fenced:?} after the cut; a lease TTL is {TTL:?}"
    );
    assert!(
        times.out_of_rotation.is_some(),
        "the gateway kept listing the fenced instance as ready"
    );
    assert!(
        report.failures.is_empty(),
        "GETs through the gateway during the cut: {}",
        report.failure_summary()
    );
    assert!(report.served > 0, "no request was served");
    assert!(
        times.registered_again.is_some(),
        "not registered again after the heal: {}",
        platform.describe().await
    );
    assert!(
        times.serving.is_some(),
        "not ready and serving through the gateway after the heal: {}",
        platform.describe().await
    );
}
