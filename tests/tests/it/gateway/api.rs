//! The admin API against a real etcd and real processes: writes reaching
//! etcd and coming back through the watchers, a retired instance draining
//! and leaving, 503 when etcd stops, the listener's token rule at start-up,
//! server-sent events over a socket and the dashboard served. Each
//! endpoint's success and error cases are unit tests of the gateway
//! (`gateway/src/admin/api/tests_endpoints.rs`, in-process).

use std::time::Duration;

use registry::model::ScalingEvent;
use registry::{Keys, RegistryValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shoal_tests::process::Proc;
use shoal_tests::{Etcd, Platform, bin_path, wait_until_async};

use super::{get_json, http, wait_json};
use crate::{is_gone, wait_instance};

const TOKEN: &str = "test-token-0123456789abcdef";

/// Send `method url` with an optional JSON body and bearer token; the status
/// and the JSON body (`Null` when empty).
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: String,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = http.request(method.clone(), &url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {text}"))
    };
    (status, value)
}

/// An error answer: the status, the code, and a detail containing `hint`.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, error: &str, hint: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body:#}");
    assert_eq!(body["error"], error, "{body:#}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(hint),
        "detail should mention `{hint}`: {detail}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(2),
        "only error and detail: {body:#}"
    );
}

async fn etcd_value(client: &etcd_client::Client, key: &str) -> Option<Value> {
    let mut client = client.clone();
    let got = client.get(key, None).await.expect("etcd get");
    got.kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).expect("JSON in etcd"))
}

