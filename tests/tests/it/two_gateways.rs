//! Two gateways on one registry: they route alike (the same consistent-hash
//! mapping of a set of keys through both), and one of them killed (SIGKILL)
//! under load split across both costs the other's clients nothing. The
//! controller reads the killed one as silent, not as zero load: while its
//! registration lives it refuses a scale-down and says which gateway did
//! not answer, and its decision inputs keep the survivor's load.

use std::time::{Duration, Instant};

use registry::Keys;
use shoal_tests::platform::APP;
use shoal_tests::{Load, Platform, wait_for, wait_until_async};

use crate::autoscaler::events;
use crate::gateway::balancing::map_keys;
use crate::gateway::http;

/// Consistent hash on the `x-user` header for every path.
const BY_USER: &str = r#"{"path_prefix":"/","service":"app","policy":"consistent-hash","hash_key":{"from":"header","name":"x-user"}}"#;
/// `app` no longer pinned, and a target its load never reaches: the
/// controller wants to scale down to 1.
const UNPINNED: &str = r#"{"service":"app","min":1,"max":4,"metric":"inflight","target":1000}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_route_alike_and_one_killed_costs_the_others_clients_nothing() {
    // Slow start off, so that both gateways weigh every instance fully.
    let gateway_flags = ["--slow-start", "0s", "--lease-ttl", "3s"];
    let mut platform = Platform::builder()
        .route("by-user", BY_USER)
        .pinned(3)
        .gateway(&gateway_flags)
        .gateway(&gateway_flags)
        .autoscalers(1)
        .autoscaler_flags(&["--interval", "500ms", "--lease-ttl", "3s"])
        .start()
        .await;
    let http = http();
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let (a, b) = (&platform.gateways[0], &platform.gateways[1]);

    // Same mapping through both, over all three instances (the second
    // gateway may still be reading the registry at first).
    let alike = wait_for(Duration::from_secs(10), "the same mapping", || async {
        let through_a = map_keys(&http, a, &keys).await;
        let through_b = map_keys(&http, b, &keys).await;
        let instances: std::collections::BTreeSet<&String> = through_a.values().collect();
        (through_a == through_b && instances.len() == 3).then_some(through_a)
    })
    .await;
    let mapping = match alike {
        Ok(mapping) => mapping,
        Err(e) => panic!("{e}: {}", platform.describe().await),
    };
    let spread: std::collections::BTreeMap<&String, usize> =
        mapping.values().fold(Default::default(), |mut counts, id| {
            *counts.entry(id).or_default() += 1;
            counts
        });

    let load_a = Load::start(&platform.http, &a.url("/"), 4);
    let load_b = Load::start(&platform.http, &b.url("/"), 4);
    for load in [&load_a, &load_b] {
        load.wait_more_served(100, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let b_id = b.id.clone();
    platform.gateways[1].proc.kill9().await;
    let killed = Instant::now();
    // Its clients fail from here on, as they must; they are not the point.
    let report_b = load_b.stop().await;
    let since = chrono::Utc::now();
    let mut client = platform.client.clone();
    client
        .put(Keys::default().policy(APP), UNPINNED, None)
        .await
        .unwrap();

    // The controller refuses the scale-down while the killed gateway is
    // registered, naming it; its inputs still carry the survivor's answer.
    let refused = wait_until_async(Duration::from_secs(10), "a refused scale-down", || async {
        events(&platform.client)
            .await
            .iter()
            .any(|(_, e)| e.at > since && e.reason.contains("refused"))
    })
    .await;
    let refused_after = killed.elapsed();
    let gateway_key = Keys::default().gateway(&b_id);
    let gone = wait_until_async(
        Duration::from_secs(10),
        "the killed gateway's key gone",
        || {
            let mut client = platform.client.clone();
            let key = gateway_key.clone();
            async move {
                client
                    .get(key, None)
                    .await
                    .is_ok_and(|r| r.kvs().is_empty())
            }
        },
    )
    .await;
    let gone_after = killed.elapsed();
    load_a
        .wait_more_served(200, Duration::from_secs(10))
        .await
        .unwrap();
    let report_a = load_a.stop().await;
    println!(
        "measured: one of two gateways killed: {} of {} requests through the other failed \
         ({} of its own clients' requests failed at the killed one, as they must); scale-down refused for its silence {} ms \
         after the kill; its registration gone {} ms after the kill; keys per instance {spread:?}",
        report_a.failures.len(),
        report_a.served + report_a.failures.len() as u64,
        report_b.failures.len(),
        refused_after.as_millis(),
        gone_after.as_millis(),
    );
    assert!(
        report_a.failures.is_empty(),
        "{}",
        report_a.failure_summary()
    );
    refused.unwrap_or_else(|e| panic!("{e}: no scale-down refused for the killed gateway"));
    let stored = events(&platform.client).await;
    let refusal = stored
        .iter()
        .map(|(_, e)| e)
        .find(|e| e.at > since && e.reason.contains("refused"))
        .expect("the refusal");
    assert!(
        refusal.reason.contains(&b_id) && refusal.reason.contains("did not answer"),
        "the refusal names the killed gateway {b_id}: {}",
        refusal.reason
    );
    assert_eq!(
        (refusal.current, refusal.desired),
        (3, 3),
        "nothing scaled down on a partial picture"
    );
    assert_eq!(refusal.inputs.get("gateways_silent"), Some(&1.0));
    assert_eq!(refusal.inputs.get("gateways_answered"), Some(&1.0));
    gone.unwrap();
}
