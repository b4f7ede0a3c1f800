//! Balancing policies as a client sees them: round-robin spread, consistent
//! hashing (stable, and only about 1/(N+1) of the keys move to a new
//! instance), sticky cookies that survive the pinned instance's death.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use shoal_tests::{Gateway, Platform, wait_until_async};

use super::{gateway_log, http, served_by, spread_of, wait_known, wait_routed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_300_requests_evenly_over_3_instances() {
    // Slow start off: every instance is new to a new gateway, and slow start
    // skips new instances at random for its first 10 s; this test counts the
    // steady-state spread, not the ramp.
    let platform = Platform::builder()
        .app_servers(3)
        .gateway(&["--default-policy", "round-robin", "--slow-start", "0s"])
        .start()
        .await;
    let (apps, gateway) = (&platform.app_servers, platform.gateway());
    let http = http();
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    wait_routed(&http, gateway, "/", &ids, Duration::from_secs(5)).await;

    let spread = spread_of(&http, gateway, "/", 300).await;
    println!("measured: round-robin spread of 300 requests: {spread:?}");
    assert_eq!(
        spread.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut sorted = ids.clone();
            sorted.sort();
            sorted
        },
        "served by other instances than the three registered"
    );
    for (id, n) in &spread {
        assert!((90..=110).contains(n), "{id} served {n} of 300: {spread:?}");
    }
}

