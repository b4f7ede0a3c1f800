//! The client-facing listeners: accept connections, speak HTTP/1.1 (with
//! upgrades) and HTTP/2, and hand each request to a [`Handler`] (the
//! [`Proxy`] in production).
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
//! **Idle HTTP/1 connections** ([`serve_http1`]). hyper keeps an 8 KiB read
//! and an 8 KiB write buffer for a connection's whole life and has no
//! setting to drop them between requests, as nginx and HAProxy do. So an
//! HTTP/1 connection is served in busy spells: once it has been quiet for
//! [`RELEASE_AFTER`](watchdog::RELEASE_AFTER) (no request in flight, no
//! byte arriving, everything written flushed), the watchdog's `Release`
//! verdict asks hyper to shut down gracefully, which an idle hyper
//! connection does at once, writing nothing; [`Counted`] turns the
//! stream shutdown hyper then asks for into a no-op; and the server takes
//! the stream, any bytes hyper had read and not parsed (a pipelined
//! request's start, replayed first) and the service back from hyper
//! (`into_parts`). The connection then waits, **parked**, with no buffer,
//! bounded by the idle timeout counted from the last request, and at
//! shutdown by [`LAST_CALL`]. A plain connection waits with no task at all,
//! as a bare socket in the listener's parking lot ([`lot`]), which starts a
//! new task for it when its client sends again. A TLS one waits in its task
//! (its session is there) on a one-byte read for its next request's first
//! byte (which works under TLS, where the socket's readiness says nothing
//! about rustls's buffers). Either way the next request starts a new hyper
//! connection (a new spell, with the header read timeout from its first
//! byte). Were
//! hyper mid-exchange after all (a request body still arriving after its
//! response), the graceful shutdown only ends the connection after that
//! exchange, whose response head is already written, so no
//! `Connection: close` is added and the stream is still handed back. The
//! metrics count connections active and parked and the releases
//! ([`ClientConnections`]).
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
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info, warn};

mod lot;
mod stream;
mod watchdog;

use crate::config::Config;
use crate::proxy::body::BoxError;
use crate::proxy::{Peer, Proxy, ResponseBody, ResponseTimer};
use lot::{Lot, Resume};
use stream::Counted;
pub use stream::{ClientStream, Protocol};
use watchdog::{Activity, OnWake, Open, Tracked, Verdict, watchdog};

/// Smallest HTTP/1 read buffer hyper accepts.
const MIN_BUF: usize = 8192;

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
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
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

/// Client connections open, for the metrics (one set for every listener
/// of a gateway).
#[derive(Debug, Default)]
pub struct ClientConnections {
    open: AtomicUsize,
    /// HTTP/1 connections waiting for their next request with hyper's
    /// state released (see the module doc).
    parked: AtomicUsize,
    releases: AtomicU64,
}

impl ClientConnections {
    /// Connections open, parked ones included.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections parked: idle, holding no hyper state.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Times a quiet HTTP/1 connection released hyper's state.
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::Relaxed)
    }
}

/// One open connection, counted while it lives, and as parked while it is.
struct OpenConnection {
    clients: Arc<ClientConnections>,
    parked: bool,
}

