//! HTTP/2 to instances over plain TCP with prior knowledge (h2c), for routes
//! whose `upstream_protocol` is `h2c` (gRPC servers).
//!
//! **One multiplexed connection per instance address**, kept in that
//! address's [`ConnPool`](super::pool::ConnPool) next to its HTTP/1.1 idle
//! connections: every request to the address opens a stream on it. Its
//! driver (hyper's HTTP/2 client connection) runs in a task of its own,
//! since many requests share it; request bodies are piped to their streams
//! by tasks hyper spawns. A connection that has closed (the instance went
//! away, or ended it with `GOAWAY` and finished its streams), or on which a
//! stream failed by the instance's doing, is replaced by a new one on the
//! next request. The slot is behind an async mutex, held
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
//! What a failure means for a retry is [`forward::classify`]'s
//! call: a stream the instance refused (`REFUSED_STREAM`), or one above the
//! last stream id of its `GOAWAY`, was not processed and may be sent again.
//!
//! **`GOAWAY` ends a connection's use.** h2 keeps opening streams on a
//! connection whose peer sent `GOAWAY` (and hyper is not told of it); the
//! instance ignores them, and they fail only when it closes the
//! connection, as if cut off, although they were never processed. So the
//! socket is [`Watched`]: its reads are scanned for frame headers (9 bytes
//! each, payloads skipped), and once a `GOAWAY` frame has gone by, the next
//! request opens a new connection, while the old one finishes the streams
//! it has. A server closing connections on its own (grpc-go's
//! `MaxConnectionAge`) then costs no call.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use http::header::{HOST, TE};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::AttemptBody;
use super::forward::{self, AttemptError};
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
    /// The instance sent `GOAWAY`: no new stream goes on it.
    going_away: Arc<AtomicBool>,
}

impl Conn {
    fn takes_streams(&self) -> bool {
        !self.sender.is_closed() && !self.going_away.load(Ordering::Relaxed)
    }
}

impl Slot {
    /// Forget connection `id` if it is still the one held.
    async fn forget(&self, id: u64) {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|c| c.id == id) {
            *conn = None;
        }
    }

    /// Whether a connection is held that takes new streams (for tests).
    pub async fn is_open(&self) -> bool {
        self.conn
            .lock()
            .await
            .as_ref()
            .is_some_and(Conn::takes_streams)
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
                Err(mut e) => match e.take_message() {
                    // Never handed to the connection: send it on a new one.
                    Some(again) if !fresh => {
                        slot.forget(id).await;
                        debug!(instance = backend.id(), error = %e.error(), "h2c connection closed before the request was sent; sending it on another");
                        request = again;
                    }
                    _ => {
                        let error = SendError::Http(e.into_error());
                        // The instance's doing (not the client's body): the
                        // connection may be going away; new requests open
                        // another.
                        if let AttemptError::Failed(..) = forward::classify(&error) {
                            slot.forget(id).await;
                        }
                        return Err(error);
                    }
                },
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
            && conn.takes_streams()
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
        let going_away = Arc::new(AtomicBool::new(false));
        let stream = Watched {
            stream,
            scan: FrameScan::default(),
            going_away: going_away.clone(),
        };
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
            going_away,
        });
        Ok((sender, id, true))
    }
}

/// An h2c connection's socket, noting when the instance sends `GOAWAY`.
struct Watched {
    stream: TcpStream,
    scan: FrameScan,
    going_away: Arc<AtomicBool>,
}

/// Where the bytes read stand in HTTP/2's frame layout (RFC 9113 §4.1:
/// a 9-byte header, its first 3 bytes the payload's length, the 4th the
/// type). A server's bytes are frames from the first one on.
#[derive(Debug, Default)]
struct FrameScan {
    head: [u8; 9],
    /// Header bytes gathered so far.
    have: usize,
    /// Payload bytes still to skip.
    skip: usize,
}

/// The `GOAWAY` frame type.
const GOAWAY: u8 = 0x7;

