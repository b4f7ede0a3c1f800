//! A client connection's byte stream: what it speaks ([`ClientStream::protocol`],
//! told without consuming a byte) and [`Counted`], the stream hyper reads
//! and writes, which keeps the counters the watchdog judges by, replays
//! bytes read before hyper's turn, lets an HTTP/1 connection hand its
//! socket back to the server while idle (see "Idle HTTP/1 connections" in
//! the module doc above), and closes lingering.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::LAST_CALL;
use super::watchdog::Activity;

/// The HTTP/2 connection preface (RFC 9113 §3.4) a prior-knowledge h2c
/// client opens with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// While the bytes peeked so far are the start of the preface but not all
/// of it, how long to wait before peeking again.
const PREFACE_REPEEK: Duration = Duration::from_millis(5);

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

/// Boxed: the TLS session is over a kilobyte, and a connection's task
/// would otherwise hold room for it several times over (each async step
/// it passes through keeps its own slot), about 5 KB more per connection
/// (`bench/gateway-tls.sh`, idle connections).
impl ClientStream for Box<tokio_rustls::server::TlsStream<TcpStream>> {
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

/// The client's stream as hyper sees it: counts the bytes read and whether
/// all that was written is flushed (for the watchdog), and first replays
/// `prefix`, bytes read off the stream before hyper's turn.
pub(super) struct Counted<S: ClientStream> {
    inner: S,
    activity: Arc<Activity>,
    prefix: Bytes,
    /// The socket went on to the lot ([`Counted::hand_off`]): no lingering close.
    handed_off: bool,
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
        if self.handed_off {
            return;
        }
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
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Counted {
            inner,
            activity,
            prefix: Bytes::new(),
            handed_off: false,
        }
    }

    /// The socket, to wait in the lot with no task: a duplicate
    /// (non-blocking, as this one is) that stays open when this stream
    /// closes, as it does here, without a lingering close. Only for a quiet
    /// plain connection: nothing unread here, and no TLS session to lose.
    pub(super) fn hand_off(mut self) -> io::Result<std::net::TcpStream> {
        debug_assert!(!S::TLS, "a TLS session cannot be handed off as a socket");
        debug_assert!(self.prefix.is_empty(), "handing off unread bytes");
        self.handed_off = true;
        self.duplicate()
    }

    /// A second descriptor of the socket (sharing its flags: non-blocking),
    /// which keeps it open when this stream closes.
    fn duplicate(&self) -> io::Result<std::net::TcpStream> {
        use std::os::fd::AsFd;
        let fd = self.inner.tcp().as_fd().try_clone_to_owned()?;
        Ok(std::net::TcpStream::from(fd))
    }

    /// Bytes to hand hyper before any more from the stream: what an ended
    /// hyper connection had read and not parsed (a pipelined request's start).
    pub(super) fn replay(&mut self, bytes: Bytes) {
        debug_assert!(self.prefix.is_empty(), "replaying over unread bytes");
        // Copied: `bytes` is a view of hyper's whole 8 KiB read buffer.
        self.prefix = Bytes::copy_from_slice(&bytes);
    }

    /// Wait, holding no buffer, for the first byte of the client's next
    /// request (kept to replay); whether one came. Not when the client
    /// closed the connection, `idle_until` passed, or the server is stopping
    /// and none came within [`LAST_CALL`] (a request that does come then is
    /// answered with `Connection: close`, as a busy connection's would be).
    pub(super) async fn next_request(
        &mut self,
        idle_until: Instant,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut first = [0u8; 1];
        let read = tokio::select! {
            read = self.inner.read(&mut first) => Some(read),
            () = tokio::time::sleep_until(idle_until) => return false,
            () = shutdown.cancelled() => None,
        };
        let read = match read {
            Some(read) => read,
            None => {
                self.activity.last_call.store(true, Ordering::Relaxed);
                match tokio::time::timeout(LAST_CALL, self.inner.read(&mut first)).await {
                    Ok(read) => read,
                    Err(_) => return false,
                }
            }
        };
        match read {
            Ok(0) => false,
            Ok(n) => {
                self.activity
                    .bytes_read
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.prefix = Bytes::copy_from_slice(&first[..n]);
                true
            }
            Err(e) => {
                debug!(error = %e, "reading an idle connection failed; closing it");
                false
            }
        }
    }

    /// A duplicate of the socket, so the lingering task can own it while
    /// this one is dropped.
    fn inner_std(&self) -> io::Result<TcpStream> {
        let std = self.duplicate()?;
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
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
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

impl<S: ClientStream> Counted<S> {
    fn note_written(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written
            && *n > 0
        {
            self.activity.unflushed.store(true, Ordering::Relaxed);
        }
    }
}

impl<S: ClientStream> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_written(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_written(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.activity.unflushed.store(false, Ordering::Relaxed);
        }
        flushed
    }

    /// A no-op while the connection is being handed back to the server
    /// (hyper shuts its stream down when it ends; this one goes on).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.releasing.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

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
