//! HTTP/2 to instances over plain TCP with prior knowledge (h2c), for routes
//! whose `upstream_protocol` is `h2c` (gRPC servers).
//!
//! **One multiplexed connection per instance address**, kept in that
//! address's [`ConnPool`](super::pool::ConnPool) next to its HTTP/1.1 idle
//! connections: every request to the address opens a stream on it. Its
//! driver (hyper's HTTP/2 client connection) runs in a task of its own,
//! since many requests share it; request bodies are piped to their streams
//! by tasks hyper spawns. A connection that has closed (the instance went
//! away, or ended it with `GOAWAY` and finished its streams) is replaced by
//! a new one on the next request. The slot is behind an async mutex, held
//! only while a new connection is made, so that concurrent requests to a
//! fresh instance share one handshake instead of racing to open several.
//!
//! Bodies stream both ways, frame by frame: the request's through the
//! [`AttemptBody`] (trailers included), the response's through the
//! [`PooledBody`] the handler relays (HEADERS, DATA and the final HEADERS
//! frame with `grpc-status` and `grpc-message` as trailers). Nothing is
//! buffered, so server-streaming and bidi-streaming calls flow as the
//! instance and the client write.
//!
//! What a failure means for a retry is [`forward::classify`](super::forward::classify)'s
//! call: a stream the instance refused (`REFUSED_STREAM`), or one above the
//! last stream id of its `GOAWAY`, was not processed and may be sent again.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HOST, TE};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::AttemptBody;
use super::pool::{PooledBody, SendError};
use crate::backend::Backend;

/// Bytes of a request body kept so that a stream the instance refused
/// unprocessed can be sent again ([`body`](super::body)'s replay): a unary
/// gRPC call's message fits many times over; a longer client stream is
/// not retried once it has sent more.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// A request handle on one connection.
type Sender = http2::SendRequest<AttemptBody<Incoming>>;

/// An instance address's h2c connection, if one is open.
#[derive(Debug, Default)]
pub struct Slot {
    conn: tokio::sync::Mutex<Option<Conn>>,
}

#[derive(Debug)]
struct Conn {
    sender: Sender,
    /// The address it is connected to (an instance may be re-registered
    /// under the same id with another address).
    authority: Authority,
    /// Tells connections apart, so that a request that found one closed
    /// does not throw away the one another request just made.
    id: u64,
}

impl Slot {
    /// Forget connection `id` if it is still the one held.
    async fn forget(&self, id: u64) {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|c| c.id == id) {
            *conn = None;
        }
    }

    /// Whether a connection is held and open (for tests).
    pub async fn is_open(&self) -> bool {
        self.conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| !c.sender.is_closed())
    }
}

/// How h2c connections are made.
#[derive(Debug, Clone)]
pub struct H2c {
    builder: http2::Builder<TokioExecutor>,
}

static CONN_IDS: AtomicU64 = AtomicU64::new(0);

impl Default for H2c {
    fn default() -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        H2c { builder }
    }
}

impl H2c {
    /// Send `request` (origin-form URI, `Host` set) to `backend` on its
    /// h2c connection, opened first if there is none: the response, whose
    /// body streams from the connection's task.
    pub async fn send(
        &self,
        backend: &Backend,
        mut request: Request<AttemptBody<Incoming>>,
        connect_timeout: std::time::Duration,
    ) -> Result<Response<PooledBody>, SendError> {
        to_absolute_form(&mut request, &backend.authority);
        // The gateway relays trailers: say so, as gRPC servers expect.
        request
            .headers_mut()
            .insert(TE, HeaderValue::from_static("trailers"));
        let slot = &backend.conns.h2c;
        loop {
            let (mut sender, id, fresh) = self.sender(backend, slot, connect_timeout).await?;
            if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
                slot.forget(id).await;
                if fresh {
                    return Err(SendError::Http(e));
                }
                continue; // closed before this request was given to it
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response.map(PooledBody::unpooled)),
                Err(mut e) => {
                    slot.forget(id).await;
                    match e.take_message() {
                        // Never handed to the connection: send it on a new one.
                        Some(again) if !fresh => {
                            debug!(instance = backend.id(), error = %e.error(), "h2c connection closed before the request was sent; sending it on another");
                            request = again;
                        }
                        _ => return Err(SendError::Http(e.into_error())),
                    }
                }
            }
        }
    }

    /// The open connection to `backend`, or a new one; whether it is new.
    async fn sender(
        &self,
        backend: &Backend,
        slot: &Slot,
        connect_timeout: std::time::Duration,
    ) -> Result<(Sender, u64, bool), SendError> {
        let mut held = slot.conn.lock().await;
        if let Some(conn) = &*held
            && !conn.sender.is_closed()
            && conn.authority.as_str() == backend.authority.as_str()
        {
            return Ok((conn.sender.clone(), conn.id, false));
        }
        *held = None;
        let addr = backend.authority.as_str();
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {connect_timeout:?}"),
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
        let instance = backend.id().to_owned();
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                debug!(%instance, error = %e, "h2c connection to instance ended with an error");
            }
        });
        let id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
        *held = Some(Conn {
            sender: sender.clone(),
            authority: backend.authority.clone(),
            id,
        });
        Ok((sender, id, true))
    }
}

