//! The dashboard in a real browser (headless Chromium through chromedriver):
//! instance cards follow the registry live without a reload, registry text is
//! shown as text, every declared service shows its spec version and a
//! rollout its progress, and the "registry unreachable" banner follows etcd.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use registry::Keys;
use registry::model::ScalingEvent;
use shoal_tests::binaries::{instance_in_registry, logs_dir};
use shoal_tests::browser::Browser;
use shoal_tests::{AppServer, AppServerOptions, Platform, wait_until_async};

use crate::{is_gone, wait_instance};

/// Stated in the issue: a registry change shows on the page within this.
const LIVE_WITHIN: Duration = Duration::from_secs(2);

const HOSTILE_VERSION: &str = "<img src=x onerror=alert(1)>";
/// No comma: `--label` splits on commas.
const HOSTILE_LABEL: &str = "<img src=x onerror=\"document.body.dataset.pwned=1\">";

fn card(id: &str) -> String {
    format!("article[data-instance-id=\"{id}\"]")
}

async fn count(client: &Client, css: &str) -> usize {
    client
        .find_all(Locator::Css(css))
        .await
        .map(|found| found.len())
        .unwrap_or(0)
}

/// Poll the page until `css` matches `n` elements; how long it took.
async fn wait_count(
    client: &Client,
    css: &str,
    n: usize,
    timeout: Duration,
    what: &str,
) -> Duration {
    wait_until_async(timeout, what, || async { count(client, css).await == n })
        .await
        .unwrap_or_else(|e| panic!("{e} (selector {css})"))
}

/// The text of the first element `css` matches, read in one script call (the
/// page redraws every second, so an element found in one call may be gone by
/// the next).
async fn text(client: &Client, css: &str) -> String {
    let got = client
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![css.into()],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {css}: {e}"));
    got.as_str()
        .unwrap_or_else(|| panic!("no {css} on the page"))
        .to_owned()
}

/// Wait until the registry has (or no longer has) `key`; the moment it did.
async fn registry_change(
    etcd_client: &etcd_client::Client,
    key: &str,
    present: bool,
    what: &str,
) -> Instant {
    wait_until_async(Duration::from_secs(15), what, || async {
        instance_in_registry(etcd_client, key).await.is_some() == present
    })
    .await
    .unwrap_or_else(|e| panic!("{e} (key {key})"));
    Instant::now()
}

