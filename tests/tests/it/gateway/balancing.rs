//! Balancing policies as a client sees them: round-robin spread, consistent
//! hashing (each key on its owner on the shared ring, and a new instance
//! takes only the keys it now owns), sticky cookies that survive the pinned
//! instance's death.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use registry::ring::Ring;
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

/// The owner of each of `keys` on the shared ring (`registry::ring`) of
/// instances `ids`, each of weight 1 (the app server's default): where the
/// gateway's consistent-hash policy and the key-value store place them.
fn ring_owners(ids: &[String], keys: &[String]) -> BTreeMap<String, String> {
    // Members in id order, as the gateway's table and the store number them.
    let mut members: Vec<&str> = ids.iter().map(String::as_str).collect();
    members.sort();
    let ring = Ring::new(members.iter().map(|id| (*id, 1)));
    keys.iter()
        .map(|k| {
            let owner = ring.owner(k, |_| true).expect("a non-empty ring");
            (k.clone(), members[owner].to_owned())
        })
        .collect()
}

/// How many of `keys` each instance owns in `owners`.
fn shares(owners: &BTreeMap<String, String>) -> BTreeMap<&str, usize> {
    let mut shares = BTreeMap::new();
    for id in owners.values() {
        *shares.entry(id.as_str()).or_default() += 1;
    }
    shares
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_places_keys_on_the_shared_ring_and_a_fourth_instance_takes_only_its_own() {
    // Slow start off: with it a new instance's weight ramps up, so the fourth
    // would win fewer keys than its ring share until the window has passed.
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
    let mut ids: Vec<String> = apps.iter().map(|a| a.id.clone()).collect();
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

    // Every key goes where the ring of these three ids puts it: the exact
    // mapping, not a share within bounds. The ids are random uuids, so a
    // share bound here would fail now and then (the shares' own spread is
    // `registry::ring`'s unit tests', on fixed ids).
    let keys = keys("user-", 1000);
    let before = map_keys(&http, gateway, &keys).await;
    let expected = ring_owners(&ids, &keys);
    let misplaced: Vec<_> = keys
        .iter()
        .filter(|k| before[*k] != expected[*k])
        .map(|k| (k, &before[k], &expected[k]))
        .collect();
    assert!(
        misplaced.is_empty(),
        "{} of 1000 keys not on their ring owner (key, served by, ring owner), e.g. {:?}",
        misplaced.len(),
        &misplaced[..misplaced.len().min(5)]
    );
    println!(
        "measured: consistent hash over 3 instances: {:?}",
        shares(&before)
    );
    let again = map_keys(&http, gateway, &keys).await;
    let changed = keys.iter().filter(|k| before[*k] != again[*k]).count();
    assert_eq!(
        changed, 0,
        "{changed} of 1000 keys moved with no change in the set"
    );

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
    ids.push(new.clone());
    let expected = ring_owners(&ids, &keys);
    // In force once the probe keys map as the ring of four puts them.
    let probe_expected = ring_owners(&ids, &probe);
    wait_until_async(
        Duration::from_secs(5),
        "the probe keys on the ring of 4 instances",
        || async { map_keys(&http, gateway, &probe).await == probe_expected },
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
    let misplaced = keys.iter().filter(|k| after[*k] != expected[*k]).count();
    assert_eq!(
        misplaced, 0,
        "{misplaced} of 1000 keys not on their owner on the ring of 4"
    );
    assert!(!moved.is_empty(), "the fourth instance took no key");
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