/// HTTP/2 names the target in `:scheme` and `:authority`: the request's
/// `Host` (what the client asked for; the instance's address without one)
/// becomes the authority, and the header goes.
fn to_absolute_form<B>(request: &mut Request<B>, instance: &Authority) {
    let authority = request
        .headers_mut()
        .remove(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .unwrap_or_else(|| instance.clone());
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| {
        // Not reached: scheme, authority and path are all set.
        Uri::from_static("http://invalid/")
    });
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::uri::PathAndQuery;
    use http::{HeaderMap, Method};
    use http_body_util::BodyExt;
    use registry::model::UpstreamProtocol;
    use registry::{Instance, InstanceState};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::forward::{self, AttemptError};
    use crate::proxy::pool::Upstream;
    use crate::proxy::retry::Failure;

    /// What a test instance does with each stream.
    #[derive(Clone, Copy)]
    enum Serve {
        /// `hi`, then the trailers `grpc-status: 0`.
        Answer,
        /// Reset the stream with REFUSED_STREAM (the instance will not process it).
        Refuse,
        /// Drop the whole connection once the request has arrived (a killed instance).
        Vanish,
    }

    /// An HTTP/2 server (the h2 crate, as tonic uses it) on a free port;
    /// counts the connections it accepted.
    async fn instance(serve: Serve) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(socket).await.unwrap();
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        match serve {
                            Serve::Answer => {
                                assert_eq!(request.headers()[TE], "trailers");
                                let response = http::Response::new(());
                                let mut stream = respond.send_response(response, false).unwrap();
                                stream.send_data(Bytes::from_static(b"hi"), false).unwrap();
                                let mut trailers = HeaderMap::new();
                                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                                stream.send_trailers(trailers).unwrap();
                            }
                            Serve::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
                            Serve::Vanish => return,
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn backend(addr: SocketAddr) -> Backend {
        let mut instance = Instance::new("app", addr.to_string());
        instance.id = "i-1".into();
        instance.state = InstanceState::Ready;
        Backend::new(
            instance,
            Arc::new(crate::backend::BackendState::new(Instant::now())),
        )
        .unwrap()
    }

    async fn post(
        upstream: &Upstream,
        backend: &Backend,
    ) -> Result<Response<PooledBody>, SendError> {
        let request = forward::request(
            &Method::POST,
            PathAndQuery::from_static("/pkg.Svc/Call"),
            HeaderMap::new(),
            AttemptBody::empty(),
        );
        upstream
            .send(
                backend,
                request,
                Instant::now(),
                false,
                UpstreamProtocol::H2c,
            )
            .await
    }

    fn upstream() -> Upstream {
        Upstream::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    #[tokio::test]
    async fn calls_share_one_connection_and_their_trailers_arrive() {
        let (addr, accepted) = instance(Serve::Answer).await;
        let backend = backend(addr);
        let upstream = upstream();
        let calls = (0..4).map(|_| post(&upstream, &backend));
        for response in futures::future::join_all(calls).await {
            let response = response.expect("a response");
            assert_eq!(response.status(), 200);
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().expect("trailers");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(collected.to_bytes(), "hi");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
        assert!(backend.conns.h2c.is_open().await);
    }

    #[tokio::test]
    async fn a_refused_stream_was_not_processed() {
        let (addr, _) = instance(Serve::Refuse).await;
        let error = post(&upstream(), &backend(addr)).await.unwrap_err();
        assert!(
            matches!(
                forward::classify(&error),
                AttemptError::Failed(Failure::Refused, _)
            ),
            "{}",
            forward::chain(&error)
        );
    }

    #[tokio::test]
    async fn a_connection_lost_with_the_request_on_it_may_have_been_processed() {
        let (addr, _) = instance(Serve::Vanish).await;
        let error = post(&upstream(), &backend(addr)).await.unwrap_err();
        assert!(
            matches!(
                forward::classify(&error),
                AttemptError::Failed(Failure::Reset, _)
            ),
            "{}",
            forward::chain(&error)
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_replaced() {
        let (addr, accepted) = instance(Serve::Answer).await;
        let backend = backend(addr);
        let upstream = upstream();
        post(&upstream, &backend).await.unwrap();
        // The connection ends (its last handle is dropped): the next call opens another.
        let held = backend.conns.h2c.conn.lock().await.take();
        drop(held);
        post(&upstream, &backend).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_host_becomes_the_authority() {
        let instance: Authority = "127.0.0.1:9000".parse().unwrap();
        let mut request = Request::new(());
        *request.uri_mut() = "/pkg.Svc/Call?x=1".parse().unwrap();
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("api.example.com"));
        to_absolute_form(&mut request, &instance);
        assert_eq!(
            request.uri().to_string(),
            "http://api.example.com/pkg.Svc/Call?x=1"
        );
        assert!(request.headers().get(HOST).is_none());

        let mut request = Request::new(());
        *request.uri_mut() = "/".parse().unwrap();
        to_absolute_form(&mut request, &instance);
        assert_eq!(request.uri().to_string(), "http://127.0.0.1:9000/");
    }
}
