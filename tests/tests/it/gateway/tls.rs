//! TLS termination end to end: a gateway with `--tls-listen` and
//! certificates from the test's CA ([`Pki`], ECDSA P-256), clients on
//! tokio-rustls ([`TlsConn`]) or, for what rustls clients cannot send (a
//! TLS 1.1 ClientHello), raw bytes.
//!
//! - HTTPS is proxied over HTTP/2 and HTTP/1.1 (chosen by ALPN) and with
//!   TLS 1.2 too; the instance is told `X-Forwarded-Proto: https`.
//! - SNI picks the right certificate of two (a wildcard one included); no
//!   match gets the first.
//! - A client that never finishes its handshake is cut off after
//!   `--header-read-timeout`.
//! - A TLS 1.1 hello is refused with a protocol_version alert, where the
//!   same hello saying TLS 1.2 gets a ServerHello.
//! - Unusable certificates (mismatched key, missing file, not PEM, a TLS
//!   listener without one) stop the gateway at start with the fix.
//! - A quiet HTTP/1.1 keep-alive connection parks (hyper's buffers
//!   released; the one-byte wait for its next request reads through rustls)
//!   and is served again on the same session; an HTTP/2 one never parks.
//! - SIGHUP swaps the certificate for new handshakes while a kept-alive
//!   connection goes on; the expiry metric and warning follow; a failed
//!   reload keeps the previous certificate.
//! - A route with `https_redirect` answers plain HTTP with 308 to HTTPS.
//! - `--tls-registry-certs`: a certificate put with `registry certs put` is
//!   served for its SNI name without a restart; replacing it changes what
//!   new handshakes get while a kept-alive connection goes on (metric and
//!   expiry warning follow); deleting it falls back to the default; bad
//!   files are refused by the CLI with nothing written; a bad entry
//!   written straight to etcd is skipped with a warning and the good ones
//!   are still served, also while etcd is down. (With etcd auth: `security`.)

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use shoal_tests::binaries::registry_cli;
use shoal_tests::pki::{CertFiles, Pki};
use shoal_tests::tls::{BOTH_VERSIONS, TlsConn, cert_der};
use shoal_tests::{Gateway, Platform, run_to_exit, wait_until, wait_until_async};

use super::framing::{Recorder, behind_recorder, header_values};
use super::limits::{closed_within, read_answer};
use super::{gateway_log, http, metric_sum, metrics_text, put_route};

const BOTH_ALPN: &[&str] = &["h2", "http/1.1"];

/// `--tls-listen` on a free port with the given certificate pairs.
fn tls_flags(pairs: &[&CertFiles]) -> Vec<String> {
    let mut flags = vec!["--tls-listen".to_owned(), "127.0.0.1:0".to_owned()];
    for pair in pairs {
        flags.push("--tls-cert".into());
        flags.push(pair.cert.display().to_string());
        flags.push("--tls-key".into());
        flags.push(pair.key.display().to_string());
    }
    flags
}

fn as_strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

fn tls_addr(gateway: &Gateway) -> &str {
    gateway
        .tls_addr
        .as_deref()
        .expect("the gateway was started with --tls-listen and printed tls_addr")
}

/// A gateway on TLS with `pairs`, in front of a [`Recorder`].
async fn tls_behind_recorder(pairs: &[&CertFiles]) -> (Platform, Recorder) {
    let flags = tls_flags(pairs);
    behind_recorder(&as_strs(&flags)).await
}

