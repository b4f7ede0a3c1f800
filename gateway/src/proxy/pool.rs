//! Keep-alive HTTP/1.1 connections to instances, on the request path in
//! place of hyper-util's legacy client.
//!
//! Each instance's live state ([`BackendState`]) holds its own small pool
//! ([`ConnPool`]): a stack of idle hyper `http1::SendRequest`s behind a mutex
//! that only that instance's requests touch, held for a push or a pop. No
//! pool key is built or hashed, nothing is boxed, and no task is spawned per
//! request: the legacy client does all three, and its one pool lock is shared
//! by every instance. A connection goes back to its pool when the response
//! body has been read to the end ([`Checkin`], carried by the response body),
//! so it is never handed to two requests at once; one whose body was cut off
//! or left unread is closed instead.
//!
//! As the legacy client did (`retry_canceled_requests`): a request that finds
//! its pooled connection closed before anything was written (the keep-alive
//! race with the instance) is sent again on another connection; the caller
//! never sees that failure. Idle connections older than `--idle-timeout` are
//! dropped when the pool is next used; the instance's own keep-alive timeout
//! closes the others, and they leave the pool as soon as they are seen closed.
//! An upgrade (101) keeps the connection for its tunnel and never returns it.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::body::AttemptBody;
use crate::backend::{Backend, BackendState};

/// One connection's request handle.
type Sender = http1::SendRequest<AttemptBody<Incoming>>;

/// Idle connections of one instance, most recently used last.
#[derive(Debug, Default)]
pub struct ConnPool {
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    /// The address it is connected to (an instance may be re-registered
    /// under the same id with another address).
    authority: Authority,
    since: Instant,
}

impl ConnPool {
    /// The most recently used idle connection to `authority` that is still
    /// open and not idle past `idle_timeout`; closed and expired ones found
    /// on the way are dropped.
    fn take(&self, authority: &Authority, now: Instant, idle_timeout: Duration) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("connection pool lock poisoned");
        while let Some(conn) = idle.pop() {
            if conn.sender.is_closed()
                || now.saturating_duration_since(conn.since) > idle_timeout
                // Byte equality: `Authority`'s own is case-insensitive and slower.
                || conn.authority.as_str() != authority.as_str()
            {
                continue;
            }
            return Some(conn.sender);
        }
        None
    }

    fn put(&self, sender: Sender, authority: Authority, now: Instant) {
        self.idle
            .lock()
            .expect("connection pool lock poisoned")
            .push(Idle {
                sender,
                authority,
                since: now,
            });
    }

    /// Idle connections held (for tests).
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .expect("connection pool lock poisoned")
            .len()
    }
}

/// Why a request got no response from an instance.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    // The source is printed by `forward::chain`, which logs the whole chain.
    #[error("tcp connect error")]
    Connect(#[source] io::Error),
    /// hyper's error on the connection (canceled before sending, reset,
    /// closed before the response, or the request body's own error).
    #[error("http/1.1 connection to the instance")]
    Http(#[source] hyper::Error),
}

/// Connections to instances: how to open them, and how long an idle one lives.
#[derive(Debug, Clone)]
pub struct Upstream {
    connect_timeout: Duration,
    idle_timeout: Duration,
    builder: http1::Builder,
}

/// A connection in use, returned to its instance's pool with [`Checkin::finish`]
/// once the response body has been read to the end.
#[derive(Debug)]
pub struct Checkin {
    sender: Sender,
    authority: Authority,
    state: Arc<BackendState>,
}

impl Checkin {
    /// The response was read to the end: the connection can serve another.
    pub fn finish(self, now: Instant) {
        self.state.conns.put(self.sender, self.authority, now);
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Upstream {
            connect_timeout,
            idle_timeout,
            builder: {
                let mut builder = http1::Builder::new();
                // As on the client-facing listener (server.rs): one buffer per write.
                builder.writev(false);
                builder
            },
        }
    }

    /// Send `request` (origin-form URI) to `backend` on a pooled connection,
    /// or a new one; the response head, and the connection to check in when
    /// its body is done. `now` is the request's clock reading, for idle ages.
    pub async fn send(
        &self,
        backend: &Backend,
        mut request: Request<AttemptBody<Incoming>>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Checkin), SendError> {
        if !super::headers::has(request.headers(), &HOST) {
            // A client without Host (HTTP/1.0): name the instance, as HTTP/1.1 requires.
            if let Ok(host) = HeaderValue::from_str(backend.authority.as_str()) {
                request.headers_mut().insert(HOST, host);
            }
        }
        let pool = &backend.state.conns;
        loop {
            let (mut sender, reused) = match pool.take(&backend.authority, now, self.idle_timeout) {
                Some(sender) => (sender, true),
                // Boxed: rare, and it would make every request's future bigger.
                None => (Box::pin(self.connect(backend)).await?, false),
            };
            if reused && !sender.is_ready() && sender.ready().await.is_err() {
                continue; // closed meanwhile: nothing was sent on it
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let checkin = Checkin {
                        sender,
                        authority: backend.authority.clone(),
                        state: backend.state.clone(),
                    };
                    return Ok((response, checkin));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: a pooled connection the instance had
                    // just closed. Send it again on another one.
                    Some(again) if reused => {
                        debug!(instance = backend.id(), error = %e.error(), "pooled connection closed before the request was sent; sending it on another");
                        request = again;
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// A new connection to `backend`, its driver spawned.
    async fn connect(&self, backend: &Backend) -> Result<Sender, SendError> {
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
        let (sender, connection) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        let id = backend.id().to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                debug!(instance = %id, error = %e, "connection to instance ended with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::uri::PathAndQuery;
    use http::{HeaderMap, Method};
    use http_body_util::BodyExt;
    use registry::{Instance, InstanceState};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::forward::{self, AttemptError};
    use crate::proxy::retry::Failure;

    fn backend(addr: SocketAddr) -> Backend {
        let mut instance = Instance::new("app", addr.to_string());
        instance.id = "i-1".into();
        instance.state = InstanceState::Ready;
        Backend::new(instance, Arc::new(BackendState::new(Instant::now()))).unwrap()
    }

    fn get() -> Request<AttemptBody<Incoming>> {
        forward::request(
            &Method::GET,
            PathAndQuery::from_static("/"),
            HeaderMap::new(),
            AttemptBody::empty(),
        )
    }

    /// An instance that answers every request with `ok`, keeping the
    /// connection open, or closing it after one answer without saying so
    /// (the keep-alive race: the client cannot know until it writes).
    async fn instance(close_after_one: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() || close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn send_and_read(upstream: &Upstream, backend: &Backend) -> String {
        let (response, checkin) = upstream
            .send(backend, get(), Instant::now())
            .await
            .expect("a response");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        checkin.finish(Instant::now());
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
        assert_eq!(backend.state.conns.idle(), 1);
    }

    #[tokio::test]
    async fn a_response_not_read_to_the_end_does_not_return_its_connection() {
        let (addr, accepted) = instance(false).await;
        let backend = backend(addr);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60));
        let (response, checkin) = upstream
            .send(&backend, get(), Instant::now())
            .await
            .unwrap();
        drop((response, checkin)); // the client left before the body
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
    async fn idle_connections_past_the_idle_timeout_are_not_used() {
        let (addr, accepted) = instance(false).await;
        let backend = backend(addr);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_millis(1));
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(send_and_read(&upstream, &backend).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(backend.state.conns.idle(), 1, "the expired one was dropped");
    }

    #[tokio::test]
    async fn a_refused_connection_means_nothing_was_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60));
        let error = upstream
            .send(&backend(addr), get(), Instant::now())
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