impl FrameScan {
    /// Go over `bytes`; whether a `GOAWAY` frame header was among them.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut goaway = false;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let [a, b, c, kind, ..] = self.head;
                goaway |= kind == GOAWAY;
                self.skip = u32::from_be_bytes([0, a, b, c]) as usize;
                self.have = 0;
            }
        }
        goaway
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if this.scan.feed(&buf.filled()[before..]) {
            this.going_away.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::forward::{self, AttemptError};
    use crate::proxy::pool::Upstream;
    use crate::proxy::retry::Failure;
    use crate::testing::ready_backend as backend;

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

    #[test]
    fn goaway_frames_are_found_wherever_the_reads_split_them() {
        let frame = |kind: u8, payload: &[u8]| {
            let len = (payload.len() as u32).to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
            f.extend_from_slice(payload);
            f
        };
        // A DATA frame whose payload holds a byte 7 where a type would be,
        // then a GOAWAY.
        let mut bytes = frame(0x0, &[0, 0, 0, GOAWAY, 0, 0, 0, 0, 0, 9, 9]);
        let data_len = bytes.len();
        bytes.extend(frame(GOAWAY, &[0, 0, 0, 1, 0, 0, 0, 0]));
        for split in 0..bytes.len() {
            let mut scan = FrameScan::default();
            let first = scan.feed(&bytes[..split]);
            let second = scan.feed(&bytes[split..]);
            assert!(!first || split > data_len + 3, "split at {split}");
            assert!(first || second, "split at {split}");
        }
        let mut scan = FrameScan::default();
        assert!(!scan.feed(&bytes[..data_len]), "not in a payload");
    }

    /// An HTTP/2 instance of raw frames. On its first connection it holds
    /// the first stream unanswered (a long call), answers the second with
    /// `200`, then sends `GOAWAY` naming that one as the last, and ignores
    /// later streams (RFC 9113 §6.8) while the held one keeps the
    /// connection open, as a server closing connections by itself does.
    /// Later connections answer every stream.
    /// Also counts the streams it saw.
    async fn going_away_instance() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let (count, seen_by_server) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let first_connection = count.fetch_add(1, Ordering::SeqCst) == 0;
                let seen = seen_by_server.clone();
                tokio::spawn(async move {
                    let mut preface = [0u8; 24];
                    socket.read_exact(&mut preface).await?;
                    socket.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await?;
                    let mut streams = 0;
                    loop {
                        let mut head = [0u8; 9];
                        socket.read_exact(&mut head).await?;
                        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                        let mut payload = vec![0u8; len];
                        socket.read_exact(&mut payload).await?;
                        let stream = [head[5], head[6], head[7], head[8]];
                        match (head[3], head[4]) {
                            (0x4, 0) => socket.write_all(&[0, 0, 0, 0x4, 1, 0, 0, 0, 0]).await?,
                            (0x1, _) => {
                                streams += 1;
                                seen.fetch_add(1, Ordering::SeqCst);
                                if first_connection && streams != 2 {
                                    continue; // held, or after the GOAWAY: ignored
                                }
                                // HEADERS `:status: 200` (HPACK static index 8), END_STREAM.
                                let mut reply = vec![0, 0, 1, 0x1, 0x5];
                                reply.extend_from_slice(&stream);
                                reply.push(0x88);
                                if first_connection {
                                    // GOAWAY: this stream is the last, NO_ERROR.
                                    reply.extend_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
                                    reply.extend_from_slice(&stream);
                                    reply.extend_from_slice(&[0, 0, 0, 0]);
                                }
                                socket.write_all(&reply).await?;
                            }
                            _ => {}
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), io::Error>(())
                });
            }
        });
        (addr, accepted, seen)
    }

    #[tokio::test]
    async fn after_a_goaway_new_streams_go_on_a_new_connection() {
        let (addr, accepted, seen) = going_away_instance().await;
        let backend = Arc::new(backend(addr));
        let upstream = Arc::new(upstream());
        // A long call keeps the first connection open past its GOAWAY.
        let held = {
            let (upstream, backend) = (upstream.clone(), backend.clone());
            tokio::spawn(async move { post(&upstream, &backend).await.map(|r| r.status()) })
        };
        crate::testing::poll(
            "the long call's stream to arrive first",
            async || match seen.load(Ordering::SeqCst) {
                0 => Err("no stream yet".to_owned()),
                _ => Ok(()),
            },
        )
        .await;
        let answered = post(&upstream, &backend).await.expect("second call");
        assert_eq!(answered.status(), 200);
        crate::testing::poll("the GOAWAY to be noticed", async || {
            match backend.conns.h2c.is_open().await {
                true => Err("the connection is still open".to_owned()),
                false => Ok(()),
            }
        })
        .await;
        // On the first connection it would be ignored and never answered.
        let third = tokio::time::timeout(Duration::from_secs(5), post(&upstream, &backend))
            .await
            .expect("the third call is answered")
            .expect("third call");
        assert_eq!(third.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(
            !held.is_finished(),
            "the long call still runs on the first connection"
        );
        held.abort();
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
