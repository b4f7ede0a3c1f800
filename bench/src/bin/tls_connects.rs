//! `tls_connects`: new TLS connections per second through a proxy, one
//! request each, for `bench/gateway-tls.sh`'s full-handshake column.
//! CONNECTIONS clients, each in a loop until SECONDS have passed: open a TCP
//! connection, do a full TLS handshake (rustls, TLS 1.2 or 1.3, ALPN
//! `http/1.1`, SNI SERVER_NAME, the proxy's certificate checked against the
//! CA in the PEM file CA), send one `GET` with `Connection: close`, read the
//! whole response (200 expected), and drop the connection. Session
//! resumption is off: h2load and wrk both resume the session of a client's
//! earlier connection (seen in nginx's `$ssl_session_reused`), which skips
//! the certificate and its signature; here every connection pays for them.
//!
//! Settings (environment): URL (required, `https://HOST:PORT/PATH`), CA
//! (required), SERVER_NAME (`localhost`), CONNECTIONS (32), SECONDS (5).
//! Prints one line to stdout:
//! `connections N errors E per_sec R p50_ms … p99_ms … version … cipher … kx …`
//! (latency: from the TCP connect to the end of the response; version,
//! cipher suite and key exchange group of the last handshake). Exit status
//! 2 when the settings are wrong or no connection was made.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use shoal_bench::settings::{env_number, read_or_exit};
use shoal_tests::tls::{BOTH_VERSIONS, cert_der};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug)]
struct Settings {
    authority: String,
    path: String,
    ca: PathBuf,
    server_name: String,
    connections: u64,
    duration: Duration,
}

fn settings() -> Result<Settings, String> {
    let url = std::env::var("URL")
        .map_err(|_| "URL is not set; use e.g. URL=https://127.0.0.1:8443/".to_owned())?;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("URL={url:?} is not allowed; use an https:// URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(format!(
            "URL={url:?} names no host; use https://HOST:PORT/PATH"
        ));
    }
    let ca = std::env::var("CA").map_err(|_| {
        "CA is not set; set it to the PEM file of the CA that signed the proxy's certificate"
            .to_owned()
    })?;
    Ok(Settings {
        authority: authority.to_owned(),
        path: if path.is_empty() { "/" } else { path }.to_owned(),
        ca: PathBuf::from(ca),
        server_name: std::env::var("SERVER_NAME").unwrap_or_else(|_| "localhost".to_owned()),
        connections: env_number("CONNECTIONS", 32, 1)?,
        duration: Duration::from_secs(env_number("SECONDS", 5, 1)?),
    })
}

/// The client configuration every connection shares: no resumption.
fn client_config(ca: &std::path::Path) -> anyhow::Result<Arc<ClientConfig>> {
    anyhow::ensure!(ca.is_file(), "CA {} is not a file", ca.display());
    let mut roots = RootCertStore::empty();
    roots
        .add(cert_der(ca))
        .with_context(|| format!("CA {} is not a usable trust anchor", ca.display()))?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(BOTH_VERSIONS)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// What the handshake settled on: version, cipher suite, key exchange group.
type Negotiated = (String, String, String);

/// One connection: handshake, one request, the whole response.
async fn one(
    connector: &TlsConnector,
    settings: &Settings,
    name: &ServerName<'static>,
) -> anyhow::Result<Negotiated> {
    let tcp = TcpStream::connect(&settings.authority).await?;
    tcp.set_nodelay(true)?;
    let stream = connector.connect(name.clone(), tcp).await?;
    let (_, session) = stream.get_ref();
    let negotiated = (
        format!("{:?}", session.protocol_version().context("no version")?),
        format!(
            "{:?}",
            session
                .negotiated_cipher_suite()
                .context("no cipher suite")?
                .suite()
        ),
        format!(
            "{:?}",
            session
                .negotiated_key_exchange_group()
                .context("no key exchange group")?
                .name()
        ),
    );
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(&settings.path)
        .header(hyper::header::HOST, &settings.server_name)
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    anyhow::ensure!(status == 200, "answered {status}");
    drop(sender);
    // Ends once either side has closed (`Connection: close`). How it ends
    // (a close_notify or not) says nothing once the response is whole.
    let _ = connection.await;
    Ok(negotiated)
}

/// One client: connections back to back until `deadline`.
async fn client(
    connector: TlsConnector,
    settings: Arc<Settings>,
    deadline: Instant,
) -> (Vec<Duration>, u64, Option<String>, Option<Negotiated>) {
    let name = ServerName::try_from(settings.server_name.clone()).expect("checked in main");
    let (mut latencies, mut errors, mut first_error, mut negotiated) = (Vec::new(), 0, None, None);
    while Instant::now() < deadline {
        let started = Instant::now();
        match one(&connector, &settings, &name).await {
            Ok(n) => {
                latencies.push(started.elapsed());
                negotiated = Some(n);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    (latencies, errors, first_error, negotiated)
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let settings = match read_or_exit("tls_connects", settings) {
        Ok(settings) => Arc::new(settings),
        Err(code) => return code,
    };
    if let Err(e) = ServerName::try_from(settings.server_name.clone()) {
        eprintln!(
            "tls_connects: SERVER_NAME={:?} is not a DNS name or IP address ({e}); use e.g. localhost",
            settings.server_name
        );
        return ExitCode::from(2);
    }
    let connector = match client_config(&settings.ca) {
        Ok(config) => TlsConnector::from(config),
        Err(e) => {
            eprintln!("tls_connects: {e:#}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let deadline = started + settings.duration;
    let clients: Vec<_> = (0..settings.connections)
        .map(|_| tokio::spawn(client(connector.clone(), settings.clone(), deadline)))
        .collect();
    let (mut latencies, mut errors, mut first_error, mut negotiated) = (Vec::new(), 0, None, None);
    for handle in clients {
        let (l, e, first, n) = handle.await.expect("a client task does not panic");
        latencies.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
        negotiated = negotiated.or(n);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        eprintln!("tls_connects: {errors} connection(s) failed; the first: {e}");
    }
    let Some((version, cipher, kx)) = negotiated else {
        eprintln!("tls_connects: no connection was made");
        return ExitCode::from(2);
    };
    latencies.sort_unstable();
    println!(
        "connections {} errors {errors} per_sec {:.0} p50_ms {:.3} p99_ms {:.3} version {version} cipher {cipher} kx {kx}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
    );
    ExitCode::SUCCESS
}
