//! Keep-alive HTTP/1.1 connections to instances, on the request path in
//! place of hyper-util's legacy client.
//!
//! Each instance address has its own small pool ([`ConnPool`], held by the
//! [`Backend`]s with that address): a stack of idle connections behind a
//! mutex that only requests to that address touch, held for a push or a
//! pop. Keyed by address, not by instance id, so idle connections are bounded
//! by the concurrency per address, whatever the number of registry entries
//! naming it. No pool key is built
//! or hashed, nothing is boxed per request, and no task is spawned.
//!
//! **A connection is driven by the request that holds it.** hyper's
//! connection future (the [`http1::Connection`] that reads and writes the
//! socket) is polled by the client connection's own task: while the request
//! waits for its response head ([`Upstream::send`]) and while the response
//! body is read ([`PooledBody`]). An instance's response is therefore read
//! and its bytes written to the client in the same wake-up, as nginx and
//! HAProxy do; with a driver task per connection, each request waited in the
//! runtime's queue twice more (request handed to the driver, response handed
//! back). The runtime now polls 2.1 tasks per request instead of 4.5, at the
//! same instructions per request; the saturated p99 did not move measurably
//! (bench/README.md, "Gateway cost per request"). Whatever hyper
//! hands across inside one connection (the response head, body chunks) is
//! read with a no-op waker right after the driver was polled: only the
//! driver can make it progress, and the driver registers this task's waker
//! for what it waits on (the socket, the client's request body).
//!
//! A connection goes back to its pool when the response body has been read
//! to the end, so it is never handed to two requests at once; one whose body
//! was cut off or left unread is closed instead. Before it goes back it is
//! polled once with a no-op waker, so that it parks without holding the last
//! request's waker (the next request would otherwise wake that unrelated
//! task). An idle connection is not polled: one the instance closed is
//! found closed by the next request that takes it, which then sends on
//! another connection, as the legacy client did (`retry_canceled_requests`)
//! for the keep-alive race: the request was never written, and the caller
//! never sees that failure. Idle connections older than
//! `--upstream-idle-timeout` are dropped when the pool is next used, from
//! either end of the stack, and by [`spawn_idle_sweeper`] once a second
//! whether it is used or not: a burst's connections do not stay open (and
//! resident) in a quiet gateway, and one the instance closed does not
//! linger half-closed.
//!
//! The stack is last in, first out, so a steady load reuses the same few
//! connections at its top and the ones below them age: what a timeout
//! closes is what the recent peak of concurrent requests did not need,
//! as HAProxy's `pool-purge-delay` does, with no count kept per request.
//! (A cap on the idle count, as nginx's `keepalive N`, closed and reopened
//! connections under a load whose responses come back in waves: +28 %
//! instructions per request at 256 connections; `bench/README.md`.)
//!
//! An upgrade (`Connection: upgrade`, e.g. WebSocket) gets a connection of
//! its own, driven by a spawned task that can hand the socket to the
//! tunnel, and never returned to the pool.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use registry::model::UpstreamProtocol;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::body::AttemptBody;
use crate::backend::Backend;
use crate::table::TableHandle;

/// One connection's request handle.
type Sender = http1::SendRequest<AttemptBody<Incoming>>;

/// What reads and writes one connection's socket: hyper's HTTP/1 client
/// dispatcher. Boxed once per connection, so that taking it from the pool
/// and handing it along a request moves a pointer.
type Driver = Pin<Box<http1::Connection<TokioIo<TcpStream>, AttemptBody<Incoming>>>>;

/// A keep-alive connection to an instance.
#[derive(Debug)]
struct Conn {
    sender: Sender,
    /// `None` once it ended (closed by either side, or failed). It is
    /// dropped then, not kept: dropping it is what fails a request still
    /// queued on it (with the request handed back, as it was never sent).
    driver: Option<Driver>,
}

/// Let the connection read and write what it can, with `cx`'s waker for
/// what it then waits on; drop it once it has ended. Whether it still lives.
fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) -> bool {
    if let Some(running) = driver
        && running.as_mut().poll(cx).is_ready()
    {
        *driver = None;
    }
    driver.is_some()
}