/// Which instance serves each key, the key sent in header `x-user`.
pub(crate) async fn map_keys(
    http: &reqwest::Client,
    gateway: &Gateway,
    keys: &[String],
) -> BTreeMap<String, String> {
    futures::stream::iter(keys)
        .map(|key| async move {
            let resp = http
                .get(gateway.url("/"))
                .header("x-user", key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("key {key}: {e}"));
            assert_eq!(resp.status(), 200, "key {key}");
            (key.clone(), served_by(&resp))
        })
        .buffer_unordered(8)
        .collect()
        .await
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_stable_and_a_fourth_instance_takes_about_a_quarter_of_the_keys() {
    // Slow start off: with it a new instance's weight ramps up, so the fourth
    // would win fewer keys than its 1/4 until the window has passed.
    let platform = Platform::builder()
        .route(
            "by-user",
            r#"{"path_prefix":"/","service":"app","policy":"consistent-hash","hash_key":{"from":"header","name":"x-user"}}"#,
        )
        .route(
            "by-path",
            r#"{"path_prefix":"/users","service":"app","policy":"consistent-hash","hash_key":{"from":"path-segment","name":0}}"#,
        )
        .app_servers(3)
        .gateway(&["--slow-start", "0s"])
        .start()
        .await;
    let (apps, gateway) = (&platform.app_servers, platform.gateway());
    let http = http();

    // The route is in force once a few keys map the same way twice over all
    // three instances (under the default least-request policy they would not).
    let probe = keys("probe-", 30);
    let ids: Vec<String> = apps.iter().map(|a| a.id.clone()).collect();
    wait_until_async(
        Duration::from_secs(5),
        "the hash route over 3 instances",
        || async {
            let a = map_keys(&http, gateway, &probe).await;
            let b = map_keys(&http, gateway, &probe).await;
            a == b && ids.iter().all(|id| a.values().any(|v| v == id))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", gateway_log(gateway)));

    let keys = keys("user-", 1000);
    let before = map_keys(&http, gateway, &keys).await;
    let again = map_keys(&http, gateway, &keys).await;
    let changed = keys.iter().filter(|k| before[*k] != again[*k]).count();
    assert_eq!(
        changed, 0,
        "{changed} of 1000 keys moved with no change in the set"
    );
    for id in &ids {
        let n = before.values().filter(|v| *v == id).count();
        assert!(
            (250..=420).contains(&n),
            "{id} won {n} of 1000 keys over 3 instances"
        );
    }

    // A key taken from the path maps as the same key taken from a header: the
    // hash depends on the key, not on where it came from.
    for key in keys.iter().take(30) {
        let resp = http
            .get(gateway.url(&format!("/users/{key}/profile")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            served_by(&resp),
            before[key],
            "/users/{key}/profile (path segment 0 after /users)"
        );
    }

    let fourth = platform.start_app_servers(1, "app").await;
    let new = fourth[0].id.clone();
    wait_until_async(
        Duration::from_secs(5),
        "a key on the fourth instance",
        || async {
            map_keys(&http, gateway, &probe)
                .await
                .values()
                .any(|v| *v == new)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", gateway_log(gateway)));

    let after = map_keys(&http, gateway, &keys).await;
    let moved: Vec<&String> = keys.iter().filter(|k| before[*k] != after[*k]).collect();
    let elsewhere: Vec<_> = moved
        .iter()
        .filter(|k| after[**k] != new)
        .map(|k| (k, &before[*k], &after[*k]))
        .take(5)
        .collect();
    println!(
        "measured: consistent hash, 3 → 4 instances: {} of 1000 keys moved",
        moved.len()
    );
    assert!(
        elsewhere.is_empty(),
        "keys moved between old instances: {elsewhere:?}"
    );
    assert!(
        (150..=350).contains(&moved.len()),
        "{} of 1000 keys moved; about 250 expected",
        moved.len()
    );
}

/// The value of the sticky cookie for service `app` in `resp`'s Set-Cookie, if set.
fn sticky_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "shoal-sticky-app")
        .map(|(_, value)| value.to_owned())
}

async fn get_with_cookie(
    http: &reqwest::Client,
    gateway: &Gateway,
    pinned: Option<&str>,
) -> reqwest::Response {
    let mut request = http.get(gateway.url("/"));
    if let Some(id) = pinned {
        request = request.header("cookie", format!("theme=dark; shoal-sticky-app={id}"));
    }
    let resp = request.send().await.expect("request through the gateway");
    assert_eq!(resp.status(), 200, "cookie {pinned:?}");
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_pins_and_is_rewritten_when_the_pinned_instance_dies() {
    let mut platform = Platform::builder()
        .app_servers(3)
        .gateway(&["--default-policy", "sticky"])
        .start()
        .await;
    let mut apps = std::mem::take(&mut platform.app_servers);
    let gateway = platform.gateway();
    let http = http();

    let first = get_with_cookie(&http, gateway, None).await;
    let pinned = served_by(&first);
    assert_eq!(
        sticky_cookie(&first).as_deref(),
        Some(pinned.as_str()),
        "the first response pins to the instance that served it; headers {:?}",
        first.headers()
    );
    // Make sure the gateway knows every instance before relying on the others.
    let ids: Vec<String> = apps.iter().map(|a| a.id.clone()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_known(&http, gateway, "app", &id_refs, Duration::from_secs(5)).await;

    for i in 0..20 {
        let resp = get_with_cookie(&http, gateway, Some(&pinned)).await;
        assert_eq!(served_by(&resp), pinned, "request {i} with the cookie");
        let rewritten = sticky_cookie(&resp);
        assert!(
            rewritten.is_none() || rewritten.as_deref() == Some(pinned.as_str()),
            "request {i}: cookie rewritten to {rewritten:?} while its instance is alive"
        );
    }

    // A cookie naming no instance is replaced.
    let resp = get_with_cookie(&http, gateway, Some("no-such-instance")).await;
    assert_eq!(sticky_cookie(&resp), Some(served_by(&resp)));

    let victim = apps
        .iter_mut()
        .find(|a| a.id == pinned)
        .expect("pinned to one of ours");
    victim.proc.kill9().await;

    let resp = get_with_cookie(&http, gateway, Some(&pinned)).await;
    let moved = served_by(&resp);
    assert_ne!(moved, pinned, "served by the dead instance?");
    assert!(ids.contains(&moved), "served by {moved}");
    assert_eq!(
        sticky_cookie(&resp).as_deref(),
        Some(moved.as_str()),
        "the cookie must be rewritten to the instance that served; headers {:?}",
        resp.headers()
    );
    for i in 0..10 {
        let resp = get_with_cookie(&http, gateway, Some(&moved)).await;
        assert_eq!(served_by(&resp), moved, "request {i} with the new cookie");
    }
}
