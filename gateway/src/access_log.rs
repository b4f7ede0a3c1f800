//! The access log (`--access-log`, off by default): one JSON line per
//! proxied request, to stdout or appended to a file.
//!
//! The request path never touches the disk. Each request's [`Entry`] (boxed,
//! made only when the log is on; with it off the request path does nothing
//! but check an `Option`) travels with the request's stats guard
//! ([`RequestRecord`](crate::proxy::record::RequestRecord)) and is filled in
//! as the request goes (instance, upstream time, retries, hedge, held
//! time, bytes). When the guard records the request, at the end of the
//! response body (or when the client goes away), the line is formatted with
//! serde_json and handed to a bounded channel with `try_send`; a dedicated
//! writer thread writes the lines through a buffer and flushes whenever the
//! channel is empty. When the channel is full (the disk is slower than the
//! traffic) the line is dropped and counted
//! (`shoal_gateway_access_log_dropped_total`).
//!
//! The fields, in order: `time` (the request's arrival, RFC 3339 UTC with
//! milliseconds), `client` (the peer's address; with `--trusted-proxies`,
//! the client address their `X-Forwarded-For` gives), `method`, `host`
//! (`null` for an HTTP/1.0 request without one),
//! `path` (as received, without the query string, which often carries
//! tokens), `route` (`(default)` for the default route), `service`,
//! `instance` (the one that answered, or the last one tried; `null` when
//! none was), `status` (`499` when the client went away first, `null` when
//! the instance cut its response body off), `duration_ms` (arrival to the
//! end of the response body), `upstream_ms` (the answering attempt's time
//! to response headers; `null` when no instance answered), `bytes` (body
//! bytes handed to the client connection), `retries` (attempts after the
//! first, hedge not counted), `hedged`, `held_ms` (time held waiting for an
//! instance), `request_id` and `traceparent` (as sent to the instance: with
//! `--trace-headers` the gateway's, else the client's own as they passed
//! through, `null` when it sent none). Times are in milliseconds with
//! microsecond decimals.
//!
//! Requests refused before routing (malformed framing: no or two `Host`
//! headers, a bad target) are not logged: they never reach a route.
//!
//! On SIGHUP a file log is reopened (for logrotate's `create` mode): the
//! writer thread flushes, opens the path again and carries on ([`crate::hangup`]
//! owns the signal).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderValue, Method};
use serde::Serialize;
use tracing::warn;

/// Lines the channel holds before new ones are dropped.
pub const CHANNEL_LINES: usize = 16 * 1024;

/// Where `--access-log` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// Opened for appending (created if missing).
    File(PathBuf),
}

impl Target {
    /// `-` or `stdout` for stdout, anything else a file path.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("give a file path, or `-` (or `stdout`) for stdout".into()),
            "-" | "stdout" => Ok(Target::Stdout),
            path => Ok(Target::File(path.into())),
        }
    }
}

/// The handle the request path writes lines to; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    lines: SyncSender<Message>,
    shared: Arc<Shared>,
}

struct Shared {
    dropped: AtomicU64,
    reopen: AtomicBool,
}

enum Message {
    Line(Vec<u8>),
    /// Reopen the file now (in order: lines sent before go to the old one).
    Reopen,
    /// Flush, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Open `target` and start the writer thread. An error when the file
    /// cannot be opened for appending, naming the flag.
    pub fn start(target: Target) -> io::Result<Self> {
        Self::with_capacity(target, CHANNEL_LINES)
    }

    fn with_capacity(target: Target, lines: usize) -> io::Result<Self> {
        let out = Output::open(&target).map_err(|e| match &target {
            Target::File(path) => io::Error::new(
                e.kind(),
                format!(
                    "cannot open --access-log {} for appending: {e}",
                    path.display()
                ),
            ),
            Target::Stdout => e,
        })?;
        let (sender, receiver) = sync_channel(lines);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
        });
        let writer = Writer {
            target,
            out,
            shared: shared.clone(),
            failing: false,
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(receiver))?;
        Ok(AccessLog {
            lines: sender,
            shared,
        })
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Hand a line to the writer, or drop and count it when the channel is full.
    pub fn send(&self, line: Vec<u8>) {
        match self.lines.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reopen the file (SIGHUP, after logrotate moved it away).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
        // Full: the writer is busy and looks at the flag after this batch.
        if let Err(TrySendError::Disconnected(_)) = self.lines.try_send(Message::Reopen) {
            warn!("the access log writer has stopped; cannot reopen the file");
        }
    }

    /// Wait, up to `timeout`, until the lines sent so far are written and
    /// flushed (on shutdown). Blocks: call it off the runtime's workers.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, flushed) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut message = Message::Flush(done);
        loop {
            match self.lines.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        flushed
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }
}