/// Poll `f`, which only `driver` can make progress, after the driver. While
/// the connection lives, `f` is polled with a no-op waker: the driver woke,
/// or will wake, this task. Once it has ended, with `cx`.
fn drive_then<T>(
    driver: &mut Option<Driver>,
    cx: &mut Context<'_>,
    f: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    if drive(driver, cx) {
        f(&mut Context::from_waker(Waker::noop()))
    } else {
        f(cx)
    }
}

/// Idle connections of one instance, most recently used last, and its
/// multiplexed h2c connection (for `h2c` routes, see [`h2c`](super::h2c)).
#[derive(Debug, Default)]
pub struct ConnPool {
    idle: Mutex<Vec<Idle>>,
    pub h2c: super::h2c::Slot,
}

/// A parked connection. Its address is the pool's: the table keeps one
/// pool per instance address, and an instance re-registered at another
/// address gets that address's pool.
#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

impl ConnPool {
    /// The most recently used idle connection that is not
    /// idle past `idle_timeout`; expired ones found on the way are dropped.
    fn take(&self, now: Instant, idle_timeout: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("connection pool lock poisoned");
        while let Some(entry) = idle.pop() {
            if now.saturating_duration_since(entry.since) <= idle_timeout {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Park `conn`; the oldest idle connections past `idle_timeout` leave
    /// (those at the bottom of the stack that a quieter load never reaches).
    fn put(&self, conn: Conn, now: Instant, idle_timeout: Duration) {
        let mut idle = self.idle.lock().expect("connection pool lock poisoned");
        let expired = expired(&idle, now, idle_timeout);
        if expired > 0 {
            idle.drain(..expired);
        }
        idle.push(Idle { conn, since: now });
    }

    /// Close the idle connections idle past `idle_timeout` (the bottom of
    /// the stack); how many. The sockets close after the lock is released.
    pub fn purge(&self, now: Instant, idle_timeout: Duration) -> usize {
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock().expect("connection pool lock poisoned");
            let expired = expired(&idle, now, idle_timeout);
            idle.drain(..expired).collect()
        };
        expired.len()
    }

    /// Idle connections held (for tests).
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .expect("connection pool lock poisoned")
            .len()
    }
}

/// How many connections at the bottom of `idle` (the oldest first) have
/// been idle past `idle_timeout` at `now`.
fn expired(idle: &[Idle], now: Instant, idle_timeout: Duration) -> usize {
    idle.iter()
        .take_while(|entry| now.saturating_duration_since(entry.since) > idle_timeout)
        .count()
}

/// Every second, close the idle connections to instances that have been
/// idle past `idle_timeout`, in every pool of the current table
/// ([`RoutingTable::conn_pools`](crate::table::RoutingTable::conn_pools):
/// one per address, however many backends share it), until `stop`.
pub fn spawn_idle_sweeper(
    table: TableHandle,
    idle_timeout: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let period = SWEEP_PERIOD.min(idle_timeout.max(Duration::from_millis(10)));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = super::now();
            let table = table.load();
            let closed: usize = table
                .conn_pools
                .iter()
                .map(|conns| conns.purge(now, idle_timeout))
                .sum();
            if closed > 0 {
                debug!(closed, "idle connections to instances closed");
            }
        }
    })
}

/// How often [`spawn_idle_sweeper`] looks (at most).
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// Why a request got no response from an instance.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    // The source is printed by `forward::chain`, which logs the whole chain.
    #[error("tcp connect error")]
    Connect(#[source] io::Error),
    /// hyper's error on the connection (canceled before sending, reset,
    /// closed before the response, or the request body's own error).
    #[error("connection to the instance")]
    Http(#[source] hyper::Error),
}

/// Connections to instances: how to open them, and how long an idle one lives.
#[derive(Debug, Clone)]
pub struct Upstream {
    connect_timeout: Duration,
    idle_timeout: Duration,
    builder: http1::Builder,
    h2c: super::h2c::H2c,
}

/// A connection in use, driven by the response body and returned to its
/// instance's pool once that body has been read to the end.
#[derive(Debug)]
struct Checkin {
    conn: Conn,
    pool: Arc<ConnPool>,
    idle_timeout: Duration,
}

impl Checkin {
    /// The response was read to the end: park the connection for another
    /// request, unless it has ended meanwhile.
    fn finish(mut self, now: Instant) {
        if drive(
            &mut self.conn.driver,
            &mut Context::from_waker(Waker::noop()),
        ) {
            let pool = &self.pool;
            pool.put(self.conn, now, self.idle_timeout);
        }
    }
}

/// An instance's response body. Reading it drives its connection, which
/// goes back to the pool when the body has been read to the end.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    /// `None` for an upgrade's connection (its own task drives it), or once
    /// the connection ended or failed.
    conn: Option<Checkin>,
}

