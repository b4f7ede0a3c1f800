//! Instances failing under the gateway: killed or drained under load, a
//! registered address that refuses connections, and no instance at all
//! (requests held until one registers, or a 503 after the hold timeout).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use registry::{Instance, InstanceState, Keys};
use shoal_tests::{AppServer, AppServerOptions, Gateway, Load, Platform};

use super::{gateway_log, get_json, http, instance_stats, served_by, wait_json, wait_routed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_loses_no_request_when_one_instance_is_killed_and_another_drained() {
    let mut platform = Platform::builder()
        .app_servers(3)
        .gateway(&[])
        .start()
        .await;
    let mut apps = std::mem::take(&mut platform.app_servers);
    let gateway = platform.gateway();
    let http = http();

    let started = Instant::now();
    let load = Load::start(&http, &gateway.url("/"), 8);
    let waiting = Duration::from_secs(10);
    // The scenario: under load, every instance serving, one is killed; once
    // the load goes on past the crash, another is drained; once it has
    // exited, the load goes on past that too.
    for app in &apps {
        load.wait_served_by(&app.id, started, waiting)
            .await
            .unwrap_or_else(|e| panic!("{e}; {}", gateway_log(gateway)));
    }
    let killed_before = load.served_by(&apps[0].id);
    apps[0].proc.kill9().await;
    load.wait_more_served(200, waiting).await.unwrap();
    let drained_before = load.served_by(&apps[1].id);
    apps[1].proc.signal(Signal::SIGTERM);
    let exit = apps[1].proc.wait_exit(Duration::from_secs(10)).await;
    let survivor_before = load.served_by(&apps[2].id);
    load.wait_more_served(200, waiting).await.unwrap();
    let survivor_after = load.served_by(&apps[2].id);
    let report = load.stop().await;

    let total = report.served + report.failures.len() as u64;
    println!(
        "measured: {total} requests in {:.1} s over kill -9 and SIGTERM, {} failed",
        started.elapsed().as_secs_f64(),
        report.failures.len(),
    );
    assert!(
        report.failures.is_empty(),
        "{}; {}",
        report.failure_summary(),
        gateway_log(gateway)
    );
    assert!(
        killed_before > 0 && drained_before > 0,
        "the killed ({killed_before}) and drained ({drained_before}) instances must have served before"
    );
    assert!(
        survivor_after > survivor_before,
        "the survivor served nothing after the drain ({survivor_before} before)"
    );
    assert_eq!(exit.code(), Some(0), "the drained instance exited {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_address_that_refuses_connections_is_retried_around_and_ejected() {
    let mut platform = Platform::builder().app_servers(1).start().await;
    let live = platform.app_servers.remove(0);
    // A ready instance whose port nobody listens on, written directly with no lease.
    let mut dead = Instance::new("app", format!("127.0.0.1:{}", shoal_tests::free_port()));
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
    // Round-robin without slow start sends every other request to the dead
    // address until it is ejected, so retries are exercised for sure.
    let gateway = platform
        .start_gateway(&[
            "--default-policy",
            "round-robin",
            "--slow-start",
            "0s",
            "--eject-after",
            "3",
        ])
        .await;
    let http = http();
    wait_routed(&http, gateway, "/", &[&live.id], Duration::from_secs(5)).await;

    for i in 0..20 {
        let resp = http.get(gateway.url("/")).send().await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), served_by(&resp)),
            (200, live.id.clone()),
            "GET {i}"
        );
    }
    for i in 0..10 {
        let body = format!("value {i} ").repeat(100);
        let resp = http
            .put(gateway.url(&format!("/kv/k{i}")))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(served_by(&resp), live.id, "PUT {i}");
        assert_eq!(resp.status(), 201, "PUT {i}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["bytes"], body.len(), "PUT {i}: {answer}");
        let stored = http
            .get(live.url(&format!("/kv/k{i}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(stored, body, "PUT {i}: the body arrived intact");
    }
    for i in 0..10 {
        // The app server has no POST; its own 405 shows that the request and
        // its body reached the live instance rather than failing in the gateway.
        let resp = http
            .post(gateway.url(&format!("/kv/p{i}")))
            .body(vec![b'x'; 2000])
            .send()
            .await
            .unwrap();
        assert_eq!(
            (resp.status().as_u16(), served_by(&resp)),
            (405, live.id.clone()),
            "POST {i}"
        );
    }

    let url = gateway.admin_url("/api/v1/services/app");
    let last = wait_json(
        &http,
        &url,
        Duration::from_secs(2),
        "the dead instance ejected",
        |v| instance_stats(v, &dead.id).is_some_and(|s| s["ejected"] == true),
    )
    .await;
    let live_stats = instance_stats(&last, &live.id).expect("the live instance is listed");
    assert_eq!(live_stats["ejected"], false, "{last:#}");
    assert!(
        last["retries_total"].as_u64().is_some_and(|n| n >= 3),
        "requests refused by the dead address must count as retries: {last:#}"
    );
    assert_eq!(last["errors_total"], 0, "{last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_no_instance_to_go_to_is_held_until_one_registers() {
    let platform = Platform::builder()
        .gateway(&["--hold-timeout", "10s"])
        .start()
        .await;
    let gateway = platform.gateway();
    let http = http();
    let sent = Instant::now();
    let request = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url("/"));
        async move {
            let resp = http.get(url).send().await.expect("held request");
            (resp.status().as_u16(), served_by(&resp), Instant::now())
        }
    });
    // The gateway holds it, and nothing answers it while no instance exists.
    wait_held(&http, gateway, 1).await;
    assert!(
        !request.is_finished(),
        "answered with no instance registered: {:?}",
        request.await
    );
    let started = Instant::now();
    let server = platform.start_app_server(AppServerOptions::default()).await;
    let (status, id, answered) = request.await.unwrap();
    println!(
        "measured: held request answered {} ms after it was sent, {} ms after the instance was started",
        answered.duration_since(sent).as_millis(),
        answered.duration_since(started).as_millis()
    );
    assert_eq!(
        (status, id),
        (200, server.id.clone()),
        "{}",
        gateway_log(gateway)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_instance_ever_a_held_request_gets_a_json_503_after_the_hold_timeout() {
    let platform = Platform::builder()
        .gateway(&["--hold-timeout", "1s"])
        .start()
        .await;
    let gateway = platform.gateway();
    let http = http();
    let sent = Instant::now();
    let resp = http.get(gateway.url("/")).send().await.unwrap();
    let took = sent.elapsed();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    println!(
        "measured: no instance, 1 s hold: answered after {} ms",
        took.as_millis()
    );
    assert_eq!(status, 503, "{body}");
    let error: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(error["error"], "no_instance", "{error}");
    assert!(
        error["detail"].as_str().is_some_and(|d| d.contains("app")),
        "the detail should name the service: {error}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?} with a 1 s hold timeout"
    );
    let stats = get_json(&http, &gateway.admin_url("/api/v1/services/app")).await;
    assert_eq!(stats["hold_timeouts_total"], 1, "{stats:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_only_instance_dies_requests_wait_for_the_next_one() {
    let mut platform = Platform::builder()
        .app_servers(1)
        .gateway(&[])
        .start()
        .await;
    let mut only = platform.app_servers.remove(0);
    let gateway = platform.gateway();
    let http = http();
    let first = only.id.clone();
    wait_routed(&http, gateway, "/", &[&first], Duration::from_secs(5)).await;

    // A GET in flight (about 2 s of work) when the instance is killed: the
    // connection is reset, nothing else is registered yet.
    let in_flight = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url("/work?iterations=200000000"));
        async move { http.get(url).send().await }
    });
    // Killed once it is working on the GET, and reaped.
    wait_in_flight(&http, &only, 1).await;
    only.proc.kill9().await;
    // A PUT after the kill: refused (the dead instance is still registered).
    let refused = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url("/kv/after-kill"));
        async move { http.put(url).body("v").send().await }
    });
    wait_held(&http, gateway, 2).await;
    assert!(
        !in_flight.is_finished() && !refused.is_finished(),
        "both held"
    );

    // The replacement registers; both are answered by it.
    let started = Instant::now();
    let replacement = platform.start_app_server(AppServerOptions::default()).await;
    for (what, handle) in [("reset GET", in_flight), ("refused PUT", refused)] {
        let resp = handle
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status();
        let by = served_by(&resp);
        let body = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{what}: {status} {body}");
        assert_eq!(by, replacement.id, "{what} served by the replacement");
    }
    println!(
        "measured: requests held through the death of the only instance, answered {:.2} s after the replacement started",
        started.elapsed().as_secs_f64()
    );
    let stats = get_json(&http, &gateway.admin_url("/api/v1/services/app")).await;
    assert!(stats["held_total"].as_u64().unwrap_or(0) >= 2, "{stats:#}");
    drop(replacement);
}

