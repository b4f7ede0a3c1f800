//! `fixed_rate`: an open-loop HTTP/1.1 GET load at a fixed request rate, so
//! that proxies' latencies are compared at the same offered load
//! (`bench/gateway.sh`, "At a fixed rate"). wrk keeps each connection busy
//! back to back, so a faster proxy also gets more requests, and its p99 is
//! taken at a different load than a slower one's.
//!
//! Request `i` is due at `start + i / RATE`. It goes out on the next free
//! keep-alive connection, and its latency runs from when it was *due* to the
//! end of its response body: a request that waited for a free connection,
//! or behind a stalled proxy, counts that wait (no coordinated omission, as
//! in wrk2). A thread of its own releases due requests: tokio's timer has a
//! millisecond's resolution, which would add up to a millisecond to every
//! latency; this thread sleeps with the kernel's timer slack set to 1 µs
//! and releases what is due every `TICK` (200 µs), so a request goes out on
//! average 100 µs after it was due (a wake-up per request costs the load
//! core more than the requests themselves at 20k req/s).
//!
//! Settings (environment): URL (required), RATE (requests per second,
//! required), SECONDS (10), WARMUP_SECS (1; not counted), CONNECTIONS (64).
//! Prints one line to stdout:
//! `rate R achieved A requests N errors E p50_ms … p90_ms … p99_ms … p999_ms … max_ms …`.
//! Exit status 2 when the settings are wrong or nothing answered.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use shoal_bench::settings::{env_number, read_or_exit};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

/// How often the releasing thread wakes, at most.
const TICK: Duration = Duration::from_micros(200);

#[derive(Debug)]
struct Settings {
    /// `host:port` to connect to, and the request's path.
    authority: String,
    path: String,
    rate: u64,
    seconds: u64,
    warmup_secs: u64,
    connections: u64,
}

fn settings() -> Result<Settings, String> {
    let url = std::env::var("URL").map_err(|_| {
        "URL is not set; use e.g. URL=http://127.0.0.1:8080/ (plain HTTP)".to_owned()
    })?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("URL={url:?} is not allowed; use an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!(
            "URL={url:?} names no host; use http://HOST:PORT/PATH"
        ));
    }
    if std::env::var("RATE").is_err() {
        return Err("RATE is not set; use the requests per second to send, e.g. RATE=20000".into());
    }
    Ok(Settings {
        authority: authority.to_owned(),
        path: path.to_owned(),
        rate: env_number("RATE", 0, 1)?,
        seconds: env_number("SECONDS", 10, 1)?,
        warmup_secs: env_number("WARMUP_SECS", 1, 0)?,
        connections: env_number("CONNECTIONS", 64, 1)?,
    })
}

/// What one connection saw: latencies (µs) of counted requests, and errors.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u32>,
    errors: u64,
}

fn main() -> ExitCode {
    let settings = match read_or_exit("fixed_rate", settings) {
        Ok(settings) => Arc::new(settings),
        Err(code) => return code,
    };
    // One thread, as `wrk -t1`: the load core is shared with the instances.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(settings))
}

async fn run(settings: Arc<Settings>) -> ExitCode {
    let (due_tx, due_rx) = mpsc::unbounded_channel::<Instant>();
    let due_rx = Arc::new(Mutex::new(due_rx));
    let start = Instant::now() + Duration::from_millis(50);
    let counted_from = start + Duration::from_secs(settings.warmup_secs);
    let end = counted_from + Duration::from_secs(settings.seconds);

    let workers: Vec<_> = (0..settings.connections)
        .map(|_| tokio::spawn(connection(settings.clone(), due_rx.clone(), counted_from)))
        .collect();
    let rate = settings.rate;
    let pacer = tokio::task::spawn_blocking(move || release(due_tx, rate, start, end));

    if pacer.await.is_err() {
        eprintln!("fixed_rate: the thread releasing requests failed");
        return ExitCode::from(2);
    }
    let mut seen = Seen::default();
    for worker in workers {
        if let Ok(one) = worker.await {
            seen.latencies_us.extend(one.latencies_us);
            seen.errors += one.errors;
        }
    }
    report(&settings, seen)
}

/// Send each request's due time on `due_tx` when it comes, `rate` per
/// second from `start` until `end`.
fn release(due_tx: mpsc::UnboundedSender<Instant>, rate: u64, start: Instant, end: Instant) {
    // Sleep as long as asked, not up to the default 50 µs more.
    if let Err(e) = nix::sys::prctl::set_timerslack(1_000) {
        eprintln!("fixed_rate: cannot set the timer slack ({e}); sleeps will be coarser");
    }
    let interval_ns = 1_000_000_000 / u128::from(rate);
    let mut next = 0u128;
    loop {
        let due = start + Duration::from_nanos((next * interval_ns) as u64);
        if due >= end {
            return;
        }
        let now = Instant::now();
        if due > now {
            // The open-loop schedule: a request is due at a time, by design.
            std::thread::sleep((due - now).max(TICK));
        }
        if due_tx.send(due).is_err() {
            return; // every connection gave up
        }
        next += 1;
    }
}

/// One keep-alive connection taking due requests from the shared queue;
/// it reconnects after an error.
async fn connection(
    settings: Arc<Settings>,
    due_rx: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
    counted_from: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut sender = None;
    loop {
        let Some(due) = due_rx.lock().await.recv().await else {
            return seen;
        };
        if sender.is_none() {
            sender = connect(&settings.authority).await;
        }
        let ok = match sender.as_mut() {
            Some(sender) => get(sender, &settings).await,
            None => false,
        };
        if !ok {
            sender = None;
        }
        if due < counted_from {
            continue;
        }
        if ok {
            let us = Instant::now().saturating_duration_since(due).as_micros();
            seen.latencies_us.push(us.min(u32::MAX as u128) as u32);
        } else {
            seen.errors += 1;
        }
    }
}

async fn connect(authority: &str) -> Option<http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(authority).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, driver) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(driver);
    Some(sender)
}

/// One GET, its body read to the end; whether it got a 2xx.
async fn get(sender: &mut http1::SendRequest<Empty<Bytes>>, settings: &Settings) -> bool {
    let request = hyper::Request::get(settings.path.as_str())
        .header(hyper::header::HOST, settings.authority.as_str())
        .body(Empty::new())
        .expect("a valid request");
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(request).await {
        Ok(response) => {
            let success = response.status().is_success();
            response.into_body().collect().await.is_ok() && success
        }
        Err(_) => false,
    }
}

fn report(settings: &Settings, mut seen: Seen) -> ExitCode {
    let requests = seen.latencies_us.len() as u64;
    if requests == 0 {
        eprintln!(
            "fixed_rate: no request to {} succeeded ({} errors)",
            settings.authority, seen.errors
        );
        return ExitCode::from(2);
    }
    seen.latencies_us.sort_unstable();
    let at = |q: f64| {
        let index = ((requests as f64 * q).ceil() as usize).clamp(1, requests as usize) - 1;
        f64::from(seen.latencies_us[index]) / 1000.0
    };
    let achieved = (requests + seen.errors) as f64 / settings.seconds as f64;
    println!(
        "rate {} achieved {:.0} requests {} errors {} p50_ms {:.3} p90_ms {:.3} p99_ms {:.3} p999_ms {:.3} max_ms {:.3}",
        settings.rate,
        achieved,
        requests,
        seen.errors,
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0),
    );
    ExitCode::SUCCESS
}