async fn connect(gateway: &Gateway, sni: &str, alpn: &[&str], ca: &Path) -> TlsConn {
    TlsConn::connect(tls_addr(gateway), sni, alpn, BOTH_VERSIONS, ca)
        .await
        .unwrap_or_else(|e| panic!("{e:#}; {}", gateway_log(gateway)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_proxied_over_h2_and_http11_and_the_instance_is_told_https() {
    let pki = Pki::generate();
    let cert = pki.server_cert("shop", &["shop.example"], None);
    let (platform, recorder) = tls_behind_recorder(&[&cert]).await;
    let gateway = platform.gateway();

    let mut h2 = connect(gateway, "shop.example", BOTH_ALPN, &pki.ca).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]), "h2 is preferred");
    assert_eq!(h2.version, rustls::ProtocolVersion::TLSv1_3);
    let (status, _, body) = h2.get("shop.example", "/over-h2").await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));

    let mut h1 = connect(gateway, "shop.example", &["http/1.1"], &pki.ca).await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (status, _, _) = h1.get("shop.example", "/over-h1").await.unwrap();
    assert_eq!(status, 200);
    // The same connection serves a second request (keep-alive).
    let (status, _, _) = h1.get("shop.example", "/over-h1-again").await.unwrap();
    assert_eq!(status, 200);

    // A TLS 1.2-only client is served too.
    let mut tls12 = TlsConn::connect(
        tls_addr(gateway),
        "shop.example",
        BOTH_ALPN,
        &[&rustls::version::TLS12],
        &pki.ca,
    )
    .await
    .unwrap();
    assert_eq!(tls12.version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(
        tls12.get("shop.example", "/over-tls12").await.unwrap().0,
        200
    );

    for path in ["/over-h2", "/over-h1", "/over-h1-again", "/over-tls12"] {
        let seen = recorder.request_for(path, gateway).await;
        assert_eq!(
            header_values(&seen, "x-forwarded-proto"),
            ["https"],
            "{seen}"
        );
        assert_eq!(
            header_values(&seen, "forwarded"),
            ["for=127.0.0.1;proto=https"],
            "{seen}"
        );
        assert_eq!(
            header_values(&seen, "x-forwarded-host"),
            ["shop.example"],
            "{seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_of_two() {
    let pki = Pki::generate();
    let a = pki.server_cert("a", &["a.test"], None);
    let b = pki.server_cert("b", &["*.b.test", "b.test"], None);
    let flags = tls_flags(&[&a, &b]);
    let platform = Platform::builder().gateway(&as_strs(&flags)).start().await;
    let gateway = platform.gateway();
    let (cert_a, cert_b) = (cert_der(&a.cert), cert_der(&b.cert));
    for (sni, expected, which) in [
        ("a.test", &cert_a, "a"),
        ("b.test", &cert_b, "b"),
        ("www.b.test", &cert_b, "b (wildcard)"),
        ("WWW.B.TEST", &cert_b, "b (case-insensitive)"),
    ] {
        let conn = connect(gateway, sni, BOTH_ALPN, &pki.ca).await;
        assert!(conn.served == *expected, "SNI {sni} did not get {which}");
    }
    // No match: the first pair, which the client then refuses for the name
    // (it is not valid for it): the handshake fails on the client's side.
    let err = TlsConn::connect(
        tls_addr(gateway),
        "other.test",
        BOTH_ALPN,
        BOTH_VERSIONS,
        &pki.ca,
    )
    .await
    .err()
    .expect("a certificate for a.test does not verify as other.test");
    let err = format!("{err:#}");
    assert!(
        err.contains("not valid for name") && err.contains("a.test") && !err.contains("b.test"),
        "the default (a.test) certificate was served: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_cut_off_after_the_header_read_timeout() {
    let pki = Pki::generate();
    let cert = pki.server_cert("shop", &["shop.example"], None);
    let mut flags = tls_flags(&[&cert]);
    flags.extend(["--header-read-timeout".to_owned(), "1s".to_owned()]);
    let (platform, _recorder) = behind_recorder(&as_strs(&flags)).await;
    let gateway = platform.gateway();
    let since = std::time::Instant::now();
    // Half a ClientHello, then silence.
    let mut silent = TcpStream::connect(tls_addr(gateway)).await.unwrap();
    let hello = client_hello([0x03, 0x03], b"shop.example");
    silent.write_all(&hello[..hello.len() / 2]).await.unwrap();
    // Meanwhile a client that finishes its handshake is served.
    let mut other = connect(gateway, "shop.example", &["http/1.1"], &pki.ca).await;
    assert_eq!(other.get("shop.example", "/other").await.unwrap().0, 200);
    let closed = closed_within(&mut silent, since, Duration::from_secs(5)).await;
    let took = closed.unwrap_or_else(|| {
        panic!(
            "an unfinished handshake was kept for 5 s; {}",
            gateway_log(gateway)
        )
    });
    assert!(
        took >= Duration::from_millis(900),
        "cut off after {took:?}, before the 1 s timeout"
    );
}

/// A ClientHello on raw bytes for `sni`, with `version` as its only version
/// (no supported_versions extension), ECDHE-ECDSA suites and the
/// extensions a TLS 1.2 server needs for them.
fn client_hello(version: [u8; 2], sni: &[u8]) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut server_name = vec![0x00];
    server_name.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    server_name.extend_from_slice(sni);
    let mut list = (server_name.len() as u16).to_be_bytes().to_vec();
    list.extend_from_slice(&server_name);
    for (kind, data) in [
        (0x0000u16, list),
        // supported_groups: secp256r1, x25519.
        (0x000a, vec![0x00, 0x04, 0x00, 0x17, 0x00, 0x1d]),
        // ec_point_formats: uncompressed.
        (0x000b, vec![0x01, 0x00]),
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256.
        (0x000d, vec![0x00, 0x04, 0x04, 0x03, 0x08, 0x04]),
    ] {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(&data);
    }
    let mut body = version.to_vec();
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, _256_GCM_SHA384, _AES_128_CBC_SHA.
    body.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2c, 0xc0, 0x09]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Send `hello` on a new connection; the first record the gateway answers
/// with (up to 7 bytes: header and, for an alert, its level and description).
async fn first_record(addr: &str, hello: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(hello).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while answer.len() < 7 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer to the ClientHello within 5 s: {answer:02x?}"),
        }
    }
    answer.truncate(7);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused() {
    let pki = Pki::generate();
    let cert = pki.server_cert("shop", &["shop.example"], None);
    let flags = tls_flags(&[&cert]);
    let platform = Platform::builder().gateway(&as_strs(&flags)).start().await;
    let addr = tls_addr(platform.gateway());

    // The control: the same hello saying TLS 1.2 gets a ServerHello.
    let answer = first_record(addr, &client_hello([0x03, 0x03], b"shop.example")).await;
    assert_eq!(
        answer[..1],
        [0x16],
        "a handshake record answers TLS 1.2: {answer:02x?}"
    );
    assert_eq!(answer[5], 0x02, "a ServerHello: {answer:02x?}");

    let answer = first_record(addr, &client_hello([0x03, 0x02], b"shop.example")).await;
    assert_eq!(answer.len(), 7, "an alert record: {answer:02x?}");
    assert_eq!(answer[0], 0x15, "an alert, no ServerHello: {answer:02x?}");
    assert_eq!(
        answer[5..],
        [0x02, 70],
        "a fatal protocol_version alert: {answer:02x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_as_sni_is_served_without_a_log_line_per_connection() {
    let pki = Pki::generate();
    let cert = pki.server_cert("shop", &["shop.example"], None);
    let flags = tls_flags(&[&cert]);
    let platform = Platform::builder().gateway(&as_strs(&flags)).start().await;
    let gateway = platform.gateway();
    // What wrk and OpenSSL's s_client send when given an IP address, which
    // RFC 6066 forbids: rustls ignores it (the default certificate is
    // served) and warns, once per connection, which any client could use
    // to flood the gateway's log.
    for _ in 0..20 {
        let answer =
            first_record(tls_addr(gateway), &client_hello([0x03, 0x03], b"127.0.0.1")).await;
        assert_eq!(answer[5], 0x02, "a ServerHello: {answer:02x?}");
    }
    let log = gateway_log(gateway);
    assert!(
        !log.contains("Illegal SNI"),
        "rustls's warning reached the gateway's log: {log}"
    );
}

/// Run a gateway with `flags` that must fail at start; its stderr.
async fn start_fails(flags: &[String]) -> String {
    let mut args = vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    args.extend(as_strs(flags));
    let out = run_to_exit("gateway", &args, Duration::from_secs(10)).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} started: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificates_stop_the_gateway_saying_how_to_fix_them() {
    let pki = Pki::generate();
    let a = pki.server_cert("a", &["a.test"], None);
    let b = pki.server_cert("b", &["b.test"], None);

    let crossed = CertFiles {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let err = start_fails(&tls_flags(&[&crossed])).await;
    let expected = format!(
        "key {} does not match certificate {}; give each --tls-cert with the --tls-key it was issued for",
        b.key.display(),
        a.cert.display()
    );
    assert!(err.contains(&expected), "{err}");

    let missing = CertFiles {
        cert: pki.dir().join("missing.pem"),
        key: a.key.clone(),
    };
    let err = start_fails(&tls_flags(&[&missing])).await;
    assert!(
        err.contains(&format!(
            "cannot read --tls-cert {}",
            missing.cert.display()
        )) && err.contains("check the path"),
        "{err}"
    );

    // A key file given as the certificate: PEM, but no certificate in it.
    let swapped = CertFiles {
        cert: a.key.clone(),
        key: a.cert.clone(),
    };
    let err = start_fails(&tls_flags(&[&swapped])).await;
    assert!(
        err.contains("no certificate in the file") && err.contains("BEGIN CERTIFICATE"),
        "{err}"
    );

    let err = start_fails(&["--tls-listen".into(), "127.0.0.1:0".into()]).await;
    assert!(
        err.contains("needs a certificate; add --tls-cert cert.pem --tls-key key.pem"),
        "{err}"
    );
}

/// `cert` and `key` copied over `into`'s files.
fn install(from: &CertFiles, into: &CertFiles) {
    std::fs::copy(&from.cert, &into.cert).unwrap();
    std::fs::copy(&from.key, &into.key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_https_keep_alive_connection_parks_and_is_served_again() {
    let pki = Pki::generate();
    let cert = pki.server_cert("shop", &["shop.example"], None);
    let (platform, _recorder) = tls_behind_recorder(&[&cert]).await;
    let gateway = platform.gateway();
    let http = http();
    let clients = |state: &'static str| {
        let http = http.clone();
        async move {
            let text = metrics_text(&http, gateway).await;
            metric_sum(
                &text,
                "shoal_gateway_client_connections",
                &format!("state=\"{state}\""),
            )
        }
    };

    let mut h2 = connect(gateway, "shop.example", &["h2"], &pki.ca).await;
    let mut h1 = connect(gateway, "shop.example", &["http/1.1"], &pki.ca).await;
    for round in 1..=2 {
        assert_eq!(h2.get("shop.example", "/h2").await.unwrap().0, 200);
        assert_eq!(h1.get("shop.example", "/h1").await.unwrap().0, 200);
        let parked = wait_until_async(
            Duration::from_secs(10),
            "the HTTP/1.1 connection parks",
            || async { clients("parked").await == 1.0 },
        )
        .await;
        assert!(parked.is_ok(), "round {round}; {}", gateway_log(gateway));
        // The HTTP/2 connection (and nothing else) is still active; the
        // admin API's own connection is not a proxy client.
        assert_eq!(clients("active").await, 1.0, "round {round}");
    }
    let text = metrics_text(&http, gateway).await;
    let releases: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("shoal_gateway_client_connection_releases_total "))
        .unwrap_or_else(|| panic!("no releases counter: {text}"))
        .parse()
        .unwrap();
    assert!(
        releases >= 2.0,
        "{releases} releases after two quiet spells"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_while_an_open_connection_keeps_working() {
    let pki = Pki::generate();
    let first = pki.server_cert("first", &["shop.example"], None);
    let renewed = pki.server_cert_expiring_in("renewed", &["shop.example"], 10);
    // The files the gateway is given, rewritten under it.
    let live = CertFiles {
        cert: pki.dir().join("live.pem"),
        key: pki.dir().join("live-key.pem"),
    };
    install(&first, &live);
    let (platform, _recorder) = tls_behind_recorder(&[&live]).await;
    let gateway = platform.gateway();

    let mut kept = connect(gateway, "shop.example", &["http/1.1"], &pki.ca).await;
    assert!(kept.served == cert_der(&first.cert));
    assert_eq!(kept.get("shop.example", "/before").await.unwrap().0, 200);

    install(&renewed, &live);
    gateway.proc.signal(Signal::SIGHUP);
    let renewed_der = cert_der(&renewed.cert);
    let swapped = wait_until_async(
        Duration::from_secs(10),
        "new handshakes get the renewed certificate",
        || async {
            TlsConn::connect(
                tls_addr(gateway),
                "shop.example",
                BOTH_ALPN,
                BOTH_VERSIONS,
                &pki.ca,
            )
            .await
            .is_ok_and(|conn| conn.served == renewed_der)
        },
    )
    .await;
    if let Err(e) = swapped {
        panic!("{e}; {}", gateway_log(gateway));
    }
    // The connection opened before the reload goes on, on its own session.
    assert_eq!(kept.get("shop.example", "/after").await.unwrap().0, 200);
    assert!(kept.served == cert_der(&first.cert));

    // The renewed certificate expires in about 10 days: metric and warning.
    let metrics = metrics_text(&http(), gateway).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("shoal_gateway_tls_cert_expiry_seconds{"))
        .unwrap_or_else(|| panic!("no expiry metric: {metrics}"));
    assert!(
        line.contains(&format!("name=\"{}\"", live.cert.display())),
        "{line}"
    );
    let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let days = seconds / 86_400.0;
    assert!((9.0..=10.0).contains(&days), "{line}: {days} days");
    let warned = wait_until(Duration::from_secs(5), "the expiry warning", || {
        gateway
            .proc
            .stderr()
            .contains("TLS certificate expires within 14 days")
    })
    .await;
    assert!(warned.is_ok(), "{}", gateway_log(gateway));

    // A broken file: the reload fails, the renewed certificate stays.
    std::fs::write(&live.cert, "garbage\n").unwrap();
    gateway.proc.signal(Signal::SIGHUP);
    let failed = wait_until(Duration::from_secs(10), "the failed reload's error", || {
        gateway
            .proc
            .stderr()
            .contains("TLS certificates not reloaded")
    })
    .await;
    assert!(failed.is_ok(), "{}", gateway_log(gateway));
    let conn = connect(gateway, "shop.example", BOTH_ALPN, &pki.ca).await;
    assert!(
        conn.served == renewed_der,
        "the previous certificate is kept"
    );
    assert_eq!(kept.get("shop.example", "/still").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_route_answers_plain_http_with_308_to_https() {
    let pki = Pki::generate();
    let cert = pki.server_cert("shop", &["shop.example"], None);
    let (platform, recorder) = tls_behind_recorder(&[&cert]).await;
    let gateway = platform.gateway();
    put_route(
        &platform.etcd,
        "secure",
        r#"{"service":"app","host":"shop.example","path_prefix":"/secure","https_redirect":true}"#,
    )
    .await;
    let tls_port = tls_addr(gateway).rsplit(':').next().unwrap();
    let request = b"GET /secure/cart?item=7 HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n";
    let plain = |request: &'static [u8]| async move {
        let mut stream = TcpStream::connect(&gateway.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_answer(&mut stream).await.0
    };
    let redirected = wait_until_async(
        Duration::from_secs(10),
        "the redirect route in use",
        || async { plain(request).await.starts_with("HTTP/1.1 308") },
    )
    .await;
    if let Err(e) = redirected {
        panic!(
            "{e}: last answer {}; {}",
            plain(request).await,
            gateway_log(gateway)
        );
    }
    let answer = plain(request).await;
    assert_eq!(
        header_values(&answer, "location"),
        [format!(
            "https://shop.example:{tls_port}/secure/cart?item=7"
        )],
        "{answer}"
    );
    // Other routes are not redirected.
    let answer = plain(b"GET /open HTTP/1.1\r\nHost: shop.example\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Over TLS the redirect route proxies.
    let mut conn = connect(gateway, "shop.example", BOTH_ALPN, &pki.ca).await;
    let (status, _, _) = conn.get("shop.example", "/secure/cart").await.unwrap();
    assert_eq!(status, 200);
    recorder.request_for("/secure/cart", gateway).await;
}

/// `registry certs put NAME` with `files`; its output.
async fn put_cert(platform: &Platform, name: &str, files: &CertFiles) -> std::process::Output {
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    registry_cli(
        &platform.etcd,
        &["certs", "put", name, "--cert", &cert, "--key", &key],
    )
    .await
}

/// `registry certs put NAME` that must succeed; its stdout.
async fn put_cert_ok(platform: &Platform, name: &str, files: &CertFiles) -> String {
    let out = put_cert(platform, name, files).await;
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait until a handshake for `sni` gets the certificate in `served`'s file.
async fn wait_served(gateway: &Gateway, sni: &str, served: &Path, ca: &Path, what: &str) {
    let expected = cert_der(served);
    let got = wait_until_async(Duration::from_secs(10), what, || async {
        TlsConn::connect(tls_addr(gateway), sni, BOTH_ALPN, BOTH_VERSIONS, ca)
            .await
            .is_ok_and(|conn| conn.served == expected)
    })
    .await;
    if let Err(e) = got {
        panic!("{e}; {}", gateway_log(gateway));
    }
}

/// The handshake for `sni`'s failure, once the certificate served for it
/// is not valid for it (the default one, for another name).
async fn refused_for(gateway: &Gateway, sni: &str, ca: &Path) -> String {
    let err = TlsConn::connect(tls_addr(gateway), sni, BOTH_ALPN, BOTH_VERSIONS, ca)
        .await
        .err()
        .unwrap_or_else(|| panic!("a certificate valid for {sni} was served"));
    format!("{err:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_certificate_is_served_replaced_and_deleted_without_a_restart() {
    let pki = Pki::generate();
    let default = pki.server_cert("default", &["default.test"], None);
    let shop = pki.server_cert("shop", &["shop.example"], None);
    let renewed = pki.server_cert_expiring_in("renewed", &["shop.example"], 10);
    let mut flags = tls_flags(&[&default]);
    flags.push("--tls-registry-certs".into());
    let (platform, recorder) = behind_recorder(&as_strs(&flags)).await;
    let gateway = platform.gateway();
    // Before the put: the default certificate, not valid for the name.
    let err = refused_for(gateway, "shop.example", &pki.ca).await;
    assert!(err.contains("default.test"), "{err}");

    let said = put_cert_ok(&platform, "shop", &shop).await;
    assert!(
        said.contains("created the certificate shop") && said.contains("shop.example"),
        "{said}"
    );
    wait_served(
        gateway,
        "shop.example",
        &shop.cert,
        &pki.ca,
        "the put certificate served",
    )
    .await;
    let mut kept = connect(gateway, "shop.example", &["http/1.1"], &pki.ca).await;
    assert_eq!(kept.get("shop.example", "/before").await.unwrap().0, 200);
    // The file pair is still the default.
    let err = refused_for(gateway, "other.test", &pki.ca).await;
    assert!(err.contains("default.test"), "{err}");

    // Bad files: refused before anything is written.
    let crossed = CertFiles {
        cert: renewed.cert.clone(),
        key: shop.key.clone(),
    };
    let out = put_cert(&platform, "shop", &crossed).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--key {} does not match the certificate",
            shop.key.display()
        )),
        "{stderr}"
    );
    let stored = platform
        .client
        .clone()
        .get(registry::Keys::default().cert("shop"), None)
        .await
        .unwrap();
    let stored = String::from_utf8_lossy(stored.kvs()[0].value());
    assert!(
        stored.contains(
            &std::fs::read_to_string(&shop.cert)
                .unwrap()
                .replace('\n', "\\n")
        ),
        "the stored certificate is still the first one"
    );

    // Replaced: new handshakes get the new one, the open connection goes on.
    let said = put_cert_ok(&platform, "shop", &renewed).await;
    assert!(said.contains("replaced the certificate shop"), "{said}");
    wait_served(
        gateway,
        "shop.example",
        &renewed.cert,
        &pki.ca,
        "the replacement served",
    )
    .await;
    assert_eq!(kept.get("shop.example", "/after").await.unwrap().0, 200);
    assert!(kept.served == cert_der(&shop.cert));
    recorder.request_for("/after", gateway).await;

    // Its expiry: the metric by name, and a warning that says how to renew it.
    let metrics = metrics_text(&http(), gateway).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("shoal_gateway_tls_cert_expiry_seconds{name=\"registry:shop\"}"))
        .unwrap_or_else(|| panic!("no expiry metric for registry:shop: {metrics}"));
    let days = line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() / 86_400.0;
    assert!((9.0..=10.0).contains(&days), "{line}: {days} days");
    let warned = wait_until(Duration::from_secs(5), "the expiry warning", || {
        gateway.proc.stderr().lines().any(|l| {
            l.contains("TLS certificate expires within 14 days")
                && l.contains("registry:shop")
                && l.contains("registry certs put")
        })
    })
    .await;
    assert!(warned.is_ok(), "{}", gateway_log(gateway));

    // Listed with names and expiry, never the key.
    let out = registry_cli(&platform.etcd, &["certs", "list"]).await;
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    let expected_date = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    assert!(
        listed.starts_with("NAME")
            && listed.contains("shop")
            && listed.contains("shop.example")
            && listed.contains(&expected_date),
        "{listed}"
    );
    let key_line = std::fs::read_to_string(&renewed.key).unwrap();
    let key_line = key_line.lines().nth(1).unwrap();
    assert!(
        !listed.contains(key_line) && !listed.contains("PRIVATE"),
        "{listed}"
    );

    // Deleted: the default again.
    let out = registry_cli(&platform.etcd, &["certs", "delete", "shop"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted the certificate shop"));
    let fell_back = wait_until_async(
        Duration::from_secs(10),
        "the default served again",
        || async {
            refused_for(gateway, "shop.example", &pki.ca)
                .await
                .contains("default.test")
        },
    )
    .await;
    if let Err(e) = fell_back {
        panic!("{e}; {}", gateway_log(gateway));
    }
    assert_eq!(kept.get("shop.example", "/still").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_registry_entry_is_skipped_and_the_good_ones_are_served_even_while_etcd_is_down() {
    let pki = Pki::generate();
    let good = pki.server_cert("good", &["good.test"], None);
    let other = pki.server_cert("other", &["other.test"], None);
    // No file pair at all: the registry's certificates only.
    let mut platform = Platform::builder()
        .gateway(&["--tls-listen", "127.0.0.1:0", "--tls-registry-certs"])
        .start()
        .await;
    // Written around the CLI: a key of another certificate, and not JSON.
    let crossed = serde_json::json!({
        "chain_pem": std::fs::read_to_string(&other.cert).unwrap(),
        "key_pem": std::fs::read_to_string(&good.key).unwrap(),
    });
    let keys = registry::Keys::default();
    let mut client = platform.client.clone();
    client
        .put(keys.cert("a-crossed"), crossed.to_string(), None)
        .await
        .unwrap();
    client
        .put(keys.cert("b-garbage"), "{nope", None)
        .await
        .unwrap();
    put_cert_ok(&platform, "good", &good).await;

    let gateway = platform.gateway();
    wait_served(
        gateway,
        "good.test",
        &good.cert,
        &pki.ca,
        "the good certificate served",
    )
    .await;
    // The bad ones are not served: the first good one is the default.
    let err = refused_for(gateway, "other.test", &pki.ca).await;
    assert!(err.contains("good.test"), "{err}");
    let log = gateway.proc.stderr();
    let warned = |key: &str, what: &str| {
        log.lines().any(|l| {
            l.contains("skipping malformed registry entry") && l.contains(key) && l.contains(what)
        })
    };
    assert!(
        warned(
            "/shoal/certs/a-crossed",
            "does not match the certificate; give the key the certificate was issued for; write the pair again with `registry certs put a-crossed"
        ),
        "{}",
        gateway_log(gateway)
    );
    assert!(
        warned("/shoal/certs/b-garbage", "not valid JSON"),
        "{}",
        gateway_log(gateway)
    );

    // etcd gone: the last good set is still served.
    platform.etcd.stop().await;
    let gateway = platform.gateway();
    let noticed = wait_until(
        Duration::from_secs(15),
        "the gateway sees etcd gone",
        || {
            gateway.proc.stderr().lines().any(|l| {
                l.contains("/shoal/certs/")
                    && (l.contains("etcd unreachable") || l.contains("watch stream broken"))
            })
        },
    )
    .await;
    assert!(noticed.is_ok(), "{}", gateway_log(gateway));
    let conn = connect(gateway, "good.test", BOTH_ALPN, &pki.ca).await;
    assert!(conn.served == cert_der(&good.cert));
}
