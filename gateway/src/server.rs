//! The client-facing listeners: accept connections, speak HTTP/1.1 (with
//! upgrades) and HTTP/2, and hand each request to a [`Handler`] (the
//! [`Proxy`](crate::proxy::Proxy) in production).
//!
//! The `--listen` and `--tls-listen` listeners are the same [`Server`]; a
//! TLS one ([`Server::with_tls`]) runs a rustls handshake (within
//! `--header-read-timeout`) before the connection code below, which is
//! generic over the stream ([`ClientStream`]: TCP, or TLS over TCP), so
//! timeouts, limits and shutdown are the same for both. Requests from a TLS
//! connection carry `proto=https` in their [`Peer`].
//!
//! The protocol is chosen before hyper sees a byte ([`ClientStream::protocol`]):
//! over TLS by ALPN (`h2`, else HTTP/1.1: RFC 9113 §3.3 has TLS clients
//! negotiate HTTP/2 by ALPN), in plain TCP by peeking for the HTTP/2
//! preface (h2c with prior knowledge) without consuming it. hyper-util's
//! `auto` builder did this by reading the first bytes and handing them back,
//! and that cost every idle HTTP/1 connection memory: hyper's read buffer
//! wants 8 KiB free before each read, so the handed-back prefix (a partial
//! request) made it grow to 16 KiB; and the connection's future, sized for
//! the largest protocol, held HTTP/2's state on every HTTP/1 connection.
//! Here an HTTP/1 connection's task holds HTTP/1 state only (HTTP/2's is
//! boxed), and the request handler's future is boxed per request, so an
//! idle connection does not keep room for one (`bench/gateway-scale.sh`,
//! idle connections).
//!
//! Per connection: TCP_NODELAY; `--max-header-bytes` (HTTP/1 read buffer,
//! 431 past it; HTTP/2 header list size); and a watchdog, polled alongside
//! the connection, that reads counters the connection keeps (bytes read,
//! requests started and still open) and enforces two timeouts:
//! - header read (slowloris): a request head must arrive complete within
//!   `--header-read-timeout` of its first byte, and a new HTTP/1 connection
//!   must bring its first request within that time; otherwise the connection
//!   is dropped;
//! - idle: a keep-alive connection with no request in flight for
//!   `--idle-timeout` is closed gracefully (HTTP/2 gets a GOAWAY).
//!
//! (hyper's own `header_read_timeout` is not used: it also runs while a
//! keep-alive connection waits for its next request, which would cap the
//! idle timeout at the header timeout and race clients' connection pools.)
//!
//! Shutdown ([`Server::run`]): when the token is cancelled the connections
//! the kernel has already queued on the listener are taken (closing the
//! listener would reset them) and each gets one request answered; the
//! listener is closed; HTTP/2 connections get a GOAWAY; an HTTP/1
//! connection answers its next request with `Connection: close` (closing
//! it while idle would race a request the client is sending: the client
//! would see the connection closed under it), or is closed after
//! [`LAST_CALL`] without one; and the server waits for them up to the drain
//! timeout. Upgraded connections (tunnels) are not
//! waited for. With `--reuse-port`, new connections go to the gateway that
//! replaces this one from then on.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::proxy::body::BoxError;
use crate::proxy::{Peer, Proxy, ResponseBody, ResponseTimer};

/// Smallest HTTP/1 read buffer hyper accepts.
const MIN_BUF: usize = 8192;
/// The HTTP/2 connection preface (RFC 9113 §3.4) a prior-knowledge h2c
/// client opens with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// While the bytes peeked so far are the start of the preface but not all
/// of it, how long to wait before peeking again.
const PREFACE_REPEEK: Duration = Duration::from_millis(5);
/// Shortest watchdog tick.
const MIN_TICK: Duration = Duration::from_millis(10);
/// At shutdown, how long an idle HTTP/1 connection stays open for one more
/// request (answered with `Connection: close`) before it is closed.
const LAST_CALL: Duration = Duration::from_secs(1);

/// Connection settings from the flags.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

impl ServerSettings {
    pub fn from_config(config: &Config) -> Self {
        ServerSettings {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_header_bytes: config.max_header_bytes,
        }
    }
}

/// What the server knows about a client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The client's address and the forwarded-header values that name it,
    /// made once per connection.
    pub peer: Peer,
    /// The response timer the connection's requests reuse.
    pub response_timer: ResponseTimer,
}

