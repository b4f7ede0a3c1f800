//! `idle_conns`: many idle keep-alive client connections to one proxy, for
//! the memory per idle connection of `bench/gateway-scale.sh` (HTTP) and
//! `bench/gateway-tls.sh` (HTTPS). Opens CONNECTIONS HTTP/1.1 connections to
//! URL (PARALLEL at a time), sends one `GET` on each and reads its whole
//! response, then keeps every connection open and idle. Once all are open it
//! prints `open N failed F` on stdout, and it holds them for HOLD_SECS (the
//! script ends it sooner, once it has measured).
//!
//! An `https://` URL makes each connection a full TLS handshake (TLS 1.2 or
//! 1.3, ALPN `http/1.1`; `shoal_tests::tls`, a fresh client configuration per
//! connection, so nothing is resumed), trusting the CA certificate in the PEM
//! file CA and sending SNI SERVER_NAME (default `localhost`).
//!
//! Settings (environment): URL (required, `http://HOST:PORT/PATH` or
//! `https://...`), CONNECTIONS (10000), PARALLEL (200), HOLD_SECS (60), CA
//! (required with https), SERVER_NAME. The process needs a file descriptor
//! per connection (`ulimit -n`). Exit status 2 when the settings are wrong or
//! no connection was opened.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use shoal_bench::settings::{env_number, read_or_exit};
use shoal_tests::tls::{BOTH_VERSIONS, TlsConn};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[derive(Debug)]
struct Settings {
    authority: String,
    path: String,
    /// For an `https://` URL: the CA to trust and the SNI name to send.
    tls: Option<(PathBuf, String)>,
    connections: u64,
    parallel: u64,
    hold: Duration,
}

fn settings() -> Result<Settings, String> {
    let url = std::env::var("URL")
        .map_err(|_| "URL is not set; use e.g. URL=http://127.0.0.1:8080/".to_owned())?;
    let (rest, tls) = if let Some(rest) = url.strip_prefix("https://") {
        let ca = std::env::var("CA").map_err(|_| {
            format!("URL={url:?} is https but CA is not set; set CA to the PEM file of the CA that signed the proxy's certificate")
        })?;
        let name = std::env::var("SERVER_NAME").unwrap_or_else(|_| "localhost".to_owned());
        (rest, Some((PathBuf::from(ca), name)))
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, None)
    } else {
        return Err(format!(
            "URL={url:?} is not allowed; use an http:// or https:// URL"
        ));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(format!(
            "URL={url:?} names no host; use http://HOST:PORT/PATH"
        ));
    }
    Ok(Settings {
        authority: authority.to_owned(),
        path: if path.is_empty() { "/" } else { path }.to_owned(),
        tls,
        connections: env_number("CONNECTIONS", 10_000, 1)?,
        parallel: env_number("PARALLEL", 200, 1)?,
        hold: Duration::from_secs(env_number("HOLD_SECS", 60, 1)?),
    })
}

/// What keeps one connection open (never read, only dropped at the end).
type Held = Box<dyn std::any::Any + Send>;

/// One connection, one request answered 200; answers the handle that keeps
/// the connection open.
async fn open(
    authority: String,
    path: String,
    tls: Option<(PathBuf, String)>,
) -> anyhow::Result<Held> {
    let Some((ca, name)) = tls else {
        return Ok(Box::new(open_plain(authority, path).await?));
    };
    let mut conn = TlsConn::connect(&authority, &name, &["http/1.1"], BOTH_VERSIONS, &ca).await?;
    let (status, _, _) = conn.get(&authority, &path).await?;
    anyhow::ensure!(status == 200, "answered {status}");
    Ok(Box::new(conn))
}

async fn open_plain(
    authority: String,
    path: String,
) -> anyhow::Result<http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(&authority).await?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(&path)
        .header(hyper::header::HOST, &authority)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    anyhow::ensure!(status == 200, "answered {status}");
    Ok(sender)
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match read_or_exit("idle_conns", settings) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let mut held = Vec::with_capacity(settings.connections as usize);
    let mut failed = 0u64;
    let mut first_error = None;
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while started < settings.connections || !tasks.is_empty() {
        while started < settings.connections && (tasks.len() as u64) < settings.parallel {
            tasks.spawn(open(
                settings.authority.clone(),
                settings.path.clone(),
                settings.tls.clone(),
            ));
            started += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(sender))) => held.push(sender),
            Some(Ok(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
            None => {}
        }
    }
    if let Some(e) = &first_error {
        eprintln!("idle_conns: {failed} connection(s) failed; the first: {e}");
    }
    println!("open {} failed {failed}", held.len());
    if held.is_empty() {
        return ExitCode::from(2);
    }
    // A bound, not a wait for a condition: the script ends this process as
    // soon as it has read the proxy's memory.
    tokio::time::sleep(settings.hold).await;
    drop(held);
    ExitCode::SUCCESS
}