fn screenshot_path() -> PathBuf {
    // logs_dir() is {target}/test-logs.
    let logs = logs_dir();
    logs.parent()
        .map(|t| t.to_path_buf())
        .unwrap_or(logs)
        .join("dashboard-screenshot.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_registry_live_and_shows_text_as_text() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let page = browser.client();
    let keys = Keys::default();
    let options = |extra: &[&str]| AppServerOptions {
        lease_ttl: Duration::from_secs(2),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let hostile_label = format!("note={HOSTILE_LABEL}");
    // A policy and (below) an event, so the header, the desired line and
    // the timeline have something.
    let mut platform = Platform::builder()
        .app_servers_with(1, options(&["--version-label", "1.4.2", "--zone", "z1"]))
        .app_servers_with(
            1,
            options(&[
                "--version-label",
                HOSTILE_VERSION,
                "--label",
                &hostile_label,
            ]),
        )
        .policy(
            "app",
            r#"{"service":"app","min":1,"max":4,"metric":"rps","target":50}"#,
        )
        .start()
        .await;
    let mut hostile = platform.app_servers.remove(1);
    let plain = platform.app_servers.remove(0);
    let etcd_client = platform.client.clone();
    let mut kv = etcd_client.clone();
    let event = ScalingEvent {
        service: "app".into(),
        at: chrono::Utc::now(),
        kind: "decision".into(),
        current: 2,
        desired: 3,
        reason: format!("2 → 3: {HOSTILE_VERSION} per instance over target"),
        bounded_by: None,
        inputs: Default::default(),
        instance: None,
    };
    kv.put(
        keys.event("app", 1),
        serde_json::to_string(&event).unwrap(),
        None,
    )
    .await
    .unwrap();

    platform.start_gateway(&[]).await;
    let gateway = &platform.gateways[0];
    // Some traffic for the charts, bounded in count and time.
    let traffic = {
        let url = gateway.url("/");
        tokio::spawn(async move {
            let http = crate::gateway::http();
            for _ in 0..3000 {
                let _ignored = http.get(&url).timeout(Duration::from_secs(1)).send().await;
                // A client's pace, not a wait: a request every 20 ms.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let dashboard = gateway.admin_url("/dashboard");
    page.goto(&dashboard)
        .await
        .unwrap_or_else(|e| panic!("open {dashboard}: {e}"));
    for app in [&plain, &hostile] {
        wait_count(
            page,
            &card(&app.id),
            1,
            Duration::from_secs(10),
            "an instance card",
        )
        .await;
    }
    assert_eq!(
        text(page, &format!("{} .state", card(&plain.id))).await,
        "ready"
    );
    assert_eq!(
        text(
            page,
            &format!("{} [data-field=\"version\"]", card(&plain.id))
        )
        .await,
        "1.4.2"
    );
    assert_eq!(
        text(
            page,
            &format!("{} [data-field=\"address\"]", card(&plain.id))
        )
        .await,
        plain.addr
    );

    // Registry text is text: the hostile strings show literally, no element is made of them.
    let hostile_card = card(&hostile.id);
    assert_eq!(
        text(page, &format!("{hostile_card} [data-field=\"version\"]")).await,
        HOSTILE_VERSION
    );
    assert_eq!(
        text(page, &format!("{hostile_card} [data-field=\"labels\"]")).await,
        hostile_label
    );
    wait_count(
        page,
        ".events li",
        1,
        Duration::from_secs(5),
        "the scaling event in the timeline",
    )
    .await;
    let reason = text(page, ".events li .reason").await;
    assert!(reason.contains(HOSTILE_VERSION), "{reason}");
    assert_eq!(
        count(page, "img").await,
        0,
        "no img element may come from registry text"
    );
    let pwned = page
        .execute("return document.body.getAttribute('data-pwned');", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::Value::Null, "an onerror handler ran");

    // Declared services: each with its spec version (short), and a rollout's
    // progress from the instances' versions (neither runs the spec's).
    let specs: Vec<registry::spec::Service> = [
        r#"{"name":"app","process":{"argv":["app-server","--port","{port}"]}}"#,
        r#"{"name":"web","process":{"argv":["node","server.js","{port}"]}}"#,
    ]
    .iter()
    .map(|json| serde_json::from_str(json).unwrap())
    .collect();
    for spec in &specs {
        kv.put(
            keys.service(&spec.name),
            serde_json::to_string(spec).unwrap(),
            None,
        )
        .await
        .unwrap();
    }
    kv.put(
        keys.rollout("app"),
        serde_json::to_string(&registry::model::Rollout::request("app", "test")).unwrap(),
        None,
    )
    .await
    .unwrap();
    for spec in &specs {
        let css = format!(
            "section[data-service=\"{}\"] [data-spec-version=\"{}\"]",
            spec.name,
            spec.version()
        );
        wait_count(page, &css, 1, Duration::from_secs(5), "the spec version").await;
        assert_eq!(
            text(page, &css).await,
            format!("spec {}", &spec.version()[..8])
        );
    }
    let rollout = "section[data-service=\"app\"] [data-rollout]";
    wait_count(
        page,
        rollout,
        1,
        Duration::from_secs(5),
        "the rollout badge",
    )
    .await;
    let progress = text(page, rollout).await;
    assert!(
        progress.starts_with("rolling: 0/2 on new version"),
        "{progress}"
    );

    // A new instance shows up without a reload.
    let added = AppServer::start(&platform.etcd, options(&["--version-label", "2.0.0"])).await;
    let registered = registry_change(
        &etcd_client,
        &added.key(),
        true,
        "the new instance registered",
    )
    .await;
    wait_count(
        page,
        &card(&added.id),
        1,
        Duration::from_secs(10),
        "the new instance's card",
    )
    .await;
    let shown = registered.elapsed();
    println!("measured: registry change to page (instance registered → card shown): {shown:?}");
    assert!(shown <= LIVE_WITHIN, "the new card took {shown:?}");

    // Charts are drawn from the history (one sample a second).
    wait_count(
        page,
        "section[data-service=\"app\"] .chart",
        3,
        Duration::from_secs(5),
        "three charts",
    )
    .await;
    wait_until_async(
        Duration::from_secs(15),
        "chart lines of 5 samples",
        || async {
            // Points per line, counted in one script call (see `text`).
            let points = page
                .execute(
                    "return [...document.querySelectorAll(arguments[0])]\
                       .map((l) => l.getAttribute('points').trim().split(' ').length);",
                    vec!["section[data-service=\"app\"] .chart polyline".into()],
                )
                .await
                .unwrap_or_default();
            let points: Vec<u64> = points
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_u64()).collect())
                .unwrap_or_default();
            points.len() >= 3 && points.iter().all(|&n| n >= 5)
        },
    )
    .await
    .unwrap();
    let screenshot = page.screenshot().await.expect("screenshot");
    let path = screenshot_path();
    std::fs::write(&path, &screenshot).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("screenshot: {}", path.display());

    // SIGTERM: the instance drains and deregisters at once.
    let mut added = added;
    added.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let gone = registry_change(
        &etcd_client,
        &added.key(),
        false,
        "the SIGTERMed instance deregistered",
    )
    .await;
    wait_count(
        page,
        &card(&added.id),
        0,
        Duration::from_secs(10),
        "the drained card gone",
    )
    .await;
    let shown = gone.elapsed();
    println!("measured: registry change to page (SIGTERM, deregistered → card gone): {shown:?}");
    assert!(
        shown <= LIVE_WITHIN,
        "the drained card took {shown:?} to go"
    );
    added.proc.wait_exit(Duration::from_secs(10)).await;

    // kill -9: the entry leaves when its 2 s lease expires.
    let killed_at = Instant::now();
    hostile.proc.kill9().await;
    wait_instance(
        &etcd_client,
        &hostile.key(),
        Duration::from_secs(10),
        "the killed instance's lease expired",
        is_gone,
    )
    .await;
    let gone = Instant::now();
    wait_count(
        page,
        &hostile_card,
        0,
        Duration::from_secs(10),
        "the killed card gone",
    )
    .await;
    let shown = gone.elapsed();
    println!(
        "measured: registry change to page (kill -9, lease expired {:?} after the kill → card gone): {shown:?}",
        gone - killed_at
    );
    assert!(shown <= LIVE_WITHIN, "the killed card took {shown:?} to go");
    assert_eq!(count(page, &card(&plain.id)).await, 1, "the others stay");

    // The banner follows etcd.
    assert_eq!(
        count(page, "#banner:not([hidden])").await,
        0,
        "no banner while etcd is up"
    );
    platform.etcd.stop().await;
    let took = wait_count(
        page,
        "#banner[data-registry=\"unreachable\"]:not([hidden])",
        1,
        Duration::from_secs(10),
        "the registry-unreachable banner",
    )
    .await;
    let banner = text(page, "#banner").await;
    assert!(banner.contains("Registry unreachable"), "{banner}");
    println!("measured: etcd stopped → banner shown: {took:?}");
    assert_eq!(
        count(page, &card(&plain.id)).await,
        1,
        "the last known instances stay on the page"
    );
    platform.etcd.start_again().await;
    wait_count(
        page,
        "#banner:not([hidden])",
        0,
        Duration::from_secs(15),
        "the banner gone once etcd is back",
    )
    .await;

    traffic.abort();
}