impl PooledBody {
    /// A body whose connection is driven elsewhere (an upgrade's, an h2c
    /// connection's task) and never checked in.
    pub(super) fn unpooled(body: Incoming) -> Self {
        PooledBody { body, conn: None }
    }

    fn check_in(&mut self) {
        if let Some(checkin) = self.conn.take() {
            checkin.finish(super::now());
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.conn {
            // What the connection already read (often the whole body, with
            // the head) is taken without driving it again.
            Some(checkin) => {
                match Pin::new(&mut this.body).poll_frame(&mut Context::from_waker(Waker::noop())) {
                    Poll::Pending => {
                        let body = &mut this.body;
                        let polled = drive_then(&mut checkin.conn.driver, cx, |cx| {
                            Pin::new(body).poll_frame(cx)
                        });
                        if checkin.conn.driver.is_none() {
                            this.conn = None;
                        }
                        polled
                    }
                    ready => ready,
                }
            }
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.check_in(),
            // Cut off: dropping the connection closes it.
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    /// A body hyper never polled because it knew it was empty (HEAD, 204,
    /// 304, `Content-Length: 0`) still leaves a reusable connection.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.check_in();
        }
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Upstream {
            connect_timeout,
            idle_timeout,
            builder: {
                let mut builder = http1::Builder::new();
                // As on the client-facing listener (server/mod.rs): one buffer per write.
                builder.writev(false);
                builder
            },
            h2c: Default::default(),
        }
    }

    /// Send `request` (origin-form URI) to `backend` on a pooled connection,
    /// or a new one: the response, whose body drives the connection and
    /// checks it in when read to the end. `now` is the request's clock
    /// reading, for idle ages. `upgrade`: the request asks for a protocol
    /// upgrade, and gets a connection of its own. `protocol`: the route's
    /// `upstream_protocol`; `h2c` goes to the instance's [`h2c`](super::h2c)
    /// connection instead.
    pub async fn send(
        &self,
        backend: &Backend,
        mut request: Request<AttemptBody<Incoming>>,
        now: Instant,
        upgrade: bool,
        protocol: UpstreamProtocol,
    ) -> Result<Response<PooledBody>, SendError> {
        if !super::headers::has(request.headers(), &HOST) {
            // A client without Host (HTTP/1.0): name the instance, as HTTP/1.1 requires.
            if let Ok(host) = HeaderValue::from_str(backend.authority.as_str()) {
                request.headers_mut().insert(HOST, host);
            }
        }
        if protocol == UpstreamProtocol::H2c {
            // Boxed: it would make every HTTP/1.1 request's future bigger.
            return Box::pin(self.h2c.send(backend, request, self.connect_timeout)).await;
        }
        if upgrade {
            // Boxed: rare, and it would make every request's future bigger.
            return Box::pin(self.send_upgrade(backend, request)).await;
        }
        let pool = &backend.conns;
        loop {
            let (mut conn, reused) = match pool.take(now, self.idle_timeout) {
                Some(conn) => (conn, true),
                // Boxed: rare, and it would make every request's future bigger.
                None => {
                    let (sender, driver) = Box::pin(self.connect(backend)).await?;
                    let driver = Some(driver);
                    (Conn { sender, driver }, false)
                }
            };
            if reused && !conn.sender.is_ready() {
                // Parked before it asked for the next request: let it.
                let ready = std::future::poll_fn(|cx| {
                    drive_then(&mut conn.driver, cx, |cx| conn.sender.poll_ready(cx))
                })
                .await;
                if ready.is_err() {
                    continue; // closed meanwhile: nothing was sent on it
                }
            }
            let response = conn.sender.try_send_request(request);
            let mut response = std::pin::pin!(response);
            let sent = std::future::poll_fn(|cx| {
                drive_then(&mut conn.driver, cx, |cx| response.as_mut().poll(cx))
            })
            .await;
            match sent {
                Ok(response) => {
                    let checkin = conn.driver.is_some().then(|| Checkin {
                        conn,
                        pool: backend.conns.clone(),
                        idle_timeout: self.idle_timeout,
                    });
                    return Ok(response.map(|body| PooledBody {
                        body,
                        conn: checkin,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: a pooled connection the instance had
                    // closed. Send it again on another one.
                    Some(again) if reused => {
                        debug!(instance = backend.id(), error = %e.error(), "pooled connection closed before the request was sent; sending it on another");
                        request = again;
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// An upgrade request, on a new connection whose driver is spawned: it
    /// hands the socket to the tunnel once the instance switches protocols.
    async fn send_upgrade(
        &self,
        backend: &Backend,
        request: Request<AttemptBody<Incoming>>,
    ) -> Result<Response<PooledBody>, SendError> {
        let (mut sender, driver) = self.connect(backend).await?;
        let driver = Pin::into_inner(driver);
        let id = backend.id().to_owned();
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                debug!(instance = %id, error = %e, "connection to instance ended with an error");
            }
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Http)?;
        Ok(response.map(|body| PooledBody { body, conn: None }))
    }

    /// A new connection to `backend`, not yet polled.
    async fn connect(&self, backend: &Backend) -> Result<(Sender, Driver), SendError> {
        let addr = backend.authority.as_str();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(SendError::Connect(e)),
                Err(_) => {
                    return Err(SendError::Connect(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {:?}", self.connect_timeout),
                    )));
                }
            };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(instance = backend.id(), error = %e, "cannot set TCP_NODELAY");
        }
        let (sender, driver) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        Ok((sender, Box::pin(driver)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::uri::PathAndQuery;
    use http::{HeaderMap, Method};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;
    use crate::proxy::forward::{self, AttemptError};
    use crate::proxy::retry::Failure;
    use crate::testing::ready_backend as backend;

    fn get() -> Request<AttemptBody<Incoming>> {
        forward::request(
            &Method::GET,
            PathAndQuery::from_static("/"),
            HeaderMap::new(),
            AttemptBody::empty(),
        )
    }

    /// How a test instance answers.
    #[derive(Clone)]
    struct Answer {
        body: Vec<u8>,
        /// Close the connection after one answer without saying so (the
        /// keep-alive race: the client cannot know until it writes).
        close_after_one: bool,
        /// Close every connection, idle or not, when notified.
        close_all: Arc<Notify>,
    }

    impl Default for Answer {
        fn default() -> Self {
            Answer {
                body: b"ok".to_vec(),
                close_after_one: false,
                close_all: Arc::new(Notify::new()),
            }
        }
    }

    /// An instance that answers every request with `ok`, keeping the
    /// connection open, or closing it after one answer.
    async fn instance(close_after_one: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        instance_with(Answer {
            close_after_one,
            ..Answer::default()
        })
        .await
    }

    async fn instance_with(answer: Answer) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        answer.body.len()
                    )
                    .into_bytes();
                    head.extend_from_slice(&answer.body);
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = tokio::select! {
                            read = stream.read(&mut buf) => match read {
                                Ok(n) if n > 0 => n,
                                _ => return,
                            },
                            () = answer.close_all.notified() => return,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if stream.write_all(&head).await.is_err() || answer.close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// A GET to `backend`'s instance through `upstream`: its response.
    async fn send_get(upstream: &Upstream, backend: &Backend) -> Response<PooledBody> {
        upstream
            .send(
                backend,
                get(),
                Instant::now(),
                false,
                UpstreamProtocol::Http1,
            )
            .await
            .expect("a response")
    }

    async fn send_and_read(upstream: &Upstream, backend: &Backend) -> String {
        let response = send_get(upstream, backend).await;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, accepted) = instance(false).await;
        let backend = backend(addr);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
        assert_eq!(backend.conns.idle(), 1);
    }

    #[tokio::test]
    async fn a_response_not_read_to_the_end_does_not_return_its_connection() {
        let (addr, accepted) = instance(false).await;
        let backend = backend(addr);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60));
        let response = send_get(&upstream, &backend).await;
        drop(response); // the client left before the body
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_instance_closed_is_replaced_without_an_error() {
        let (addr, accepted) = instance(true).await;
        let backend = backend(addr);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_parked_connection_the_instance_closed_later_is_replaced_without_an_error() {
        // Parked connections are not polled: the next request is the first
        // to see the instance's FIN, and must go on a new connection (before,
        // a request queued on such a connection waited forever).
        let answer = Answer::default();
        let close_all = answer.close_all.clone();
        let (addr, accepted) = instance_with(answer).await;
        let backend = backend(addr);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        assert_eq!(backend.conns.idle(), 1);
        close_all.notify_waiters();
        tokio::time::sleep(Duration::from_millis(50)).await; // the FIN arrives
        let second =
            tokio::time::timeout(Duration::from_secs(5), send_and_read(&upstream, &backend));
        assert_eq!(second.await.expect("no answer within 5 s"), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(backend.conns.idle(), 1, "the new connection is parked");
    }

    #[tokio::test]
    async fn a_body_larger_than_the_socket_buffers_streams_through_and_the_connection_is_reused() {
        // 4 MiB: many reads, each driven by the body as it is polled.
        let body: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (addr, accepted) = instance_with(Answer {
            body: body.clone(),
            ..Answer::default()
        })
        .await;
        let backend = backend(addr);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..2 {
            let response = send_get(&upstream, &backend).await;
            let got = response.into_body().collect().await.unwrap().to_bytes();
            assert!(
                got == body,
                "got {} bytes, not the {} sent",
                got.len(),
                body.len()
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for both"
        );
    }

    #[tokio::test]
    async fn a_purge_closes_the_connections_idle_past_the_timeout_and_keeps_the_rest() {
        let (addr, accepted) = instance(false).await;
        let backend = backend(addr);
        let timeout = Duration::from_secs(4);
        let upstream = Upstream::new(Duration::from_secs(1), timeout);
        // Two connections: the first is parked when its body is read, after
        // the second was.
        let first = send_get(&upstream, &backend).await;
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let between = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.into_body().collect().await.unwrap();
        assert_eq!(
            (backend.conns.idle(), accepted.load(Ordering::SeqCst)),
            (2, 2)
        );

        assert_eq!(
            backend.conns.purge(Instant::now(), timeout),
            0,
            "none is idle 4 s"
        );
        assert_eq!(
            backend
                .conns
                .purge(between + timeout + Duration::from_millis(1), timeout),
            1,
            "the one parked before `between`"
        );
        assert_eq!(backend.conns.idle(), 1);
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the kept one was reused"
        );
        assert_eq!(
            backend.conns.purge(Instant::now() + timeout * 2, timeout),
            1
        );
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "none left: a new one");
    }

    #[tokio::test]
    async fn idle_connections_past_the_idle_timeout_are_not_used() {
        let (addr, accepted) = instance(false).await;
        let backend = backend(addr);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_millis(1));
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(backend.conns.idle(), 1, "the expired one was dropped");
    }

    #[tokio::test]
    async fn a_refused_connection_means_nothing_was_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60));
        let error = upstream
            .send(
                &backend(addr),
                get(),
                Instant::now(),
                false,
                UpstreamProtocol::Http1,
            )
            .await
            .unwrap_err();
        assert!(matches!(error, SendError::Connect(_)), "{error}");
        let cause = forward::chain(&error);
        assert!(cause.starts_with("tcp connect error: "), "{cause}");
        assert!(matches!(
            forward::classify(&error),
            AttemptError::Failed(Failure::NotSent, _)
        ));
    }
}