/// Answers requests. Cloned for every request (make cloning cheap).
pub trait Handler: Clone + Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static;

    fn call(
        self,
        request: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

impl Handler for Proxy {
    type Body = ResponseBody;

    async fn call(self, request: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<ResponseBody> {
        self.handle(request, &conn.peer, &conn.response_timer).await
    }
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Every connection finished within the drain timeout.
    pub complete: bool,
    /// Connections still open when the drain gave up.
    pub abandoned: usize,
}

/// The accept loop and its connections.
pub struct Server<H> {
    listener: TcpListener,
    handler: H,
    settings: ServerSettings,
    builders: Arc<Builders>,
    /// A TLS handshake first (`--tls-listen`), or none.
    tls: Option<TlsAcceptor>,
}

impl<H: Handler> Server<H> {
    pub fn new(listener: TcpListener, handler: H, settings: ServerSettings) -> Self {
        let builders = Arc::new(Builders::new(&settings));
        Server {
            listener,
            handler,
            settings,
            builders,
            tls: None,
        }
    }

    /// Make this a TLS listener: each connection starts with a handshake
    /// configured by `config`.
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(TlsAcceptor::from(config));
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` is cancelled, then drain for up to `drain_timeout`.
    pub async fn run(self, shutdown: CancellationToken, drain_timeout: Duration) -> Drained {
        let connections = TaskTracker::new();
        let spawn = Spawn {
            handler: self.handler,
            settings: self.settings,
            tls: self.tls,
        };
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                debug!(%remote, error = %e, "cannot set TCP_NODELAY");
            }
            spawn.connection(&connections, stream, remote, &self.builders, &shutdown);
        }
        // Connections the kernel has queued would be reset when the listener
        // closes: answer one request on each instead.
        let last = Arc::new(Builders::last_request(&self.settings));
        let not_stopping = CancellationToken::new();
        for (stream, remote) in take_queued(self.listener) {
            spawn.connection(&connections, stream, remote, &last, &not_stopping);
        }
        connections.close();
        let open = connections.len();
        if open > 0 {
            info!(
                connections = open,
                drain_timeout_ms = drain_timeout.as_millis() as u64,
                "stopped accepting; waiting for open connections to finish"
            );
        }
        match tokio::time::timeout(drain_timeout, connections.wait()).await {
            Ok(()) => Drained {
                complete: true,
                abandoned: 0,
            },
            Err(_) => Drained {
                complete: false,
                abandoned: connections.len(),
            },
        }
    }
}

/// Starts a task per accepted connection.
struct Spawn<H> {
    handler: H,
    settings: ServerSettings,
    tls: Option<TlsAcceptor>,
}

impl<H: Handler> Spawn<H> {
    /// Serve `stream` in a task of `connections`; over TLS, after the
    /// handshake. (Two task types rather than one that branches: a plain
    /// connection's task does not carry room for a TLS session.)
    fn connection(
        &self,
        connections: &TaskTracker,
        stream: TcpStream,
        remote: SocketAddr,
        builders: &Arc<Builders>,
        shutdown: &CancellationToken,
    ) {
        let handler = self.handler.clone();
        let builders = builders.clone();
        let shutdown = shutdown.clone();
        match &self.tls {
            None => {
                connections.spawn(serve_connection(
                    stream,
                    remote,
                    handler,
                    builders,
                    self.settings,
                    shutdown,
                ));
            }
            Some(acceptor) => {
                connections.spawn(serve_tls(
                    acceptor.clone(),
                    stream,
                    remote,
                    handler,
                    builders,
                    self.settings,
                    shutdown,
                ));
            }
        }
    }
}

/// The TLS handshake, within the header read timeout, then the connection.
async fn serve_tls<H: Handler>(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    handler: H,
    builders: Arc<Builders>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let handshake = acceptor.accept(stream);
    let Some(stream) = before_headers("TLS handshake", handshake, remote, settings).await else {
        return;
    };
    serve_connection(stream, remote, handler, builders, settings, shutdown).await;
}

/// Run `step` of a new connection (`what`: the TLS handshake, waiting for
/// the first request) within `--header-read-timeout`; `None`, logged, when
/// it failed or took longer, and the connection is to be closed.
async fn before_headers<T>(
    what: &str,
    step: impl Future<Output = io::Result<T>>,
    remote: SocketAddr,
    settings: ServerSettings,
) -> Option<T> {
    match tokio::time::timeout(settings.header_read_timeout, step).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "{what} failed; closing the connection");
            None
        }
        Err(_) => {
            debug!(%remote, timeout_ms = settings.header_read_timeout.as_millis() as u64, "{what} not completed in time; closing the connection");
            None
        }
    }
}

/// What a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// A client connection's byte stream: TCP, or TLS over TCP.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether it is TLS (the request's scheme is https).
    const TLS: bool;

    /// The TCP socket underneath (for the lingering close).
    fn tcp(&self) -> &TcpStream;

    /// The protocol the client speaks, found without consuming a byte;
    /// `Err` when the connection failed before it could be told.
    fn protocol(&self) -> impl Future<Output = io::Result<Protocol>> + Send;
}

impl ClientStream for TcpStream {
    const TLS: bool = false;

    fn tcp(&self) -> &TcpStream {
        self
    }

    /// h2c with prior knowledge opens with the HTTP/2 preface; anything
    /// else is HTTP/1 (an HTTP/1.1 `Upgrade: h2c` is not supported, as
    /// before). Peeks until the bytes decide: the first byte that differs
    /// from the preface, or all 24 of it. A connection closed before any
    /// byte is HTTP/1 (hyper reports the empty connection); one that sends
    /// part of the preface and no more is closed after the header read
    /// timeout, as one that sends part of a request head is.
    async fn protocol(&self) -> io::Result<Protocol> {
        let mut peeked = [0u8; H2_PREFACE.len()];
        loop {
            let n = self.peek(&mut peeked).await?;
            if n == 0 || peeked[..n] != H2_PREFACE[..n] {
                return Ok(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Ok(Protocol::Http2);
            }
            // The start of the preface and no more yet: peeking again at
            // once would return the same bytes.
            tokio::time::sleep(PREFACE_REPEEK).await;
        }
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    const TLS: bool = true;

    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    /// By ALPN: `h2`, else HTTP/1.1 (also when the client offered none).
    async fn protocol(&self) -> io::Result<Protocol> {
        Ok(match self.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        })
    }
}

/// Accept what the kernel has queued on `listener` without waiting, then
/// close it. (Straight `accept` calls: tokio's readiness may not know of
/// connections queued since the last event.)
fn take_queued(listener: TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            debug!(error = %e, "cannot take the listener's queued connections");
            return Vec::new();
        }
    };
    let mut queued = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, remote)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream));
                match stream {
                    Ok(stream) => queued.push((stream, remote)),
                    Err(e) => debug!(%remote, error = %e, "cannot serve a queued connection"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock: nothing more queued; anything else: stop here too.
            Err(_) => break,
        }
    }
    if !queued.is_empty() {
        debug!(
            connections = queued.len(),
            "answering the connections queued when the listener closed"
        );
    }
    queued
}

/// hyper's connection settings, one builder per protocol.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(settings: &ServerSettings) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(settings.max_header_bytes.max(MIN_BUF))
            // One buffer per write: the head and a small body go out together
            // without building an iovec list for every response.
            .writev(false);
        // Not `pipeline_flush(true)`: with it, hyper 1.x closes without sending
        // its automatic 431 for oversized headers.
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
        Builders { http1, http2 }
    }

    /// For connections taken at shutdown: one HTTP/1 request each.
    fn last_request(settings: &ServerSettings) -> Self {
        let mut builders = Builders::new(settings);
        builders.http1.keep_alive(false);
        builders
    }
}

/// A request's response, boxed: hyper keeps room for the service's future
/// in every connection for its whole life, so a future stored inline would
/// cost each idle connection its size.
type BoxedResponse<B> =
    Pin<Box<dyn Future<Output = Result<Response<Tracked<B>>, Infallible>> + Send>>;

/// A hyper connection being served, whichever the protocol.
trait ServedConnection: Future<Output = hyper::Result<()>> {
    /// Finish the requests in progress, take no more, then end.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> ServedConnection for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> ServedConnection for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

async fn serve_connection<S: ClientStream, H: Handler>(
    stream: S,
    remote: SocketAddr,
    handler: H,
    builders: Arc<Builders>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    // Bounded like the request head that should follow: a client that
    // sends nothing is closed after the header read timeout either way.
    let Some(protocol) = before_headers("first request", stream.protocol(), remote, settings).await
    else {
        return;
    };
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Counted {
        inner: stream,
        activity: activity.clone(),
    });
    let info = Arc::new(ConnInfo {
        remote,
        peer: Peer::new(remote.ip(), S::TLS),
        response_timer: ResponseTimer::default(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request| -> BoxedResponse<H::Body> {
            let open = Open::begin(&activity);
            let response = handler.clone().call(request, info.clone());
            let activity = activity.clone();
            Box::pin(async move {
                let mut response = response.await;
                if activity.last_call.load(Ordering::Relaxed)
                    && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok(response.map(|body| Tracked { body, _open: open }))
            })
        })
    };
    match protocol {
        Protocol::Http1 => {
            let connection = builders.http1.serve_connection(io, service).with_upgrades();
            drive(connection, remote, &activity, settings, &shutdown).await;
        }
        // Boxed: HTTP/1 connections' tasks need no room for HTTP/2's state.
        Protocol::Http2 => {
            activity.h2.store(true, Ordering::Relaxed);
            let connection = builders.http2.serve_connection(io, service);
            Box::pin(drive(connection, remote, &activity, settings, &shutdown)).await;
        }
    }
}

/// Serve `connection` to its end, closing it early for the watchdog's
/// verdicts and at shutdown (see the module doc).
async fn drive<C: ServedConnection>(
    connection: C,
    remote: SocketAddr,
    activity: &Activity,
    settings: ServerSettings,
    shutdown: &CancellationToken,
) {
    tokio::pin!(connection);
    // Shutdown and the watchdog, as one future polled only when one of them
    // woke it: the connection's task is woken several times per request,
    // and polling both each time cost more than the rest of this loop.
    let events = OnWake::new(async {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            verdict = watchdog(activity, settings) => Some(verdict),
        }
    });
    tokio::pin!(events);
    let mut closing = false;
    let last_call = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(last_call);
    let mut last_call_armed = false;
    loop {
        tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut last_call, if last_call_armed => {
                last_call_armed = false;
                connection.as_mut().graceful_shutdown();
            }
            event = &mut events, if !closing => match event {
                Some(Verdict::SlowHeaders) => {
                    debug!(%remote, timeout_ms = settings.header_read_timeout.as_millis() as u64, "request headers not received in time; closing the connection");
                    return;
                }
                Some(Verdict::Idle) => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                // The server is stopping.
                None => {
                    closing = true;
                    if activity.h2.load(Ordering::Relaxed) {
                        connection.as_mut().graceful_shutdown();
                    } else {
                        // Closing an idle HTTP/1 connection now would race
                        // the client's next request: answer it with
                        // `Connection: close` instead, and close only after
                        // LAST_CALL quiet.
                        activity.last_call.store(true, Ordering::Relaxed);
                        last_call.as_mut().reset(Instant::now() + LAST_CALL);
                        last_call_armed = true;
                    }
                }
            },
        }
    }
}

/// A future that is polled only after its own waker fired (and once at the
/// start); polling it otherwise costs an atomic swap and a waker check.
struct OnWake<F> {
    future: Pin<Box<F>>,
    flag: Arc<WakeFlag>,
    waker: std::task::Waker,
}

#[derive(Debug)]
struct WakeFlag {
    woken: AtomicBool,
    task: futures::task::AtomicWaker,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> OnWake<F> {
    fn new(future: F) -> Self {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: futures::task::AtomicWaker::new(),
        });
        OnWake {
            future: Box::pin(future),
            waker: std::task::Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the flag is read, so a wake in between is not lost.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut inner = Context::from_waker(&this.waker);
        this.future.as_mut().poll(&mut inner)
    }
}

/// Counters one connection keeps for its watchdog.
#[derive(Debug, Default)]
struct Activity {
    bytes_read: AtomicU64,
    /// Requests handed to the handler.
    started: AtomicU64,
    /// Requests whose response body has not been sent yet.
    open: AtomicU64,
    /// The connection speaks HTTP/2.
    h2: AtomicBool,
    /// The server is stopping: responses say `Connection: close`.
    last_call: AtomicBool,
}

/// A request in progress on its connection, until its response body is done.
struct Open(Arc<Activity>);

impl Open {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Verdict {
    SlowHeaders,
    Idle,
}

/// Resolves when the connection should go (see the module doc).
async fn watchdog(activity: &Activity, settings: ServerSettings) -> Verdict {
    let header_timeout = settings.header_read_timeout;
    let idle = settings.idle_timeout;
    let tick = (header_timeout.min(idle) / 4).max(MIN_TICK);
    let mut seen_bytes = 0;
    let mut seen_started = 0;
    // Since when a request head has been arriving; a new connection owes its first request.
    let mut head_since = Some(Instant::now());
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let bytes = activity.bytes_read.load(Ordering::Relaxed);
        let started = activity.started.load(Ordering::Relaxed);
        let open = activity.open.load(Ordering::Relaxed);
        if started != seen_started || open > 0 {
            seen_started = started;
            seen_bytes = bytes;
            head_since = None;
            quiet_since = now;
            continue;
        }
        if activity.h2.load(Ordering::Relaxed) {
            // HTTP/2 frames between requests (pings, settings) are not heads.
            head_since = None;
        } else if bytes != seen_bytes && head_since.is_none() {
            head_since = Some(now);
        }
        seen_bytes = bytes;
        if head_since.is_some_and(|since| now.duration_since(since) >= header_timeout) {
            return Verdict::SlowHeaders;
        }
        if now.duration_since(quiet_since) >= idle {
            return Verdict::Idle;
        }
    }
}

/// The client's TCP stream, counting the bytes read for the watchdog.
struct Counted<S: ClientStream> {
    inner: S,
    activity: Arc<Activity>,
}

/// Longest lingering close, and most bytes it discards.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

impl<S: ClientStream> Drop for Counted<S> {
    /// Lingering close (as nginx does): a connection closed while the client
    /// is still sending (a 431 for huge headers, a 413 before the body was
    /// read) would make the kernel answer with a reset, and the client would
    /// lose the response it has not read yet. So when input is pending,
    /// close only our side and discard the client's bytes for a moment.
    fn drop(&mut self) {
        let mut probe = [0u8; 1];
        if !matches!(self.inner.tcp().try_read(&mut probe), Ok(n) if n > 0) {
            return;
        }
        match self.inner_std() {
            Ok(stream) => {
                tokio::spawn(linger(stream));
            }
            Err(e) => debug!(error = %e, "lingering close: cannot duplicate the socket"),
        }
    }
}

impl<S: ClientStream> Counted<S> {
    /// A duplicate of the socket, so the lingering task can own it while
    /// this one is dropped.
    fn inner_std(&self) -> io::Result<TcpStream> {
        use std::os::fd::AsFd;
        let fd = self.inner.tcp().as_fd().try_clone_to_owned()?;
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true)?;
        TcpStream::from_std(std)
    }
}

async fn linger(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt as _;
    if let Err(e) = tokio::io::AsyncWriteExt::shutdown(&mut stream).await {
        debug!(error = %e, "lingering close: cannot shut down the write side");
        return;
    }
    let discard = async {
        let mut buf = [0u8; 8192];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    // Either way the socket closes here; the client has had its chance to read.
    let _ = tokio::time::timeout(LINGER_TIME, discard).await;
}

impl<S: ClientStream> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity
                .bytes_read
                .fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: ClientStream> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request open on the connection until sent.
struct Tracked<B> {
    body: B,
    _open: Open,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A connected pair on loopback: the client's end and the server's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn an_http1_request_is_told_from_its_first_bytes_and_nothing_is_consumed() {
        for request in [&b"GET / HTTP/1.1\r\n"[..], b"PUT / HTTP/1.1\r\n", b"POST"] {
            let (mut client, server) = pair().await;
            client.write_all(request).await.unwrap();
            assert_eq!(server.protocol().await.unwrap(), Protocol::Http1);
            let mut buf = vec![0u8; request.len()];
            server.try_read(&mut buf).unwrap();
            assert_eq!(buf, request, "the bytes are left for hyper");
        }
    }

    // Paused time: "not decided yet" is a rule about waiting.
    #[tokio::test(start_paused = true)]
    async fn the_http2_preface_is_told_also_when_it_arrives_in_pieces() {
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..3]).await.unwrap();
        let told = tokio::spawn(async move { server.protocol().await.unwrap() });
        // Not decided on the first piece: the rest is still owed.
        tokio::time::sleep(PREFACE_REPEEK * 4).await;
        assert!(!told.is_finished(), "decided on three bytes of the preface");
        client.write_all(&H2_PREFACE[3..]).await.unwrap();
        assert_eq!(told.await.unwrap(), Protocol::Http2);
    }

    #[tokio::test]
    async fn a_connection_closed_before_a_byte_is_left_to_http1() {
        let (client, server) = pair().await;
        drop(client);
        assert_eq!(server.protocol().await.unwrap(), Protocol::Http1);
    }
}