/// A write with the token reaches the real etcd and comes back through the
/// gateway's watchers; without it, nothing is written. Every other case of
/// every endpoint (bad input, 404, 409, the pin's compare-and-set, bad
/// paths and methods) is a unit test of the gateway's admin API, in-process
/// over the in-memory registry (`gateway/src/admin/api/tests_endpoints.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_policies_are_written_through_the_api_with_the_token() {
    let platform = Platform::builder()
        .gateway(&["--admin-token", TOKEN])
        .start()
        .await;
    let (client, gateway) = (&platform.client, platform.gateway());
    let http = http();
    let url = |path: &str| gateway.admin_url(path);
    let keys = Keys::default();

    let routes = wait_json(
        &http,
        &url("/api/v1/routes"),
        Duration::from_secs(5),
        "an empty route list",
        |v| v.as_array().is_some_and(Vec::is_empty),
    )
    .await;
    assert_eq!(routes, json!([]));

    let route = r#"{"service":"api","path_prefix":"/api","policy":"round-robin"}"#;
    let got = call(
        &http,
        Method::PUT,
        url("/api/v1/routes/api"),
        Some(route),
        None,
    )
    .await;
    assert_error(
        &got,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Authorization: Bearer",
    );
    assert_eq!(
        etcd_value(client, &keys.route("api")).await,
        None,
        "nothing written"
    );
    let (status, body) = call(
        &http,
        Method::PUT,
        url("/api/v1/routes/api"),
        Some(route),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let stored = etcd_value(client, &keys.route("api"))
        .await
        .expect("route stored");
    assert_eq!(stored["path_prefix"], "/api");
    wait_json(
        &http,
        &url("/api/v1/routes"),
        Duration::from_secs(5),
        "the route listed",
        |v| v[0]["name"] == "api" && v[0]["path_prefix"] == "/api",
    )
    .await;

    let policy = r#"{"min":1,"max":5,"metric":"inflight","target":4}"#;
    let (status, body) = call(
        &http,
        Method::PUT,
        url("/api/v1/policies/app"),
        Some(policy),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let (status, body) = call(
        &http,
        Method::PUT,
        url("/api/v1/services/app/pin"),
        Some(r#"{"replicas":3}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(
        etcd_value(client, &keys.policy("app")).await.unwrap()["pinned"],
        3
    );
    wait_json(
        &http,
        &url("/api/v1/policies"),
        Duration::from_secs(5),
        "the pinned policy listed",
        |v| v[0]["service"] == "app" && v[0]["pinned"] == 3,
    )
    .await;
    let (status, _) = call(
        &http,
        Method::DELETE,
        url("/api/v1/routes/api"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etcd_value(client, &keys.route("api")).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_rollouts_and_retiring_an_instance() {
    let platform = Platform::builder()
        .app_servers(1)
        .gateway(&["--admin-token", TOKEN])
        .start()
        .await;
    let (apps, gateway) = (&platform.app_servers, platform.gateway());
    let client = &platform.client;
    let http = http();
    let url = |path: &str| gateway.admin_url(path);
    let keys = Keys::default();

    // Events, written as the autoscaler does.
    let mut kv = client.clone();
    for (seq, desired) in [(1u64, 2u32), (2, 3), (3, 4)] {
        let event = ScalingEvent {
            service: "app".into(),
            at: chrono::Utc::now(),
            kind: "decision".into(),
            current: desired - 1,
            desired,
            reason: format!("{} → {desired}: test", desired - 1),
            bounded_by: None,
            inputs: Default::default(),
            instance: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        ScalingEvent::decode(&keys, &keys.event("app", seq), json.as_bytes()).unwrap();
        kv.put(keys.event("app", seq), json, None).await.unwrap();
    }
    let events = wait_json(
        &http,
        &url("/api/v1/events/app?limit=2"),
        Duration::from_secs(5),
        "the two newest events, once the third has arrived",
        |v| {
            v.as_array()
                .is_some_and(|a| a.len() == 2 && a[0]["desired"] != 3)
        },
    )
    .await;
    assert_eq!(events[0]["desired"], 4, "newest first: {events:#}");
    assert_eq!(events[1]["desired"], 3, "{events:#}");
    let all = get_json(&http, &url("/api/v1/events/app")).await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(
        get_json(&http, &url("/api/v1/events/other")).await,
        json!([])
    );
    // A rollout request lands in the real etcd (its refusals are unit tests).
    let (status, _) = call(
        &http,
        Method::PUT,
        url("/api/v1/policies/app"),
        Some(r#"{"min":1,"max":3,"metric":"rps","target":50}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(
        &http,
        Method::POST,
        url("/api/v1/services/app/rollout"),
        Some(r#"{"max_surge":2}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:#}");
    let stored = etcd_value(client, &keys.rollout("app"))
        .await
        .expect("rollout stored");
    assert_eq!(stored["requested_by"], "api");
    wait_json(
        &http,
        &url("/api/v1/rollouts"),
        Duration::from_secs(5),
        "the rollout listed",
        |v| v[0]["service"] == "app" && v[0]["max_surge"] == 2,
    )
    .await;

    // Retire: the instance drains and leaves by itself.
    let app = &apps[0];
    let retire = |id: &str| {
        let url = url(&format!("/api/v1/services/app/instances/{id}/retire"));
        let http = http.clone();
        async move {
            call(
                &http,
                Method::POST,
                url,
                Some(r#"{"reason":"test says so"}"#),
                Some(TOKEN),
            )
            .await
        }
    };
    let got = retire("no-such-instance").await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "no registered instance `no-such-instance`",
    );
    assert_eq!(
        etcd_value(client, &keys.retire("app", "no-such-instance")).await,
        None
    );
    let (status, body) = retire(&app.id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:#}");
    assert_eq!(body["key"], keys.retire("app", &app.id));
    let took = wait_instance(
        client,
        &app.key(),
        Duration::from_secs(10),
        "the retired instance gone",
        is_gone,
    )
    .await;
    println!("measured: retired through the API, gone from the registry after {took:?}");
    wait_until_async(
        Duration::from_secs(5),
        "the retire key deleted by the instance",
        || async {
            etcd_value(client, &keys.retire("app", &app.id))
                .await
                .is_none()
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_writes_are_503_and_reads_keep_the_last_snapshot() {
    // No token configured: writes need none.
    let mut platform = Platform::builder().gateway(&[]).start().await;
    let gateway = &platform.gateways[0];
    let http = http();
    let url = |path: &str| gateway.admin_url(path);
    let (status, body) = call(
        &http,
        Method::PUT,
        url("/api/v1/policies/app"),
        Some(r#"{"min":0,"max":2,"metric":"inflight","target":4}"#),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "no token configured, none needed: {body:#}"
    );
    wait_json(
        &http,
        &url("/api/v1/policies"),
        Duration::from_secs(5),
        "the policy listed",
        |v| v[0]["service"] == "app",
    )
    .await;

    platform.etcd.stop().await;
    let got = call(
        &http,
        Method::PUT,
        url("/api/v1/routes/api"),
        Some(r#"{"service":"api"}"#),
        None,
    )
    .await;
    assert_error(
        &got,
        StatusCode::SERVICE_UNAVAILABLE,
        "registry_unavailable",
        "the registry (etcd) cannot be reached",
    );
    let response = http.get(url("/api/v1/policies")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let policies: Value = response.json().await.unwrap();
    assert_eq!(
        policies[0]["service"], "app",
        "the last snapshot is still served"
    );
    wait_until_async(
        Duration::from_secs(10),
        "reads marked as coming from an unreachable registry",
        || async {
            let response = http.get(url("/api/v1/policies")).send().await.unwrap();
            response
                .headers()
                .get("x-shoal-registry")
                .is_some_and(|v| v == "unreachable")
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_listener_beyond_loopback_needs_a_token() {
    let etcd = Etcd::start().await;
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "--etcd",
            &etcd.endpoint(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let logs = shoal_tests::binaries::logs_dir();
    let mut refused = Proc::spawn("gateway", &bin_path("gateway"), &args(&[]), &[], &logs);
    let status = refused.wait_exit(Duration::from_secs(10)).await;
    assert!(
        !status.success(),
        "the gateway must refuse to start: {status}"
    );
    let stderr = refused.stderr();
    assert!(
        stderr.contains("--admin-token"),
        "the error says what to do: {stderr}"
    );
    assert!(refused.stdout_lines().is_empty(), "it never listened");

    let started = Proc::spawn(
        "gateway",
        &bin_path("gateway"),
        &args(&["--admin-token", TOKEN]),
        &[],
        &logs,
    );
    let listening: Value = started
        .wait_event("listening", Duration::from_secs(10))
        .await;
    assert!(
        listening["admin_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("0.0.0.0:")),
        "{listening}"
    );
}

/// Read server-sent events from `resp` until one named `name`; its data as JSON.
async fn next_event(resp: &mut reqwest::Response, buffer: &mut String, name: &str) -> Value {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if event == name {
                return serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("{name}: {e}: {data}"));
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{name}` event within 5 s"))
            .expect("the stream stays open")
            .expect("the stream does not end");
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_history_openapi_and_dashboard_are_served() {
    let mut platform = Platform::builder()
        .app_servers(1)
        .policy(
            "app",
            r#"{"service":"app","min":1,"max":4,"metric":"rps","target":50}"#,
        )
        .start()
        .await;
    let keys = Keys::default();
    let mut kv = platform.client.clone();
    let event = ScalingEvent {
        service: "app".into(),
        at: chrono::Utc::now(),
        kind: "decision".into(),
        current: 1,
        desired: 2,
        reason: "1 → 2: test".into(),
        bounded_by: None,
        inputs: Default::default(),
        instance: None,
    };
    kv.put(
        keys.event("app", 7),
        serde_json::to_string(&event).unwrap(),
        None,
    )
    .await
    .unwrap();
    let app_id = platform.app_servers[0].id.clone();
    let gateway = platform.start_gateway(&[]).await;
    let http = http();

    // The stream: history first, then snapshots with everything the page shows.
    let mut stream = http
        .get(gateway.admin_url("/api/v1/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let content_type = stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut buffer = String::new();
    let history = next_event(&mut stream, &mut buffer, "history").await;
    assert!(history.is_object(), "{history}");
    let started = std::time::Instant::now();
    let snapshot = loop {
        let snapshot = next_event(&mut stream, &mut buffer, "snapshot").await;
        let ready = snapshot["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "app"))
            .is_some_and(|app| {
                app["instances"][0]["state"] == "ready" && app["events"][0]["desired"] == 2
            });
        // Each of the gateway's watchers lists on its own: until the last
        // has, the snapshot says the registry is not connected yet.
        if ready && snapshot["registry"] == "connected" {
            break snapshot;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "last snapshot: {snapshot:#}"
        );
    };
    let app = snapshot["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "app")
        .unwrap();
    assert_eq!(app["instances"][0]["id"], app_id, "{app:#}");
    assert_eq!(app["policy"]["max"], 4, "{app:#}");
    assert_eq!(app["desired"], 2, "{app:#}");
    assert_eq!(app["events"][0]["reason"], "1 → 2: test", "{app:#}");
    // At least one snapshot a second, with nothing changing.
    let before = std::time::Instant::now();
    next_event(&mut stream, &mut buffer, "snapshot").await;
    assert!(
        before.elapsed() < Duration::from_millis(1500),
        "{:?} between snapshots",
        before.elapsed()
    );

    // The charts' history fills at one sample a second.
    let history = wait_json(
        &http,
        &gateway.admin_url("/api/v1/history"),
        Duration::from_secs(5),
        "two samples of app",
        |v| v["app"].as_array().is_some_and(|s| s.len() >= 2),
    )
    .await;
    let last = history["app"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (last["ready"].clone(), last["desired"].clone()),
        (json!(1), json!(2)),
        "{last}"
    );

    // The document and the page.
    let doc = get_json(&http, &gateway.admin_url("/api/openapi.json")).await;
    assert!(
        doc["paths"]["/api/v1/services/{service}/rollout"]["post"].is_object(),
        "{doc:#}"
    );
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ] {
        let resp = http.get(gateway.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let headers = resp.headers();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
    }
}