impl OpenConnection {
    fn new(clients: Arc<ClientConnections>) -> Self {
        clients.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            clients,
            parked: false,
        }
    }

    fn park(&mut self) {
        if !self.parked {
            self.parked = true;
            self.clients.parked.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unpark(&mut self) {
        if self.parked {
            self.parked = false;
            self.clients.parked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.unpark();
        self.clients.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The accept loop and its connections.
pub struct Server<H> {
    listener: TcpListener,
    handler: H,
    settings: ServerSettings,
    /// A TLS handshake first (`--tls-listen`), or none.
    tls: Option<TlsAcceptor>,
    clients: Arc<ClientConnections>,
}

impl<H: Handler> Server<H> {
    pub fn new(listener: TcpListener, handler: H, settings: ServerSettings) -> Self {
        Server {
            listener,
            handler,
            settings,
            tls: None,
            clients: Arc::default(),
        }
    }

    /// Count this server's connections in `clients` (shared with the
    /// gateway's other listeners and its metrics).
    pub fn with_client_counts(mut self, clients: Arc<ClientConnections>) -> Self {
        self.clients = clients;
        self
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
        // Idle plain connections wait in the lot; a TLS one's session
        // lives in its task, so it waits there.
        let lot = match &self.tls {
            Some(_) => None,
            None => Lot::start("shoal-idle-conns")
                .inspect_err(|e| warn!(error = %e, "cannot start the parking lot for idle connections; they wait in their tasks"))
                .ok(),
        };
        let listener = Arc::new(Listener {
            handler: self.handler,
            builders: Builders::new(&self.settings),
            settings: self.settings,
            shutdown: shutdown.clone(),
            clients: self.clients,
            lot,
            connections: connections.clone(),
            runtime: tokio::runtime::Handle::current(),
        });
        // The lot's connections hold the listener: close it however this ends.
        let _close_lot = CloseLot(&listener);
        let tls = self.tls;
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
            listener.connection(&tls, stream, remote);
        }
        if let Some(lot) = &listener.lot {
            lot.last_call(std::time::Instant::now() + LAST_CALL);
        }
        // Connections the kernel has queued would be reset when the listener
        // closes: answer one request on each instead.
        let last = Arc::new(Listener {
            handler: listener.handler.clone(),
            builders: Builders::last_request(&listener.settings),
            settings: listener.settings,
            shutdown: CancellationToken::new(),
            clients: listener.clients.clone(),
            lot: None,
            connections: connections.clone(),
            runtime: listener.runtime.clone(),
        });
        for (stream, remote) in take_queued(self.listener) {
            last.connection(&tls, stream, remote);
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

/// What every connection of one listener shares.
struct Listener<H: Handler> {
    handler: H,
    builders: Builders,
    settings: ServerSettings,
    shutdown: CancellationToken,
    clients: Arc<ClientConnections>,
    /// Where quiet plain HTTP/1 connections wait (none on a TLS listener,
    /// or for the connections taken at shutdown, which get one request).
    lot: Option<Lot<Waiting<H>>>,
    /// Every connection's task, and the lot's connections, for the drain.
    connections: TaskTracker,
    /// Where the lot starts a connection's task again.
    runtime: tokio::runtime::Handle,
}

impl<H: Handler> Listener<H> {
    /// Serve `stream` in a task of its own; over TLS, after the handshake.
    /// (Two task types rather than one that branches: a plain connection's
    /// task does not carry room for a TLS session.)
    fn connection(
        self: &Arc<Self>,
        tls: &Option<TlsAcceptor>,
        stream: TcpStream,
        remote: SocketAddr,
    ) {
        let context = Context {
            listener: self.clone(),
            open: OpenConnection::new(self.clients.clone()),
        };
        match tls {
            None => {
                self.connections
                    .spawn(serve_connection(stream, remote, context));
            }
            Some(acceptor) => {
                self.connections
                    .spawn(serve_tls(acceptor.clone(), stream, remote, context));
            }
        }
    }
}

/// Closes the listener's lot when dropped.
struct CloseLot<'a, H: Handler>(&'a Listener<H>);

impl<H: Handler> Drop for CloseLot<'_, H> {
    fn drop(&mut self) {
        if let Some(lot) = &self.0.lot {
            lot.close();
        }
    }
}

/// A connection waiting in the lot, and what serves it again.
struct Waiting<H: Handler> {
    listener: Arc<Listener<H>>,
    remote: SocketAddr,
    open: OpenConnection,
    /// Counts the connection in the drain while it waits.
    tracked: TaskTrackerToken,
}

impl<H: Handler> Resume for Waiting<H> {
    fn resume(self, socket: std::net::TcpStream) {
        let Waiting {
            listener,
            remote,
            mut open,
            tracked,
        } = self;
        open.unpark();
        let runtime = listener.runtime.clone();
        let connections = listener.connections.clone();
        connections.spawn_on(
            async move {
                let stream = match TcpStream::from_std(socket) {
                    Ok(stream) => stream,
                    Err(e) => {
                        debug!(%remote, error = %e, "cannot serve a connection from the lot; closing it");
                        return;
                    }
                };
                let context = Context { listener, open };
                serve(stream, Protocol::Http1, remote, context).await;
            },
            &runtime,
        );
        // Counted as the new task from here.
        drop(tracked);
    }
}

/// What a connection's task has from its server.
struct Context<H: Handler> {
    listener: Arc<Listener<H>>,
    /// Counts the connection open until it closes.
    open: OpenConnection,
}

/// The TLS handshake, within the header read timeout, then the connection.
async fn serve_tls<H: Handler>(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    context: Context<H>,
) {
    // Boxed, as the stream is after it (`ClientStream for Box<TlsStream>`).
    let handshake = Box::pin(acceptor.accept(stream));
    let settings = context.listener.settings;
    let Some(stream) = before_headers("TLS handshake", handshake, remote, settings).await else {
        return;
    };
    serve_connection(Box::new(stream), remote, context).await;
}

/// Run `step` of a new connection (`what`: the TLS handshake, waiting for
/// the first request) within `--header-read-timeout`; `None`, logged, when
/// it failed or took longer, and the connection is to be closed.
///
/// Not an `async fn`: one would hold `step` twice (its argument, and again
/// inside the timeout it awaits), and that room stays in every
/// connection's task for its whole life.
fn before_headers<T>(
    what: &'static str,
    step: impl Future<Output = io::Result<T>>,
    remote: SocketAddr,
    settings: ServerSettings,
) -> impl Future<Output = Option<T>> {
    let timeout = settings.header_read_timeout;
    tokio::time::timeout(timeout, step).map(move |done| match done {
        Ok(Ok(done)) => Some(done),
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "{what} failed; closing the connection");
            None
        }
        Err(_) => {
            debug!(%remote, timeout_ms = timeout.as_millis() as u64, "{what} not completed in time; closing the connection");
            None
        }
    })
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

/// A new connection: find out what it speaks, then serve it.
async fn serve_connection<S: ClientStream, H: Handler>(
    stream: S,
    remote: SocketAddr,
    context: Context<H>,
) {
    // Bounded like the request head that should follow: a client that
    // sends nothing is closed after the header read timeout either way.
    let settings = context.listener.settings;
    let Some(protocol) = before_headers("first request", stream.protocol(), remote, settings).await
    else {
        return;
    };
    serve(stream, protocol, remote, context).await;
}

/// Serve a connection speaking `protocol` until it closes, or (plain
/// HTTP/1) until it is quiet and goes to the lot.
async fn serve<S: ClientStream, H: Handler>(
    stream: S,
    protocol: Protocol,
    remote: SocketAddr,
    context: Context<H>,
) {
    let Context { listener, mut open } = context;
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Counted::new(stream, activity.clone()));
    let info = Arc::new(ConnInfo {
        remote,
        peer: Peer::new(remote.ip(), S::TLS),
        response_timer: ResponseTimer::default(),
    });
    let service = {
        let activity = activity.clone();
        let listener = listener.clone();
        hyper::service::service_fn(move |request| -> BoxedResponse<H::Body> {
            let open = Open::begin(&activity);
            let response = listener.handler.clone().call(request, info.clone());
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
    let conn = Conn {
        remote,
        activity: &activity,
        settings: listener.settings,
        shutdown: &listener.shutdown,
        clients: &listener.clients,
    };
    match protocol {
        Protocol::Http1 => {
            let lot = listener.lot.as_ref().filter(|_| !S::TLS);
            let quiet = serve_http1(
                io,
                service,
                &listener.builders,
                &conn,
                &mut open,
                lot.is_some(),
            )
            .await;
            if let (Some((io, idle_until)), Some(lot)) = (quiet, lot) {
                to_the_lot(
                    io,
                    idle_until,
                    lot,
                    Waiting {
                        listener: listener.clone(),
                        remote,
                        open,
                        tracked: listener.connections.token(),
                    },
                );
            }
        }
        // Boxed: HTTP/1 connections' tasks need no room for HTTP/2's state.
        Protocol::Http2 => {
            activity.h2.store(true, Ordering::Relaxed);
            Box::pin(async {
                let connection = listener.builders.http2.serve_connection(io, service);
                drive(pin!(connection), &conn).await
            })
            .await;
        }
    }
}

/// Hand a quiet connection's socket to `lot`, where it waits with no task
/// until its client sends again (or it is closed there).
fn to_the_lot<S: ClientStream, H: Handler>(
    io: TokioIo<Counted<S>>,
    idle_until: Instant,
    lot: &Lot<Waiting<H>>,
    mut waiting: Waiting<H>,
) {
    let socket = match io.into_inner().hand_off() {
        Ok(socket) => socket,
        Err(e) => {
            debug!(remote = %waiting.remote, error = %e, "cannot hand a quiet connection to the lot; closing it");
            return;
        }
    };
    waiting.open.park();
    lot.park(socket, idle_until.into_std(), waiting);
}

/// What [`drive`] needs of the connection besides hyper's part.
struct Conn<'a> {
    remote: SocketAddr,
    activity: &'a Activity,
    settings: ServerSettings,
    shutdown: &'a CancellationToken,
    clients: &'a ClientConnections,
}

/// HTTP/1 in busy spells: hyper serves while requests come; once the
/// connection has been quiet for [`watchdog::RELEASE_AFTER`], hyper's connection ends
/// without closing the stream and hands it back, and the next request's
/// first byte starts a new one (see "Idle HTTP/1 connections" in the module
/// doc). Each spell's state is boxed, so a waiting connection's task holds
/// none of it. With `to_lot`, a quiet connection is not waited for here:
/// its stream is returned, with the instant its idle timeout ends, for the
/// lot; otherwise `None` when the connection closed.
async fn serve_http1<S, Svc, B>(
    mut io: TokioIo<Counted<S>>,
    mut service: Svc,
    builders: &Builders,
    conn: &Conn<'_>,
    open: &mut OpenConnection,
    to_lot: bool,
) -> Option<(TokioIo<Counted<S>>, Instant)>
where
    S: ClientStream,
    Svc: HttpService<Incoming, ResBody = B> + Unpin,
    Svc::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    loop {
        let spell = Box::pin(async move {
            let mut connection = builders.http1.serve_connection(io, service).with_upgrades();
            match drive(Pin::new(&mut connection), conn).await {
                Ended::Closed => None,
                // None when the connection was upgraded: the tunnel has the stream.
                Ended::Released { quiet_since } => {
                    connection.into_parts().map(|parts| (parts, quiet_since))
                }
            }
        });
        let (parts, quiet_since) = spell.await?;
        conn.activity.releasing.store(false, Ordering::Relaxed);
        conn.clients.releases.fetch_add(1, Ordering::Relaxed);
        let read_buf;
        (io, service, read_buf) = (parts.io, parts.service, parts.read_buf);
        let stream = io.inner_mut();
        if read_buf.is_empty() {
            // Even empty, it holds hyper's whole read buffer: let it go.
            drop(read_buf);
            let idle_until = quiet_since + conn.settings.idle_timeout;
            if to_lot {
                return Some((io, idle_until));
            }
            open.park();
            let next = stream.next_request(idle_until, conn.shutdown).await;
            open.unpark();
            if !next {
                return None;
            }
        } else {
            // A pipelined request's start, read before the release.
            stream.replay(read_buf);
        }
    }
}

/// How [`drive`] ended.
enum Ended {
    /// hyper's connection ended (or was dropped); the stream is closed.
    Closed,
    /// hyper's connection ended on a release: the stream stays open, quiet
    /// since `quiet_since`.
    Released { quiet_since: Instant },
}

/// Serve `connection` to its end, closing it early for the watchdog's
/// verdicts and at shutdown, or releasing it (see the module doc).
async fn drive<C: ServedConnection>(mut connection: Pin<&mut C>, conn: &Conn<'_>) -> Ended {
    let Conn {
        remote,
        activity,
        settings,
        shutdown,
        ..
    } = *conn;
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
    let mut released = None;
    let last_call = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(last_call);
    let mut last_call_armed = false;
    loop {
        tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    debug!(%remote, error = %e, "connection ended with an error");
                    return Ended::Closed;
                }
                return match released {
                    Some(quiet_since) => Ended::Released { quiet_since },
                    None => Ended::Closed,
                };
            }
            () = &mut last_call, if last_call_armed => {
                last_call_armed = false;
                connection.as_mut().graceful_shutdown();
            }
            event = &mut events, if !closing => match event {
                Some(Verdict::SlowHeaders) => {
                    debug!(%remote, timeout_ms = settings.header_read_timeout.as_millis() as u64, "request headers not received in time; closing the connection");
                    return Ended::Closed;
                }
                Some(Verdict::Idle) => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                // hyper, idle, ends at once without shutting the stream down
                // (`Counted::poll_shutdown`); mid-exchange, it would end after it.
                Some(Verdict::Release { quiet_since }) => {
                    activity.releasing.store(true, Ordering::Relaxed);
                    released = Some(quiet_since);
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

#[cfg(test)]
mod tests;
