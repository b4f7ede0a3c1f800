//! Security: every binary against an etcd that requires TLS client
//! certificates and a user and password; the failures an operator will meet
//! (wrong password, no client certificate, a CA that did not sign etcd's
//! certificate) end the program with a message naming the flags to check;
//! the registry's TLS certificates readable only by the user whose role is
//! granted `certs/` (the gateway's), not by another; and the gateway's
//! `--allowed-backends`.

use std::process::Output;
use std::time::Duration;

use etcd_client::Permission;
use shoal_tests::etcd::{ROOT_PASSWORD, Security};
use shoal_tests::pki::Pki;
use shoal_tests::tls::{BOTH_VERSIONS, TlsConn, cert_der};
use shoal_tests::{AppServer, AppServerOptions, Autoscaler, Etcd, Gateway, run_to_exit};

use crate::{is_ready, wait_instance};

const BOTH: Security = Security {
    tls: true,
    auth: true,
};

/// Run a binary to completion; a hang (20 s) is a failure of its own.
async fn run(binary: &str, args: &[String]) -> Output {
    run_to_exit(binary, args, Duration::from_secs(20)).await
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `--etcd` and every flag `etcd` needs, with some replaced (`Some`) or
/// left out (`None`).
fn flags_with(etcd: &Etcd, changes: &[(&str, Option<&str>)]) -> Vec<String> {
    let mut out = vec!["--etcd".to_owned(), etcd.endpoint()];
    for pair in etcd.client_flags().chunks(2) {
        match changes.iter().find(|(flag, _)| *flag == pair[0]) {
            Some((flag, Some(value))) => out.extend([flag.to_string(), value.to_string()]),
            Some((_, None)) => {}
            None => out.extend(pair.iter().cloned()),
        }
    }
    out
}

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let instance = resp
        .headers()
        .get("x-shoal-instance")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Some((resp.status().as_u16(), instance))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_works_over_tls_with_auth() {
    let etcd = Etcd::start_secure(BOTH).await;
    let flags = etcd.client_flags();
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();

    // The app server registers over TLS as the shoal user.
    let app = AppServer::start(
        &etcd,
        AppServerOptions {
            extra: flags.clone(),
            ..Default::default()
        },
    )
    .await;
    let client = etcd.client().await;
    wait_instance(
        &client,
        &app.key(),
        Duration::from_secs(10),
        "app server registered",
        is_ready,
    )
    .await;

    // The gateway reads the registry and routes to it.
    let gateway = Gateway::start(&etcd, &flag_refs).await;
    let url = gateway.url("/");
    let routed = shoal_tests::wait_until_async(Duration::from_secs(10), "routed", || {
        let url = url.clone();
        let id = app.id.clone();
        async move { get(&url).await == Some((200, id)) }
    })
    .await;
    routed.unwrap_or_else(|e| panic!("{e}; gateway log:\n{}", gateway.proc.stderr()));

    // The autoscaler CLI writes a policy and reads the status.
    let mut args = strings(&[
        "policy", "set", "app", "--min", "1", "--max", "2", "--metric", "inflight", "--target", "4",
    ]);
    args.extend(flags_with(&etcd, &[]));
    let out = run("autoscaler", &args).await;
    assert!(out.status.success(), "{out:?}");
    let mut args = strings(&["status", "-o", "json"]);
    args.extend(flags_with(&etcd, &[]));
    let out = run("autoscaler", &args).await;
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status[0]["policy"]["service"], "app", "{status}");
    assert_eq!(status[0]["instances"]["ready"], 1, "{status}");

    // The registry CLI lists it.
    let mut args = strings(&["list"]);
    args.extend(flags_with(&etcd, &[]));
    let out = run("registry", &args).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&app.id),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_gives_its_instances_the_same_credentials() {
    let etcd = Etcd::start_secure(BOTH).await;
    let flags = etcd.client_flags();
    let client = etcd.client().await;
    let mut args = strings(&[
        "policy", "set", "app", "--min", "1", "--max", "1", "--metric", "inflight", "--target", "4",
    ]);
    args.extend(flags_with(&etcd, &[]));
    let out = run("autoscaler", &args).await;
    assert!(out.status.success(), "{out:?}");
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--interval", "200ms", "--lease-ttl", "3s"]);
    let autoscaler = Autoscaler::start(&etcd, &extra);
    let up = shoal_tests::wait_until_async(
        Duration::from_secs(20),
        "an instance started by the autoscaler is ready",
        || {
            let client = client.clone();
            async move {
                shoal_tests::binaries::service_instances(&client, "app")
                    .await
                    .iter()
                    .any(|i| i.state == registry::InstanceState::Ready)
            }
        },
    )
    .await;
    up.unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", autoscaler.proc.stderr()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_certificates_fail_fast_with_the_flags_to_check() {
    let etcd = Etcd::start_secure(BOTH).await;
    let pki = etcd.pki().expect("a TLS etcd has certificates");
    let other_ca = pki.other_ca.to_string_lossy().into_owned();

    // Wrong password: the CLI (exit 2) and the app server (exit 1) say so.
    let bad_password = flags_with(&etcd, &[("--etcd-password", Some("not-the-password"))]);
    let mut args = strings(&["status"]);
    args.extend(bad_password.clone());
    let out = run("autoscaler", &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("authentication failed")
            && stderr.contains("Check --etcd-user and --etcd-password"),
        "{stderr}"
    );
    let mut args = strings(&["--service", "app", "--listen", "127.0.0.1:0"]);
    args.extend(bad_password);
    let out = run("app-server", &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Check --etcd-user and --etcd-password"),
        "{stderr}"
    );

    // No client certificate: etcd ends the handshake.
    let mut no_key = strings(&["status"]);
    no_key.extend(flags_with(
        &etcd,
        &[("--etcd-cert", None), ("--etcd-key", None)],
    ));
    let out = run("autoscaler", &no_key).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("etcd refused the TLS connection without a client certificate")
            && stderr.contains("pass --etcd-cert and --etcd-key"),
        "{stderr}"
    );

    // A CA that did not sign etcd's certificate: we end the handshake.
    let mut args = strings(&["status"]);
    args.extend(flags_with(&etcd, &[("--etcd-ca", Some(&other_ca))]));
    let out = run("autoscaler", &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("The TLS handshake failed") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    let mut args = strings(&["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    args.extend(flags_with(&etcd, &[("--etcd-ca", Some(&other_ca))]));
    let out = run("gateway", &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("The TLS handshake failed"), "{stderr}");

    // Configuration mistakes are refused before any connection.
    let mut args = strings(&["status"]);
    args.extend(flags_with(&etcd, &[("--etcd-ca", None)]));
    let out = run("autoscaler", &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no --etcd-ca is given"), "{stderr}");
}

/// `--etcd-*` flags for `etcd` as `user` (no `--etcd`: the harness adds it).
fn as_user(etcd: &Etcd, user: &str, password: &str) -> Vec<String> {
    flags_with(
        etcd,
        &[
            ("--etcd-user", Some(user)),
            ("--etcd-password", Some(password)),
        ],
    )
    .split_off(2)
}

/// A gateway signed in to etcd with `user_flags` that serves HTTPS with
/// the registry's certificates.
async fn registry_tls_gateway(etcd: &Etcd, mut user_flags: Vec<String>) -> Gateway {
    user_flags.extend(strings(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-registry-certs",
    ]));
    let flag_refs: Vec<&str> = user_flags.iter().map(String::as_str).collect();
    Gateway::start(etcd, &flag_refs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_certificates_are_readable_by_the_gateways_user_only() {
    let etcd = Etcd::start_secure(BOTH).await;
    let keys = registry::Keys::default();
    let mut root_args = etcd.args();
    root_args.etcd_user = Some("root".into());
    root_args.etcd_password = Some(ROOT_PASSWORD.into());
    let mut root = root_args.connect().await.expect("etcd as root");
    // What the operator sets up: a role for everything of Shoal's but
    // `certs/` (etcd permissions only add up: a role on the whole prefix
    // would read the keys too), one that reads `certs/`, and the gateway's
    // user with both while the app servers' user has only the first.
    let (all, certs) = (keys.root(), keys.certs());
    let after_certs = format!("{}0", certs.trim_end_matches('/'));
    let after_all = format!("{}0", all.trim_end_matches('/'));
    root.role_add("registry").await.unwrap();
    for permission in [
        Permission::read_write(all.as_str()).with_range_end(certs.as_str()),
        Permission::read_write(after_certs).with_range_end(after_all),
    ] {
        root.role_grant_permission("registry", permission)
            .await
            .unwrap();
    }
    root.role_add("certs-reader").await.unwrap();
    root.role_grant_permission(
        "certs-reader",
        Permission::read(certs.as_str()).with_prefix(),
    )
    .await
    .unwrap();
    for (user, roles) in [
        ("gateway", &["registry", "certs-reader"][..]),
        ("app", &["registry"][..]),
    ] {
        root.user_add(user, "pw-".to_owned() + user, None)
            .await
            .unwrap();
        for role in roles {
            root.user_grant_role(user, *role).await.unwrap();
        }
    }

    // The operator (the harness's user, granted the whole prefix) puts one.
    let pki = Pki::generate();
    let shop = pki.server_cert("shop", &["shop.example"], None);
    let mut args = strings(&["certs", "put", "shop", "--cert"]);
    args.push(shop.cert.display().to_string());
    args.push("--key".into());
    args.push(shop.key.display().to_string());
    args.extend(flags_with(&etcd, &[]));
    let out = run("registry", &args).await;
    assert!(out.status.success(), "{out:?}");

    // Another user reads neither the key nor the listing.
    let app_flags = as_user(&etcd, "app", "pw-app");
    let mut app_args = etcd.args();
    app_args.etcd_user = Some("app".into());
    app_args.etcd_password = Some("pw-app".into());
    let mut app = app_args.connect().await.expect("etcd as app");
    let denied = app.get(keys.cert("shop"), None).await.unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    // (What that role is for still works.)
    app.get(keys.routes(), None)
        .await
        .expect("the app user reads routes/");
    // Through the registry store, a denied read or write is refused at once
    // (not retried, nor reported as etcd being away or a write that may
    // have been made) and says what to change.
    let store = registry::Store::etcd(app.clone(), keys.clone());
    let asked = std::time::Instant::now();
    let read = store.certs().await.unwrap_err();
    assert!(
        matches!(read, registry::StoreError::Denied { .. }),
        "{read:?}"
    );
    assert!(
        asked.elapsed() < registry::config::ETCD_CALL_TIMEOUT,
        "a denied read was retried for {:?}",
        asked.elapsed()
    );
    let other = pki.server_cert("other", &["other.example"], None);
    let pem = registry::tls_cert::CertPem {
        chain_pem: std::fs::read_to_string(&other.cert).unwrap(),
        key_pem: std::fs::read_to_string(&other.key).unwrap(),
    };
    let write = store.put_cert("other", &pem).await.unwrap_err();
    for denied in [&read, &write] {
        let message = denied.to_string();
        assert!(
            message.contains("permission denied") && message.contains("role"),
            "{message}"
        );
        assert!(!message.contains("may or may not"), "{message}");
    }
    let mut args = strings(&["--etcd", &etcd.endpoint(), "certs", "list"]);
    args.extend(app_flags.iter().cloned());
    let out = run("registry", &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("shop"));

    // The gateway, with its user, serves it.
    let gateway = registry_tls_gateway(&etcd, as_user(&etcd, "gateway", "pw-gateway")).await;
    let tls_addr = gateway.tls_addr.clone().expect("a TLS listener");
    let expected = cert_der(&shop.cert);
    let served = shoal_tests::wait_until_async(
        Duration::from_secs(10),
        "the certificate served",
        || async {
            TlsConn::connect(
                &tls_addr,
                "shop.example",
                &["http/1.1"],
                BOTH_VERSIONS,
                &pki.ca,
            )
            .await
            .is_ok_and(|conn| conn.served == expected)
        },
    )
    .await;
    served.unwrap_or_else(|e| panic!("{e}; gateway log:\n{}", gateway.proc.stderr()));

    // A gateway whose user lacks the `certs/` grant says so, rather than
    // that etcd is unreachable.
    let denied = registry_tls_gateway(&etcd, app_flags).await;
    let said = shoal_tests::wait_until(Duration::from_secs(10), "the refusal logged", || {
        denied.proc.stderr().lines().any(|l| {
            l.contains("/shoal/certs/")
                && l.contains("etcd refused to list or watch")
                && l.contains("permission denied")
        })
    })
    .await;
    said.unwrap_or_else(|e| panic!("{e}; gateway log:\n{}", denied.proc.stderr()));
    assert!(!denied.proc.stderr().contains("etcd unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_backends_keeps_instances_outside_it_from_traffic() {
    let etcd = Etcd::start().await;
    let app = AppServer::start(&etcd, AppServerOptions::default()).await;
    let client = etcd.client().await;
    wait_instance(
        &client,
        &app.key(),
        Duration::from_secs(10),
        "registered",
        is_ready,
    )
    .await;

    // 127.0.0.1 is outside 10.0.0.0/8: no traffic, a warning naming key and address.
    let refusing = Gateway::start(
        &etcd,
        &[
            "--allowed-backends",
            "10.0.0.0/8",
            "--hold-timeout",
            "300ms",
        ],
    )
    .await;
    let key = app.key();
    let warned = shoal_tests::wait_until(Duration::from_secs(10), "refusal logged", || {
        let log = refusing.proc.stderr();
        log.contains("instance refused") && log.contains(&key) && log.contains(&app.addr)
    })
    .await;
    warned.unwrap_or_else(|e| panic!("{e}; log:\n{}", refusing.proc.stderr()));
    let (status, _) = get(&refusing.url("/")).await.expect("an answer");
    assert_eq!(status, 503);
    let services: serde_json::Value = reqwest::get(refusing.admin_url("/api/v1/services"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !services.to_string().contains(&app.id),
        "a refused instance is not listed: {services}"
    );
    // Once per change, not per request or rebuild.
    get(&refusing.url("/")).await;
    assert_eq!(
        refusing.proc.stderr().matches("instance refused").count(),
        1,
        "{}",
        refusing.proc.stderr()
    );

    // With 127.0.0.0/8 allowed it serves.
    let allowing = Gateway::start(&etcd, &["--allowed-backends", "127.0.0.0/8"]).await;
    let url = allowing.url("/");
    let id = app.id.clone();
    shoal_tests::wait_until_async(Duration::from_secs(10), "served", || {
        let (url, id) = (url.clone(), id.clone());
        async move { get(&url).await == Some((200, id)) }
    })
    .await
    .unwrap();

    // A bad CIDR stops the gateway at start-up with the fix.
    let out = run(
        "gateway",
        &strings(&[
            "--etcd",
            &etcd.endpoint(),
            "--allowed-backends",
            "10.0.0.0/33",
        ]),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CIDR notation such as 10.0.0.0/8"),
        "{stderr}"
    );
}
