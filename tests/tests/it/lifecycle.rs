//! An app server's life in the registry: registration time, drain on SIGTERM
//! with requests in flight, removal after kill -9.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shoal_tests::binaries::registry_cli;
use shoal_tests::{AppServer, AppServerOptions, Etcd};

use crate::{is_gone, is_ready, wait_instance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_ready_within_a_second_and_is_listed() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let started = Instant::now();
    let server = AppServer::start(&etcd, AppServerOptions::default()).await;
    wait_instance(
        &client,
        &server.key(),
        Duration::from_secs(1),
        "ready in the registry",
        is_ready,
    )
    .await;
    let took = started.elapsed();
    println!(
        "measured: process start to `ready` in etcd: {} ms",
        took.as_millis()
    );
    assert!(took <= Duration::from_secs(1), "took {took:?}");

    let out = registry_cli(&etcd, &["list"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "registry list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.contains(&server.id))
        .unwrap_or_else(|| panic!("instance {} not listed:\n{stdout}", server.id));
    assert!(
        row.contains("ready") && row.contains(&server.addr) && row.starts_with("app"),
        "{row}"
    );

    let out = registry_cli(&etcd, &["list", "app", "--output", "json"]).await;
    let listed: Vec<registry::Instance> = serde_json::from_slice(&out.stdout)
        .expect("list --output json is a JSON array of instances");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, server.id);

    let hello = reqwest::get(server.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        hello,
        format!(
            "Hello from instance {} (pid {})",
            server.id,
            server.proc.pid()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_five_slow_requests_finish_then_leaves_the_registry() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut server = ready_app_server(&etcd, &client).await;
    let http = reqwest::Client::new();

    // Calibrate: iterations for about 1.5 s of work on this build and machine.
    let probe: serde_json::Value = http
        .get(server.url("/work?iterations=10000000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ms_per_10m = probe["elapsed_ms"]
        .as_f64()
        .expect("work reports elapsed_ms")
        .max(1.0);
    let iterations = ((1500.0 / ms_per_10m) * 1e7) as u64;

    let requests: Vec<_> = (0..5)
        .map(|_| {
            let http = http.clone();
            let url = server.url(&format!("/work?iterations={iterations}"));
            tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    let load = server.url("/load");
    shoal_tests::wait_until_async(Duration::from_secs(5), "five requests in flight", || {
        let http = http.clone();
        let load = load.clone();
        async move {
            let Ok(resp) = http.get(&load).send().await else {
                return false;
            };
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            body["in_flight"].as_u64() == Some(5)
        }
    })
    .await
    .unwrap();

    server.proc.signal(Signal::SIGTERM);
    wait_draining(&client, &server).await;
    for request in requests {
        let status = request.await.unwrap().expect("in-flight request completes");
        assert_eq!(status, 200);
    }
    wait_drained_and_gone(&client, &mut server).await;
}

/// An app server with the default options, once the registry lists it ready.
async fn ready_app_server(etcd: &Etcd, client: &etcd_client::Client) -> AppServer {
    let server = AppServer::start(etcd, AppServerOptions::default()).await;
    wait_instance(
        client,
        &server.key(),
        Duration::from_secs(5),
        "ready",
        is_ready,
    )
    .await;
    server
}

/// While draining the instance says so in the registry before it leaves.
async fn wait_draining(client: &etcd_client::Client, server: &AppServer) {
    wait_instance(
        client,
        &server.key(),
        Duration::from_secs(2),
        "draining",
        |i| i.is_none_or(|i| i.state == registry::InstanceState::Draining),
    )
    .await;
}

/// A drain that finished: exit 0, then the key deleted within half a second.
async fn wait_drained_and_gone(client: &etcd_client::Client, server: &mut AppServer) {
    let exit = server.proc.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    wait_instance(
        client,
        &server.key(),
        Duration::from_millis(500),
        "key deleted",
        is_gone,
    )
    .await;
}

/// The terminal an app server runs in goes away (SIGHUP): it drains and
/// deregisters as on SIGTERM, rather than die at once and leave its key to
/// expire with the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_and_leaves_the_registry_like_sigterm() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut server = ready_app_server(&etcd, &client).await;
    server.proc.signal(Signal::SIGHUP);
    wait_draining(&client, &server).await;
    wait_drained_and_gone(&client, &mut server).await;
    assert!(
        server.proc.stderr().contains("signal=\"SIGHUP\""),
        "{}",
        server.proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_removes_the_key_within_ttl_plus_one_second() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let ttl = Duration::from_secs(3);
    let mut server = AppServer::start(
        &etcd,
        AppServerOptions {
            lease_ttl: ttl,
            ..Default::default()
        },
    )
    .await;
    wait_instance(
        &client,
        &server.key(),
        Duration::from_secs(5),
        "ready",
        is_ready,
    )
    .await;
    server.proc.kill9().await;
    let took = wait_instance(
        &client,
        &server.key(),
        ttl + Duration::from_secs(1),
        "key expired",
        is_gone,
    )
    .await;
    println!(
        "measured: kill -9 to key removal: {} ms (TTL {} ms)",
        took.as_millis(),
        ttl.as_millis()
    );
}