/// Wait until the gateway holds `n` requests of `app` (`held_now`): they
/// reached it and wait for an instance.
async fn wait_held(http: &reqwest::Client, gateway: &Gateway, n: u64) {
    let url = gateway.admin_url("/api/v1/services/app");
    wait_json(
        http,
        &url,
        Duration::from_secs(5),
        &format!("{n} requests held"),
        |v| v["held_now"] == n,
    )
    .await;
}

/// Wait until `server` has `n` requests in flight (its own `/load`).
async fn wait_in_flight(http: &reqwest::Client, server: &AppServer, n: u64) {
    wait_json(
        http,
        &server.url("/load"),
        Duration::from_secs(5),
        &format!("{n} requests in flight on {}", server.id),
        |v| v["in_flight"] == n,
    )
    .await;
}

/// Hedged requests (on by default): under load over two
/// instances, one is frozen (SIGSTOP: its connections stay open, nothing
/// answers). Every GET is still answered, each within 2 s (the load's
/// client timeout; without hedging a GET sent to the frozen instance waits
/// the 30 s response timeout), the gateway's counters show the hedges that
/// did it, and the frozen instance stops getting requests: ejected by the
/// races it lost, or (when least-request's latency estimate steers every
/// request away from it first, so it loses no more races) out of the
/// table once its lease expires. Lost races eject under round-robin in
/// `proxy::tests::a_get_stuck_past_the_hedge_delay_is_answered_by_another_instance`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_to_a_frozen_instance_are_hedged_to_the_other_by_default() {
    let platform = Platform::builder()
        .app_servers(2)
        .gateway(&[])
        .start()
        .await;
    let gateway = platform.gateway();
    let (frozen, other) = (&platform.app_servers[0], &platform.app_servers[1]);
    let http = http();
    wait_routed(
        &http,
        gateway,
        "/",
        &[&frozen.id, &other.id],
        Duration::from_secs(10),
    )
    .await;
    let admin = gateway.admin();
    let quick = shoal_tests::http_client(Duration::from_secs(2));
    let load = Load::start(&quick, &gateway.url("/"), 4);
    // The service's p99 is known (one second with 10 responses), so the
    // hedge waits that rather than `--hedge-max-delay`.
    let summary = wait_json(
        &http,
        &admin.url("/api/v1/services/app"),
        Duration::from_secs(10),
        "a p99 time to response headers",
        |s| s["headers_p99_ms"].is_f64(),
    )
    .await;
    let hedges_before = summary["hedges_total"].as_u64().unwrap();

    frozen.proc.signal(Signal::SIGSTOP);
    let frozen_at = Instant::now();
    let frozen_state = |s: &serde_json::Value| {
        let list = s["instances"].as_array()?;
        match list.iter().find(|i| i["id"] == frozen.id.as_str()) {
            Some(i) => i["state"].as_str().map(str::to_owned),
            None => Some("out of the table".to_owned()),
        }
    };
    let noticed = wait_json(
        &http,
        &admin.url("/api/v1/services/app"),
        Duration::from_secs(10),
        "the frozen instance ejected or out of the table",
        |s| frozen_state(s).is_some_and(|state| state == "ejected" || state == "out of the table"),
    )
    .await;
    let noticed_after = frozen_at.elapsed();
    load.wait_more_served(500, Duration::from_secs(10))
        .await
        .unwrap();
    let report = load.stop().await;
    frozen.proc.signal(Signal::SIGCONT);
    let summary = get_json(&http, &admin.url("/api/v1/services/app")).await;
    let (hedges, won) = (
        summary["hedges_total"].as_u64().unwrap() - hedges_before,
        summary["hedges_won_total"].as_u64().unwrap(),
    );
    println!(
        "measured: {} GETs, {} failed; frozen instance {} after {:.2} s; {hedges} hedges \
         ({won} won in all), p99 to headers before the freeze {} ms",
        report.served + report.failures.len() as u64,
        report.failures.len(),
        frozen_state(&noticed).unwrap_or_default(),
        noticed_after.as_secs_f64(),
        noticed["headers_p99_ms"],
    );
    assert!(
        report.failures.is_empty(),
        "{}; {}",
        report.failure_summary(),
        gateway_log(gateway)
    );
    assert!(hedges >= 1 && won >= 1, "{summary:#}");
}
