//! Instances failing under the gateway: killed or drained under load, a
//! registered address that refuses connections, and no instance at all
//! (requests held until one registers, or a 503 after the hold timeout).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use registry::{Instance, InstanceState, Keys};
use shoal_tests::{AppServer, AppServerOptions, Etcd, Gateway};

use super::{
    Spread, gateway_log, get_json, http, instance_stats, served_by, start_apps, wait_json,
    wait_known, wait_routed,
};

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    served: Spread,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_loses_no_request_when_one_instance_is_killed_and_another_drained() {
    let etcd = Etcd::start().await;
    let mut apps = start_apps(&etcd, 3, "app").await;
    let gateway = Gateway::start(&etcd, &[]).await;
    let http = http();
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    wait_known(&http, &gateway, "app", &ids, Duration::from_secs(5)).await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let length = Duration::from_secs(6);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, tally, url) = (http.clone(), tally.clone(), gateway.url("/"));
            tokio::spawn(async move {
                while started.elapsed() < length {
                    let outcome = match http.get(&url).send().await {
                        Ok(resp) if resp.status() == 200 => {
                            let id = served_by(&resp);
                            match resp.text().await {
                                Ok(_) => Ok(id),
                                Err(e) => Err(format!("body from {id}: {e}")),
                            }
                        }
                        Ok(resp) => Err(format!(
                            "status {} from `{}`: {}",
                            resp.status(),
                            served_by(&resp),
                            resp.text().await.unwrap_or_default()
                        )),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    let mut tally = tally.lock().unwrap();
                    match outcome {
                        Ok(id) => *tally.served.entry(id).or_default() += 1,
                        Err(e) => tally.failures.push(e),
                    }
                }
            })
        })
        .collect();

    let served_by_now = |id: &str| tally.lock().unwrap().served.get(id).copied().unwrap_or(0);
    // The scenario's own timeline: a crash 1.5 s in, a drain 3 s in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_before = served_by_now(&apps[0].id);
    apps[0].proc.kill9().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let drained_before = served_by_now(&apps[1].id);
    apps[1].proc.signal(Signal::SIGTERM);

    for client in clients {
        client.await.unwrap();
    }
    let exit = apps[1].proc.wait_exit(Duration::from_secs(10)).await;
    let tally = tally.lock().unwrap();
    let total: u32 = tally.served.values().sum::<u32>() + tally.failures.len() as u32;
    println!(
        "measured: {total} requests in {:?} over kill -9 and SIGTERM, {} failed; served {:?}",
        length,
        tally.failures.len(),
        tally.served
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {total} requests failed, first: {:?}; {}",
        tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)],
        gateway_log(&gateway)
    );
    assert!(
        killed_before > 0 && drained_before > 0,
        "the killed ({killed_before}) and drained ({drained_before}) instances must have served before"
    );
    assert!(
        tally.served.get(&apps[2].id).copied().unwrap_or(0) > 0,
        "the survivor served nothing: {:?}",
        tally.served
    );
    assert_eq!(exit.code(), Some(0), "the drained instance exited {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_address_that_refuses_connections_is_retried_around_and_ejected() {
    let etcd = Etcd::start().await;
    let live = start_apps(&etcd, 1, "app").await.remove(0);
    // A ready instance whose port nobody listens on, written directly with no lease.
    let mut dead = Instance::new("app", format!("127.0.0.1:{}", shoal_tests::free_port()));
    dead.state = InstanceState::Ready;
    let mut client = etcd.client().await;
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
    let gateway = Gateway::start(
        &etcd,
        &[
            "--default-policy",
            "round-robin",
            "--slow-start",
            "0s",
            "--eject-after",
            "3",
        ],
    )
    .await;
    let http = http();
    wait_routed(&http, &gateway, "/", &[&live.id], Duration::from_secs(5)).await;

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
    let etcd = Etcd::start().await;
    let gateway = Gateway::start(&etcd, &["--hold-timeout", "10s"]).await;
    let http = http();
    let sent = Instant::now();
    let request = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url("/"));
        async move {
            let resp = http.get(url).send().await.expect("held request");
            (resp.status().as_u16(), served_by(&resp), Instant::now())
        }
    });
    // The scenario: the first instance starts about a second after the request.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !request.is_finished(),
        "answered with no instance registered: {:?}",
        request.await
    );
    let started = Instant::now();
    let server = AppServer::start(&etcd, AppServerOptions::default()).await;
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
        gateway_log(&gateway)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_instance_ever_a_held_request_gets_a_json_503_after_the_hold_timeout() {
    let etcd = Etcd::start().await;
    let gateway = Gateway::start(&etcd, &["--hold-timeout", "1s"]).await;
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
    let etcd = Etcd::start().await;
    let mut apps = start_apps(&etcd, 1, "app").await;
    let gateway = Gateway::start(&etcd, &[]).await;
    let http = http();
    let first = apps[0].id.clone();
    wait_routed(&http, &gateway, "/", &[&first], Duration::from_secs(5)).await;

    // A GET in flight (about 2 s of work) when the instance is killed: the
    // connection is reset, nothing else is registered yet.
    let in_flight = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url("/work?iterations=200000000"));
        async move { http.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    apps[0].proc.signal(Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A POST after the kill: refused (the dead instance is still registered).
    let refused = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url("/kv/after-kill"));
        async move { http.put(url).body("v").send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished() && !refused.is_finished(),
        "both held"
    );

    // The replacement registers; both are answered by it.
    let started = Instant::now();
    let replacement = AppServer::start(&etcd, AppServerOptions::default()).await;
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
    apps.push(replacement);
}
