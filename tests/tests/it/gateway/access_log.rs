//! The access log (`--access-log FILE`) and the tracing headers
//! (`x-request-id`, `traceparent`) end to end: what the instance is sent
//! (seen by the [`Recorder`] of [`framing`](super::framing), a raw instance
//! that keeps every request), what the client gets back, and the JSON line
//! the gateway writes for each request, including a retry after a refused
//! connection and a request held until an instance registers.
//!
//! Lines are found by their `path`: the requests that wait for routing are
//! logged too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use registry::{Instance, InstanceState, Keys};
use serde_json::Value;

use shoal_tests::{Gateway, Platform, wait_until};

use super::framing::{Recorder, behind_recorder, header_values};
use super::{gateway_log, http, metrics_text, wait_json, wait_known};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The access log's lines whose `path` is `path`, parsed; every line in the
/// file must be one JSON object.
fn lines_for(log: &Path, path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("an access log line is not JSON ({e}): {line}"))
        })
        .filter(|v| v["path"] == path)
        .collect()
}

/// Wait (5 s at most) for the log to have `n` lines for `path`; they.
async fn wait_lines(log: &Path, path: &str, n: usize, gateway: &Gateway) -> Vec<Value> {
    let found = wait_until(Duration::from_secs(5), path, || {
        lines_for(log, path).len() >= n
    })
    .await;
    if let Err(e) = found {
        panic!(
            "{e}: wanted {n} access log line(s) for {path}; the log has:\n{}\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            gateway_log(gateway)
        );
    }
    let lines = lines_for(log, path);
    assert_eq!(lines.len(), n, "one line per request: {lines:#?}");
    lines
}

fn log_path(dir: &tempfile::TempDir) -> (PathBuf, String) {
    let path = dir.path().join("access.log");
    let flag = path.to_str().expect("a UTF-8 temp path").to_owned();
    (path, flag)
}

