//! The admin listener after real traffic: per-instance stats that add up,
//! Prometheus metrics, health, and the gateway's own registry entry.

use std::time::Duration;

use registry::Keys;
use shoal_tests::Platform;

use super::{get_json, http, instance_stats, metric_sum, metrics_text, spread_of, wait_json};

/// Sum of the samples of `metric` whose labels include `label`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_stats_and_metrics_add_up_to_the_traffic_sent() {
    // Slow start off so that round-robin splits the requests exactly in two.
    let platform = Platform::builder()
        .app_servers(2)
        .gateway(&["--default-policy", "round-robin", "--slow-start", "0s"])
        .start()
        .await;
    let (apps, gateway) = (&platform.app_servers, platform.gateway());
    let http = http();
    let url = gateway.admin_url("/api/v1/services/app");

    // Wait on the admin API, not on traffic, so that every request is counted below.
    wait_json(
        &http,
        &url,
        Duration::from_secs(5),
        "both instances listed",
        |v| apps.iter().all(|a| instance_stats(v, &a.id).is_some()),
    )
    .await;

    let sent = 60;
    let spread = spread_of(&http, gateway, "/", sent).await;
    assert_eq!(spread.values().copied().collect::<Vec<_>>(), [30, 30]);

    let total = |service: &serde_json::Value| -> u64 {
        apps.iter()
            .filter_map(|a| instance_stats(service, &a.id)?["requests_total"].as_u64())
            .sum()
    };
    // Rates and percentiles cover whole seconds, so wait for the second of
    // the traffic to be complete.
    let last = wait_json(
        &http,
        &url,
        Duration::from_secs(3),
        "the traffic in the stats window",
        |v| {
            total(v) >= u64::from(sent)
                && apps.iter().all(|a| {
                    instance_stats(v, &a.id).is_some_and(|s| s["rate"].as_f64() > Some(0.0))
                })
        },
    )
    .await;
    assert_eq!(total(&last), u64::from(sent), "{last:#}");
    for app in apps {
        let s = instance_stats(&last, &app.id).unwrap();
        assert_eq!(s["requests_total"], 30, "{s:#}");
        assert_eq!(s["in_flight"], 0, "{s:#}");
        assert_eq!(s["ejected"], false, "{s:#}");
        assert_eq!(s["state"], "ready", "{s:#}");
        assert_eq!(s["addr"], app.addr, "{s:#}");
        let rate = s["rate"].as_f64().unwrap_or(-1.0);
        assert!(
            rate > 0.0 && rate <= 30.0,
            "rate {rate} for 30 requests: {s:#}"
        );
        let p95 = s["p95_ms"].as_f64().unwrap_or(-1.0);
        assert!(p95 > 0.0 && p95 < 2000.0, "p95_ms {p95}: {s:#}");
    }

    // The service counts client requests; its instances count attempts (the same here).
    assert_eq!(last["requests_total"], sent, "{last:#}");
    assert_eq!(last["errors_total"], 0, "{last:#}");
    let services = get_json(&http, &gateway.admin_url("/api/v1/services")).await;
    let app = services
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "app"))
        .unwrap_or_else(|| panic!("/api/v1/services does not list app: {services:#}"));
    assert_eq!(app["requests_total"], sent, "{app:#}");
    assert_eq!(app["ready_instances"], 2, "{app:#}");

    let metrics = metrics_text(&http, gateway).await;
    let counted = metric_sum(&metrics, "shoal_gateway_requests_total", "service=\"app\"");
    assert_eq!(
        counted,
        f64::from(sent),
        "shoal_gateway_requests_total{{service=\"app\"}} over all series:\n{metrics}"
    );
    for app in apps {
        let label = format!("instance=\"{}\"", app.id);
        let attempts = metric_sum(&metrics, "shoal_gateway_upstream_requests_total", &label);
        assert_eq!(
            attempts, 30.0,
            "upstream requests to {}:\n{metrics}",
            app.id
        );
    }

    let health = get_json(&http, &gateway.admin_url("/healthz")).await;
    assert_eq!(health["registry"], "connected", "{health:#}");

    let mut client = platform.client.clone();
    let entry = client
        .get(Keys::default().gateway(&gateway.id), None)
        .await
        .unwrap();
    let entry: serde_json::Value = serde_json::from_slice(
        entry
            .kvs()
            .first()
            .expect("the gateway registers itself")
            .value(),
    )
    .unwrap();
    assert_eq!(entry["admin_addr"], gateway.admin_addr, "{entry:#}");
}
