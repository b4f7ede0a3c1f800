//! An app server cut off from etcd but not from the gateway (its own network
//! namespace, packets to etcd dropped): its lease expires, it fences itself
//! within a lease TTL, the gateway stops routing to it without a failed
//! request, and once the cut is healed it registers again and serves.
//!
//! Needs root for `ip netns` and `iptables`: skipped with a note otherwise,
//! except under `CI=true`, where it fails.

use std::time::{Duration, Instant};

use shoal_tests::cut_off::{cut_and_heal, platform_with_outsider};
use shoal_tests::netns::NetNs;
use shoal_tests::{Load, Platform};

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_etcd_fences_is_dropped_without_failures_and_rejoins() {
    let Some(mut netns) = NetNs::create_or_skip("the partition test") else {
        return;
    };
    let builder = Platform::builder()
        .pinned(2)
        .gateway(&[])
        .autoscalers(1)
        .autoscaler_flags(&["--interval", "500ms", "--lease-ttl", "3s"]);
    let (platform, outsider) = platform_with_outsider(builder, &netns, TTL)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let load = Load::start(&platform.http, &platform.gateway().url("/"), 4);
    // Under load before the cut: the outsider has served some of it.
    if let Err(e) = load
        .wait_served_by(&outsider.id, Instant::now(), Duration::from_secs(10))
        .await
    {
        panic!("{e}; {}", platform.describe().await);
    }
    let times = cut_and_heal(&platform, &mut netns, &outsider, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // And after the heal: the outsider serves the load again.
    let healed = Instant::now();
    let back = load
        .wait_served_by(&outsider.id, healed, Duration::from_secs(10))
        .await;
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
    assert!(
        back.is_ok(),
        "the rejoined instance served none of the load: {back:?}"
    );
}