enum Output {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Output {
    fn open(target: &Target) -> io::Result<Self> {
        Ok(match target {
            Target::Stdout => Output::Stdout(BufWriter::with_capacity(64 * 1024, io::stdout())),
            Target::File(path) => Output::File(BufWriter::with_capacity(
                64 * 1024,
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File(w) => w,
        }
    }
}

/// The writer thread: owns the output.
struct Writer {
    target: Target,
    out: Output,
    shared: Arc<Shared>,
    /// The last write failed (warned once until one succeeds).
    failing: bool,
}

impl Writer {
    /// Until every handle is gone: write what comes, flush when the channel
    /// is empty, reopen when asked.
    fn run(mut self, lines: Receiver<Message>) {
        while let Ok(first) = lines.recv() {
            let mut flushed = Vec::new();
            let mut message = Some(first);
            while let Some(m) = message {
                match m {
                    Message::Line(line) => {
                        let result = self.out.writer().write_all(&line);
                        self.note(result);
                    }
                    Message::Reopen => self.reopen_if_asked(),
                    Message::Flush(done) => flushed.push(done),
                }
                message = lines.try_recv().ok();
            }
            let result = self.out.writer().flush();
            self.note(result);
            for done in flushed {
                // The asker may have given up waiting: nothing to tell then.
                done.send(()).ok();
            }
            self.reopen_if_asked();
        }
        let result = self.out.writer().flush();
        self.note(result);
    }

    fn note(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(error = %e, target = ?self.target, "cannot write the access log; lines are lost until it works again");
                }
            }
        }
    }

    /// Reopen the file if asked since the last time (flushing what the old one has).
    fn reopen_if_asked(&mut self) {
        if !self.shared.reopen.swap(false, Ordering::Relaxed) {
            return;
        }
        let result = self.out.writer().flush();
        self.note(result);
        match Output::open(&self.target) {
            Ok(out) => self.out = out,
            Err(e) => {
                warn!(error = %e, target = ?self.target, "cannot reopen the access log; still writing to the file opened before")
            }
        }
    }
}

/// One request's line in the making; boxed, only when the log is on.
#[derive(Debug)]
pub struct Entry {
    log: AccessLog,
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
    pub route: String,
    pub service: String,
    pub instance: Option<HeaderValue>,
    pub upstream: Option<Duration>,
    pub bytes: u64,
    /// Attempts started, hedge not counted.
    pub attempts: u32,
    pub hedged: bool,
    pub held: Duration,
    pub request_id: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
}

/// The line as written (field order is the order here).
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client: IpAddr,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    route: &'a str,
    service: &'a str,
    instance: Option<&'a str>,
    status: Option<u16>,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    bytes: u64,
    retries: u32,
    hedged: bool,
    held_ms: f64,
    request_id: Option<&'a str>,
    traceparent: Option<&'a str>,
}

impl Entry {
    /// A request arriving now, to be written to `log`.
    pub fn start(
        log: &AccessLog,
        client: IpAddr,
        method: &Method,
        host: Option<&str>,
        path: &str,
        route: &str,
        service: &str,
    ) -> Box<Self> {
        Box::new(Entry {
            log: log.clone(),
            time: SystemTime::now(),
            client,
            method: method.clone(),
            host: host.map(str::to_owned),
            path: path.to_owned(),
            route: route.to_owned(),
            service: service.to_owned(),
            instance: None,
            upstream: None,
            bytes: 0,
            attempts: 0,
            hedged: false,
            held: Duration::ZERO,
            request_id: None,
            traceparent: None,
        })
    }

    /// The line for this request, which ended with `status` after `duration`.
    pub fn line(&self, status: Option<u16>, duration: Duration) -> Vec<u8> {
        let line = Line {
            time: DateTime::<Utc>::from(self.time).to_rfc3339_opts(SecondsFormat::Millis, true),
            client: self.client,
            method: self.method.as_str(),
            host: self.host.as_deref(),
            path: &self.path,
            route: &self.route,
            service: &self.service,
            instance: self.instance.as_ref().and_then(text),
            status,
            duration_ms: millis(duration),
            upstream_ms: self.upstream.map(millis),
            bytes: self.bytes,
            retries: self.attempts.saturating_sub(1),
            hedged: self.hedged,
            held_ms: millis(self.held),
            request_id: self.request_id.as_ref().and_then(text),
            traceparent: self.traceparent.as_ref().and_then(text),
        };
        let mut out = Vec::with_capacity(512);
        serde_json::to_writer(&mut out, &line).expect("a line always serializes");
        out.push(b'\n');
        out
    }