/// A traceparent's trace-id, parent-id and flags.
fn parts_of(traceparent: &str) -> (&str, &str, &str) {
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert!(traceparent.starts_with("00-"), "{traceparent}");
    (
        &traceparent[3..35],
        &traceparent[36..52],
        &traceparent[53..],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_reach_the_instance_and_the_client_and_each_request_gets_one_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let (log, flag) = log_path(&dir);
    let (platform, recorder) = behind_recorder(&["--access-log", &flag, "--trace-headers"]).await;
    let gateway = platform.gateway();
    let http = http();

    // A client with its own request id and trace.
    let resp = http
        .get(gateway.url("/traced"))
        .header("x-request-id", "client-req-1")
        .header("traceparent", TRACEPARENT)
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-req-1");
    let seen = recorder.request_for("/traced", gateway).await;
    assert_eq!(header_values(&seen, "x-request-id"), ["client-req-1"]);
    assert_eq!(header_values(&seen, "tracestate"), ["congo=t61rcWkgMzE"]);
    let sent = header_values(&seen, "traceparent");
    assert_eq!(sent.len(), 1, "{seen}");
    let (trace_id, parent_id, flags) = parts_of(&sent[0]);
    let (client_trace, client_parent, _) = parts_of(TRACEPARENT);
    assert_eq!(trace_id, client_trace, "the client's trace continues");
    assert_ne!(parent_id, client_parent, "with the gateway's hop as parent");
    assert_eq!(flags, "01");

    // A client with neither, and one with invalid values.
    for (path, id, traceparent) in [
        ("/untraced", None, None),
        (
            "/invalid",
            Some("has space"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ),
    ] {
        let mut request = http.get(gateway.url(path));
        if let (Some(id), Some(traceparent)) = (id, traceparent) {
            request = request
                .header("x-request-id", id)
                .header("traceparent", traceparent)
                .header("tracestate", "congo=t61rcWkgMzE");
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let returned = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(returned.len(), 32, "a generated id: {returned}");
        assert!(
            returned.bytes().all(|b| b.is_ascii_hexdigit()),
            "{returned}"
        );
        let seen = recorder.request_for(path, gateway).await;
        assert_eq!(header_values(&seen, "x-request-id"), [returned.as_str()]);
        assert!(header_values(&seen, "tracestate").is_empty(), "{seen}");
        let sent = header_values(&seen, "traceparent");
        assert_eq!(sent.len(), 1, "{seen}");
        let (trace_id, parent_id, flags) = parts_of(&sent[0]);
        assert_ne!(trace_id, client_trace, "a new trace");
        assert!(trace_id.bytes().any(|b| b != b'0') && parent_id.bytes().any(|b| b != b'0'));
        assert_eq!(flags, "01", "a new trace is sampled");
    }

    // One line each, with what the instance and the client saw.
    let line = wait_lines(&log, "/traced", 1, gateway).await.remove(0);
    let time = line["time"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(time).unwrap_or_else(|e| panic!("{time}: {e}"));
    assert!(time.ends_with('Z'), "UTC: {time}");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], gateway.addr.as_str(), "{line}");
    assert_eq!(line["route"], "(default)");
    assert_eq!(line["service"], "app");
    assert_eq!(line["instance"], recorder.id.as_str());
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 2, "the recorder's `ok`");
    assert_eq!(line["retries"], 0);
    assert_eq!(line["hedged"], false);
    assert_eq!(line["held_ms"], 0.0);
    assert_eq!(line["request_id"], "client-req-1");
    assert_eq!(
        line["traceparent"],
        sent_traceparent(&recorder, "/traced", gateway).await
    );
    let (duration, upstream) = (
        line["duration_ms"].as_f64().unwrap(),
        line["upstream_ms"].as_f64().unwrap(),
    );
    assert!(
        upstream > 0.0 && upstream <= duration,
        "upstream {upstream} ms within the request's {duration} ms"
    );
    for path in ["/untraced", "/invalid"] {
        let line = wait_lines(&log, path, 1, gateway).await.remove(0);
        let seen = recorder.request_for(path, gateway).await;
        assert_eq!(line["request_id"], header_values(&seen, "x-request-id")[0]);
        assert_eq!(line["traceparent"], header_values(&seen, "traceparent")[0]);
        assert_eq!(line["status"], 200);
    }
}

async fn sent_traceparent(recorder: &Recorder, path: &str, gateway: &Gateway) -> String {
    let seen = recorder.request_for(path, gateway).await;
    header_values(&seen, "traceparent").remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_and_a_retry_after_a_refused_connection_are_logged_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let (log, flag) = log_path(&dir);
    let platform = Platform::builder()
        .gateway(&[
            "--access-log",
            &flag,
            "--default-policy",
            "round-robin",
            // The dead instance below must stay in the rotation, with its
            // full share from the start.
            "--eject-after",
            "1000",
            "--slow-start",
            "0s",
            "--hold-timeout",
            "10s",
        ])
        .start()
        .await;
    let gateway = platform.gateway();
    let http = http();

    // No instance yet: the request is held until the recorder registers.
    let held = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url("/held"));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    wait_json(
        &http,
        &gateway.admin_url("/api/v1/services/app"),
        Duration::from_secs(5),
        "the request held",
        |v| v["held_now"] == 1,
    )
    .await;
    let mut recorder = Recorder::start().await;
    recorder.register(&platform, "app").await;
    assert_eq!(held.await.unwrap().unwrap(), 200);
    let line = wait_lines(&log, "/held", 1, gateway).await.remove(0);
    assert_eq!(line["status"], 200);
    assert_eq!(line["instance"], recorder.id.as_str());
    assert_eq!(line["retries"], 0);
    let held_ms = line["held_ms"].as_f64().unwrap();
    assert!(held_ms > 0.0, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() >= held_ms, "{line}");

    // An instance that refuses connections, next to the recorder: round-
    // robin sends every other request there first, and it is retried.
    let dead_addr = format!("127.0.0.1:{}", shoal_tests::free_port());
    let mut dead = Instance::new("app", dead_addr);
    dead.state = InstanceState::Ready;
    let mut client = platform.client.clone();
    client
        .put(
            Keys::default().instance("app", &dead.id),
            dead.to_json(),
            None,
        )
        .await
        .unwrap();
    wait_known(
        &http,
        gateway,
        "app",
        &[&dead.id, &recorder.id],
        Duration::from_secs(5),
    )
    .await;
    for i in 0..4 {
        let resp = http
            .get(gateway.url(&format!("/failover/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", gateway_log(gateway));
    }
    let mut retried = 0;
    let mut lines = Vec::new();
    for i in 0..4 {
        let line = wait_lines(&log, &format!("/failover/{i}"), 1, gateway)
            .await
            .remove(0);
        lines.push(line.to_string());
        assert_eq!(line["status"], 200);
        assert_eq!(line["instance"], recorder.id.as_str(), "{line}");
        match line["retries"].as_u64() {
            Some(0) => {}
            Some(1) => retried += 1,
            _ => panic!("one retry at most: {line}"),
        }
    }
    assert!(
        retried >= 1,
        "round-robin over two instances sent no request to the dead one first: {lines:#?}"
    );

    // The dropped-lines counter is exported, at zero.
    let metrics = metrics_text(&http, gateway).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "shoal_gateway_access_log_dropped_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_that_cannot_be_opened_stops_the_gateway_naming_the_flag() {
    let out = shoal_tests::run_to_exit(
        "gateway",
        &[
            "--access-log",
            "/nonexistent-dir/access.log",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(10),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot open --access-log /nonexistent-dir/access.log for appending"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_file_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (log, flag) = log_path(&dir);
    let (platform, recorder) = behind_recorder(&["--access-log", &flag]).await;
    let gateway = platform.gateway();
    let http = http();
    let get = |path: &'static str| {
        let request = http.get(gateway.url(path)).send();
        async move { assert_eq!(request.await.unwrap().status(), 200) }
    };
    // Without --trace-headers a client's ids pass through untouched, and
    // are logged as they came.
    let resp = http
        .get(gateway.url("/before-rotation"))
        .header("x-request-id", "as is")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_none());
    let seen = recorder.request_for("/before-rotation", gateway).await;
    assert_eq!(header_values(&seen, "x-request-id"), ["as is"]);
    assert!(header_values(&seen, "traceparent").is_empty(), "{seen}");
    let line = wait_lines(&log, "/before-rotation", 1, gateway)
        .await
        .remove(0);
    assert_eq!(line["request_id"], "as is");
    assert!(line["traceparent"].is_null(), "{line}");

    // logrotate's `create` mode: move the file away, then SIGHUP.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gateway.proc.signal(nix::sys::signal::Signal::SIGHUP);
    // The writer creates the file again as it reopens it.
    wait_until(Duration::from_secs(5), "the file reopened", || log.exists())
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", gateway_log(gateway)));
    get("/after-rotation").await;
    wait_lines(&log, "/after-rotation", 1, gateway).await;
    assert!(!gateway.proc.stderr().contains("panicked"));
    let old = lines_for(&rotated, "/before-rotation");
    assert_eq!(old.len(), 1, "the rotated file keeps its line");
    assert!(lines_for(&rotated, "/after-rotation").is_empty());
}

/// SIGHUP is "read your files again" to the gateway, never a stop: with no
/// file to read again it says so and keeps serving (closing the terminal it
/// runs in does not stop it either; SIGTERM does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_no_file_to_read_again_keeps_the_gateway_serving() {
    let mut platform = Platform::builder()
        .app_servers(1)
        .gateway(&[])
        .start()
        .await;
    let gateway = platform.gateway_mut();
    gateway.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(
        Duration::from_secs(5),
        "the gateway to answer SIGHUP",
        || {
            gateway
                .proc
                .stderr()
                .contains("SIGHUP: nothing to read again")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", gateway_log(gateway)));
    let resp = http().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", gateway_log(gateway));
    assert!(!gateway.proc.has_exited(), "{}", gateway_log(gateway));
}
