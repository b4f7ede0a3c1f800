//! The `registry` command line: `run` wrapping a foreign program, `watch`,
//! and the error a user sees when etcd is not there.

use std::time::Duration;

use nix::sys::signal::Signal;
use shoal_tests::binaries::logs_dir;
use shoal_tests::{AppServer, AppServerOptions, Etcd, Proc, bin_path};

use crate::{is_gone, is_ready, wait_instance};

#[derive(serde::Deserialize)]
struct Registered {
    id: String,
    addr: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_registers_a_python_http_server_and_deregisters_it_on_sigterm() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let args: Vec<String> = [
        "--etcd",
        &etcd.endpoint(),
        "run",
        "--service",
        "py",
        "--port-env",
        "PORT",
        "--lease-ttl",
        "3s",
        "--drain-grace",
        "200ms",
        "--",
        "python3",
        "-m",
        "http.server",
        "{port}",
        "--bind",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut wrapper = Proc::spawn(
        "registry-run",
        &bin_path("registry"),
        &args,
        &[],
        &logs_dir(),
    );
    let registered: Registered = wrapper
        .wait_event("registered", Duration::from_secs(20))
        .await;
    let key = registry::Keys::default().instance("py", &registered.id);
    wait_instance(
        &client,
        &key,
        Duration::from_secs(2),
        "python server ready",
        is_ready,
    )
    .await;
    let resp = reqwest::get(format!("http://{}/", registered.addr))
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "python's http.server answers through the registered address"
    );

    wrapper.signal(Signal::SIGTERM);
    let status = wrapper.wait_exit(Duration::from_secs(15)).await;
    wait_instance(
        &client,
        &key,
        Duration::from_millis(500),
        "deregistered",
        is_gone,
    )
    .await;
    // python3 -m http.server dies of the forwarded SIGTERM; the wrapper reports it the shell way.
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "{status:?}; stderr:\n{}",
        wrapper.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_one_line_per_change() {
    let etcd = Etcd::start().await;
    let args = vec![
        "--etcd".to_owned(),
        etcd.endpoint(),
        "watch".to_owned(),
        "app".to_owned(),
    ];
    let watch = Proc::spawn(
        "registry-watch",
        &bin_path("registry"),
        &args,
        &[],
        &logs_dir(),
    );
    watch
        .wait_stdout(Duration::from_secs(5), |l| {
            l.starts_with("reset 0").then_some(())
        })
        .await;

    let mut server = AppServer::start(&etcd, AppServerOptions::default()).await;
    let name = format!("app/{}", server.id);
    watch
        .wait_stdout(Duration::from_secs(5), |l| {
            (l.starts_with("put ") && l.contains(&name) && l.ends_with("ready")).then_some(())
        })
        .await;
    server.proc.signal(Signal::SIGTERM);
    watch
        .wait_stdout(Duration::from_secs(5), |l| {
            (l.starts_with("put ") && l.contains(&name) && l.ends_with("draining")).then_some(())
        })
        .await;
    watch
        .wait_stdout(Duration::from_secs(5), |l| {
            (l == format!("delete {name}")).then_some(())
        })
        .await;
    server.proc.wait_exit(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_against_a_dead_etcd_says_what_to_do() {
    let port = shoal_tests::free_port();
    let out = tokio::process::Command::new(bin_path("registry"))
        .args(["--etcd", &format!("http://127.0.0.1:{port}"), "list"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach etcd at http://127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("--etcd"),
        "the message says how to fix it: {stderr}"
    );
}