    /// Format the line and hand it to the writer.
    pub fn finish(self: Box<Self>, status: Option<u16>, duration: Duration) {
        let line = self.line(status, duration);
        self.log.send(line);
    }
}

fn text(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok()
}

/// Milliseconds with microsecond decimals.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(log: &AccessLog) -> Box<Entry> {
        Entry::start(
            log,
            "192.0.2.7".parse().unwrap(),
            &Method::POST,
            Some("shop.example"),
            "/cart/\"quoted\"\n",
            "shop",
            "cart",
        )
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("-"), Ok(Target::Stdout));
        assert_eq!(Target::parse("stdout"), Ok(Target::Stdout));
        assert_eq!(
            Target::parse("/var/log/shoal.log"),
            Ok(Target::File("/var/log/shoal.log".into()))
        );
        assert!(Target::parse("").is_err());
    }

    #[test]
    fn a_line_has_every_field_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let log = AccessLog::start(Target::File(dir.join("access.log"))).unwrap();
        let mut e = entry(&log);
        e.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_748_800_123);
        e.instance = Some(HeaderValue::from_static("cart-1"));
        e.upstream = Some(Duration::from_micros(1500));
        e.bytes = 42;
        e.attempts = 2;
        e.hedged = true;
        e.held = Duration::from_millis(250);
        e.request_id = Some(HeaderValue::from_static("req-1"));
        e.traceparent = Some(HeaderValue::from_static(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let line = e.line(Some(201), Duration::from_micros(2250));
        assert_eq!(line.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(text.lines().count(), 1, "one line, whatever the path holds");
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2025-12-03T08:00:00.123Z",
                "client": "192.0.2.7",
                "method": "POST",
                "host": "shop.example",
                "path": "/cart/\"quoted\"\n",
                "route": "shop",
                "service": "cart",
                "instance": "cart-1",
                "status": 201,
                "duration_ms": 2.25,
                "upstream_ms": 1.5,
                "bytes": 42,
                "retries": 1,
                "hedged": true,
                "held_ms": 250.0,
                "request_id": "req-1",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            })
        );
        // Before any attempt, and cut off: nulls, not made-up values.
        let v: serde_json::Value =
            serde_json::from_slice(&entry(&log).line(None, Duration::ZERO)).unwrap();
        for field in [
            "instance",
            "status",
            "upstream_ms",
            "request_id",
            "traceparent",
        ] {
            assert!(v[field].is_null(), "{field}: {v}");
        }
        assert_eq!(v["retries"], 0);
    }

    #[test]
    fn lines_reach_the_file_and_a_reopen_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let path = dir.join("access.log");
        let log = AccessLog::start(Target::File(path.clone())).unwrap();
        entry(&log).finish(Some(200), Duration::ZERO);
        assert!(log.flush(Duration::from_secs(5)));
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.lines().count(), 1);

        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        entry(&log).finish(Some(204), Duration::ZERO);
        assert!(log.flush(Duration::from_secs(5)));
        let second = std::fs::read_to_string(&path).unwrap();
        assert_eq!(second.lines().count(), 1, "the new file has the new line");
        assert!(second.contains("204"));
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), first);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_full_channel_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let log = AccessLog::with_capacity(Target::File(dir.join("a.log")), 1).unwrap();
        // The writer drains as fast as it can; with room for one line,
        // sending many at once overflows.
        for _ in 0..10_000 {
            log.send(b"{}\n".to_vec());
        }
        assert!(log.dropped() > 0);
        assert!(log.flush(Duration::from_secs(5)));
        let written = std::fs::read_to_string(dir.join("a.log"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(written as u64 + log.dropped(), 10_000);
    }

    #[test]
    fn an_unopenable_file_names_the_flag() {
        let err = AccessLog::start(Target::File("/nonexistent/dir/access.log".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cannot open --access-log /nonexistent/dir/access.log"),
            "{err}"
        );
    }
}
