//! Routes' `rate_limit` end to end: requests over a bucket get 429 with
//! `Retry-After` and the gateway's JSON error, and never reach an instance;
//! buckets are per client (the forwarded address from a trusted proxy), per
//! header value, or shared by the live gateways; refusals are counted in
//! `/metrics`.
//!
//! Rates are a request per 5 s or slower, so the few requests a test sends
//! in a burst (well under a second) find the bucket as the previous ones
//! left it; every phase uses a client address or key of its own, so a
//! bucket the waits used does not count.

use std::time::Duration;

use shoal_tests::{Gateway, Platform, wait_until_async};

use super::{INSTANCE, http, metric_sum, metrics_text, served_by};

/// Send `n` GETs of `path` through `gateway` with `headers`, one after the
/// other; the statuses, and the `Retry-After` of every 429.
async fn burst(
    http: &reqwest::Client,
    gateway: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> (Vec<u16>, Vec<u64>) {
    let mut statuses = Vec::new();
    let mut retry_after = Vec::new();
    for _ in 0..n {
        let mut request = http.get(gateway.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            assert_eq!(
                served_by(&response),
                "-",
                "a refused request reaches no instance"
            );
            let after = response.headers()["retry-after"].to_str().unwrap();
            retry_after.push(after.parse().unwrap());
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"], "rate_limited", "{body}");
        } else {
            assert!(!served_by(&response).is_empty(), "{INSTANCE} is set");
        }
        statuses.push(status);
    }
    (statuses, retry_after)
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Wait until `path` is routed (any answer from an instance or the limit).
async fn wait_limited_route(http: &reqwest::Client, gateway: &Gateway, path: &str, key: &str) {
    wait_until_async(Duration::from_secs(10), path, || async {
        let answer = http
            .get(gateway.url(path))
            .header("x-forwarded-for", "198.51.100.99")
            .header("x-api-key", key)
            .send()
            .await;
        answer.is_ok_and(|r| r.status() == 200 || r.status() == 429)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_route_s_rate_get_429_per_client_and_per_key() {
    let platform = Platform::builder()
        .app_servers(1)
        .route(
            "per-client",
            r#"{"path_prefix":"/per-client/","service":"app","strip_prefix":true,"rate_limit":{"per_second":0.2,"burst":3}}"#,
        )
        .route(
            "per-key",
            r#"{"path_prefix":"/per-key/","service":"app","strip_prefix":true,"rate_limit":{"per_second":0.1,"burst":2,"by":{"from":"header","name":"X-Api-Key"}}}"#,
        )
        .gateway(&["--trusted-proxies", "127.0.0.1/32"])
        .start()
        .await;
    let (http, gateway) = (http(), platform.gateway());
    wait_limited_route(&http, gateway, "/per-client/", "waiting").await;
    wait_limited_route(&http, gateway, "/per-key/", "waiting").await;

    // Per client: the bucket's 3, then 429 with the time to the next token
    // (5 s at 0.2/s, rounded up). Another client has a bucket of its own.
    let client = |ip: &'static str| [("x-forwarded-for", ip)];
    let (a, retry_after) = burst(&http, gateway, "/per-client/", &client("203.0.113.7"), 8).await;
    assert_eq!(a[..3], [200, 200, 200], "{a:?}");
    assert_eq!(count(&a, 429), 5, "{a:?}");
    assert!(
        retry_after.iter().all(|s| (1..=5).contains(s)),
        "{retry_after:?}"
    );
    let (b, _) = burst(&http, gateway, "/per-client/", &client("203.0.113.8"), 5).await;
    assert_eq!(b, [200, 200, 200, 429, 429], "another client");

    // Per key: each API key has its own 2, whatever the client.
    let key = |k: &'static str| [("x-api-key", k)];
    let (alice, _) = burst(&http, gateway, "/per-key/", &key("alice"), 4).await;
    let (bob, _) = burst(&http, gateway, "/per-key/", &key("bob"), 4).await;
    let (alice_again, _) = burst(&http, gateway, "/per-key/", &key("alice"), 1).await;
    assert_eq!(alice, [200, 200, 429, 429]);
    assert_eq!(bob, [200, 200, 429, 429]);
    assert_eq!(alice_again, [429], "alice's bucket is still empty");

    let text = metrics_text(&http, gateway).await;
    let limited = |route: &str| {
        metric_sum(
            &text,
            "shoal_gateway_rate_limited_total",
            &format!("route=\"{route}\""),
        )
    };
    // The waits may have been refused too (their own client and key).
    assert!(limited("per-client") >= 7.0, "{text}");
    assert!(limited("per-key") >= 5.0, "{text}");
    assert_eq!(
        metric_sum(&text, "shoal_gateway_requests_total", "class=\"4xx\""),
        limited("per-client") + limited("per-key"),
        "every 4xx was a refusal: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limit_is_split_between_the_live_gateways() {
    let platform = Platform::builder()
        .app_servers(1)
        .route(
            "shared",
            r#"{"path_prefix":"/shared/","service":"app","strip_prefix":true,"rate_limit":{"per_second":0.4,"burst":6,"by":{"from":"route"},"shared":true}}"#,
        )
        .gateway(&[])
        .gateway(&[])
        .start()
        .await;
    let http = http();
    for gateway in &platform.gateways {
        wait_until_async(Duration::from_secs(10), "2 live gateways", || async {
            let text = metrics_text(&http, gateway).await;
            text.contains("\nshoal_gateway_live_gateways 2\n")
        })
        .await
        .unwrap();
    }
    // 6 for the route over 2 gateways: 3 through each, not 6.
    for gateway in &platform.gateways {
        let (statuses, _) = burst(&http, gateway, "/shared/", &[], 8).await;
        assert_eq!(count(&statuses, 200), 3, "{statuses:?}");
        assert_eq!(count(&statuses, 429), 5, "{statuses:?}");
    }
}
