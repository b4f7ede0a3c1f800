//! Replacing a running gateway with `--reuse-port`: the new one starts on
//! the same ports, opens its proxy listener once it has read the registry,
//! and the old one is then stopped; clients see no refused or failed
//! request, neither on keep-alive connections nor on a new connection per
//! request. Without the flag, a second gateway on a port in use is refused
//! with a hint naming it.
//!
//! New connections are only safe with `net.ipv4.tcp_migrate_req = 1`
//! (Linux moves the handshakes queued on a closing SO_REUSEPORT listener to
//! another one in its group; without it about 1 replacement in 12 reset one
//! in this test). `scripts/test` turns it on when it runs as root; without
//! it the new-connection clients are left unchecked (a failure under
//! `CI=true`).

use std::time::Duration;

use shoal_tests::{Load, Platform, Proc, bin_path, binaries::logs_dir};

use super::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_replaced_with_reuse_port_refuses_and_fails_nothing() {
    let mut platform = Platform::builder()
        .app_servers(2)
        .gateway(&["--reuse-port"])
        .start()
        .await;
    let gateway = platform.gateway_mut();
    let http = http();

    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|v| v.trim() == "1");
    if !migrate {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "net.ipv4.tcp_migrate_req is not 1: run `sysctl -w net.ipv4.tcp_migrate_req=1` as root (scripts/test does)"
        );
        println!(
            "note: net.ipv4.tcp_migrate_req is not 1, so clients opening a new connection per request are not checked"
        );
    }
    let url = gateway.url("/");
    let pooled = Load::start(&http, &url, 4);
    let one_shot = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let fresh = Load::start(&one_shot, &url, 2);
    // Both kinds of client under way through the old gateway.
    for load in [&pooled, &fresh] {
        load.wait_more_served(20, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let old_id = gateway.id.clone();
    let (addr, admin_addr) = (gateway.addr.clone(), gateway.admin_addr.clone());
    let status = gateway.replace(Duration::from_secs(15)).await;
    assert!(status.success(), "the old gateway exited with {status}");
    assert_ne!(gateway.id, old_id);
    assert_eq!((&gateway.addr, &gateway.admin_addr), (&addr, &admin_addr));
    let served_by_old = pooled.served() + fresh.served();
    // Both kinds of client go on through the new one.
    for (load, n) in [(&pooled, 40), (&fresh, 20)] {
        load.wait_more_served(n, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("through the new gateway: {e}"));
    }

    let (pooled, fresh) = (pooled.stop().await, fresh.stop().await);
    let served = pooled.served + fresh.served;
    assert!(
        served > served_by_old + 50,
        "too little served by the new gateway: {served_by_old} before the old one exited, {served} in all"
    );
    assert!(
        pooled.failures.is_empty() && (fresh.failures.is_empty() || !migrate),
        "failed: {} on keep-alive connections {:?}, {} on new connections {:?}",
        pooled.failures.len(),
        &pooled.failures[..pooled.failures.len().min(3)],
        fresh.failures.len(),
        &fresh.failures[..fresh.failures.len().min(3)],
    );
}

#[tokio::test]
async fn without_reuse_port_a_second_gateway_on_a_port_in_use_is_refused_with_a_hint() {
    let platform = Platform::builder().gateway(&[]).start().await;
    let first = platform.gateway();
    let mut second = Proc::spawn(
        "gateway",
        &bin_path("gateway"),
        &[
            "--etcd".into(),
            platform.etcd.endpoint(),
            "--listen".into(),
            first.addr.clone(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
        ],
        &[],
        &logs_dir(),
    );
    let status = second.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    let stderr = second.stderr();
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.addr))
            && stderr.contains("--reuse-port"),
        "{stderr}"
    );
}
