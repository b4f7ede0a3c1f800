//! A long-lived connection to one peer that carries batches of copies
//! ([`super::batch`]) without waiting for each batch's answer before the
//! next one leaves: a pipelined stream.
//!
//! A batch sent as its own HTTP request cost the sender a request through
//! the HTTP client and the peer one through its server, and a batch could
//! not leave before one of the [`super::batch::IN_FLIGHT`] before it was
//! answered. On a link, a batch is one write of its bytes, and the answers
//! come back in order on the same connection.
//!
//! Opened by an HTTP/1.1 upgrade: `GET` [`PATH`] with `Connection: upgrade`
//! and `Upgrade:` [`PROTOCOL`]; the peer answers `101 Switching Protocols`
//! (`routes::kv_peer::stream`). The connection then carries:
//!
//! - to the peer, frames: `len: u32 LE` followed by `len` bytes of a batch
//!   body (at most [`super::batch::MAX_BATCH_BYTES`]);
//! - from the peer, one answer per frame, in the frames' order:
//!   `status: u16 LE`, the status `POST /_shoal/kv-batch` would have
//!   answered for that body (200 stored, 400 not a valid batch, 503
//!   leaving or not stored).
//!
//! The peer stores the frames that reached it together, flushes once
//! (`--durability fsync`), and answers them together.
//!
//! A link dies when a write to it fails, the peer closes it, or frames
//! wait [`CALL_TIMEOUT`] with no answer (a frozen peer). Every frame still
//! waiting fails with it (indeterminate, as a failed push always was), and
//! the next batch opens a new link. A link with nothing to carry for
//! [`IDLE`] is closed. A peer that answers the upgrade with 404 or 405
//! predates links: [`Link::open`] says so and the caller sends batches as
//! HTTP requests instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{Request, StatusCode, header};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::batch::MAX_BATCH_BYTES;
use super::membership::Member;
use super::peers::{CALL_TIMEOUT, CONNECT_TIMEOUT, PeerError, status_error};

/// The upgrade endpoint.
pub const PATH: &str = "/_shoal/kv-stream";
/// The `Upgrade` token.
pub const PROTOCOL: &str = "shoal-kv-stream/1";
/// A link with nothing on it for this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);
/// How often the reader looks for a frame unanswered for [`CALL_TIMEOUT`].
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Bytes before a frame's batch body.
pub const FRAME_HEADER: usize = 4;

/// One peer's answer, given to every copy of a batch.
pub type Answer = Result<(), PeerError>;
/// Where one batch's answer goes: one sender per copy in it.
pub type Replies = Vec<oneshot::Sender<Answer>>;

/// An open (or dead) link to one peer.
#[derive(Debug)]
pub struct Link {
    peer: Arc<str>,
    write: tokio::sync::Mutex<OwnedWriteHalf>,
    state: Mutex<LinkState>,
}

#[derive(Debug, Default)]
struct LinkState {
    /// The frames sent and not answered yet, oldest first: when each was
    /// sent, and its replies.
    waiting: VecDeque<(Instant, Replies)>,
    /// Dead: nothing more is sent on it.
    closed: bool,
}

/// Why a frame was not sent.
#[derive(Debug)]
pub enum NotSent {
    /// The link had died before it: the caller may open a new one and send
    /// the frame there (nothing of it reached the peer).
    Closed(Vec<u8>, Replies),
    /// Writing it failed: its replies have their answer (the peer may have
    /// received some of it).
    Failed,
}

impl Link {
    /// Connect to `peer` and upgrade the connection; `Ok(None)` if the peer
    /// has no link endpoint (an older version). `on_close` runs once the
    /// link has died.
    pub async fn open(
        peer: &Member,
        on_close: impl FnOnce() + Send + 'static,
    ) -> Result<Option<Arc<Link>>, PeerError> {
        let unavailable = |why: String| PeerError::Unavailable {
            id: peer.id.to_string(),
            why,
        };
        let failed = |why: String| PeerError::Failed {
            id: peer.id.to_string(),
            why,
        };
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*peer.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(unavailable(e.to_string())),
                Err(_) => {
                    return Err(unavailable(format!(
                        "no connection within {} ms",
                        CONNECT_TIMEOUT.as_millis()
                    )));
                }
            };
        stream
            .set_nodelay(true)
            .map_err(|e| failed(format!("could not set TCP_NODELAY: {e}")))?;
        let upgrade = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(connection.with_upgrades());
            let request = Request::get(PATH)
                .header(header::HOST, &*peer.addr)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, PROTOCOL)
                .body(Empty::new())
                .expect("a request with these parts always builds");
            let response = sender.send_request(request).await?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Ok(Err(response.status()));
            }
            hyper::upgrade::on(response).await.map(Ok)
        };
        let upgraded = match tokio::time::timeout(CALL_TIMEOUT, upgrade).await {
            Err(_) => {
                return Err(failed(format!(
                    "no answer to the link upgrade within {} ms",
                    CALL_TIMEOUT.as_millis()
                )));
            }
            Ok(Err(e)) => {
                return Err(PeerError::Reset {
                    id: peer.id.to_string(),
                    why: format!("link upgrade: {e}"),
                });
            }
            Ok(Ok(Err(StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED))) => return Ok(None),
            Ok(Ok(Err(status))) => return Err(status_error(&peer.id, status)),
            Ok(Ok(Ok(upgraded))) => upgraded,
        };
        let parts = upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map_err(|_| failed("the upgraded connection is not the TCP stream it was".into()))?;
        let (read, write) = parts.io.into_inner().into_split();
        let link = Arc::new(Link {
            peer: peer.id.clone(),
            write: tokio::sync::Mutex::new(write),
            state: Mutex::default(),
        });
        let mut buffer = BytesMut::with_capacity(256);
        buffer.extend_from_slice(&parts.read_buf);
        tokio::spawn(read_answers(link.clone(), read, buffer, on_close));
        Ok(Some(link))
    }

    /// Whether frames can still be sent on it.
    pub fn is_open(&self) -> bool {
        !self.lock().closed
    }

    /// Send `frame` (a batch body after [`FRAME_HEADER`] bytes, which this
    /// fills in); its `replies` get the peer's answer.
    pub async fn send(&self, mut frame: Vec<u8>, replies: Replies) -> Result<(), NotSent> {
        let len = (frame.len() - FRAME_HEADER) as u32;
        frame[..FRAME_HEADER].copy_from_slice(&len.to_le_bytes());
        // In the writer's turn, so that frames and their replies queue in the same order.
        let mut write = self.write.lock().await;
        {
            let mut state = self.lock();
            if state.closed {
                return Err(NotSent::Closed(frame, replies));
            }
            state.waiting.push_back((Instant::now(), replies));
        }
        // A peer that stops reading fills the socket's buffers; the write
        // then waits no longer than a call would.
        let error = match tokio::time::timeout(CALL_TIMEOUT, write.write_all(&frame)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("writing to the link failed: {e}"),
            Err(_) => format!(
                "could not write to the link within {} ms",
                CALL_TIMEOUT.as_millis()
            ),
        };
        self.close(|id| PeerError::Reset {
            id,
            why: error.clone(),
        });
        Err(NotSent::Failed)
    }

    /// Close the link if its oldest frame has waited [`CALL_TIMEOUT`] for
    /// its answer (failing every frame), or if nothing has waited on it
    /// since `last_heard` and that was [`IDLE`] ago; whether it closed.
    fn close_if_overdue_or_idle(&self, last_heard: Instant) -> bool {
        let mut state = self.lock();
        match state.waiting.front() {
            Some((sent, _)) if sent.elapsed() >= CALL_TIMEOUT => {
                drop(state);
                self.close(|id| PeerError::Failed {
                    id,
                    why: format!("no answer within {} ms", CALL_TIMEOUT.as_millis()),
                });
                true
            }
            Some(_) => false,
            None => {
                state.closed = last_heard.elapsed() >= IDLE;
                state.closed
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().expect("link state poisoned")
    }

    /// Mark the link dead and fail every frame still waiting with `error`.
    fn close(&self, error: impl Fn(String) -> PeerError) {
        let waiting = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        for (_, replies) in waiting {
            answer(replies, Err(error(self.peer.to_string())));
        }
    }
}

/// Give every copy of a batch the peer's answer.
pub fn answer(replies: Replies, answer: Answer) {
    for reply in replies {
        // The writer may have gone (its client left): nothing to tell.
        let _ = reply.send(answer.clone());
    }
}

/// Read the peer's answers and hand each to its frame's replies, until the
/// link dies.
async fn read_answers(
    link: Arc<Link>,
    mut read: OwnedReadHalf,
    mut buffer: BytesMut,
    on_close: impl FnOnce(),
) {
    let mut last_heard = Instant::now();
    let check = tokio::time::sleep(CHECK_EVERY);
    tokio::pin!(check);
    loop {
        while buffer.len() >= 2 {
            let status = buffer.get_u16_le();
            let frame = link.lock().waiting.pop_front();
            let Some((_, replies)) = frame else {
                link.close(|id| PeerError::Failed {
                    id,
                    why: "answered a frame it was not sent".into(),
                });
                break;
            };
            let outcome = match StatusCode::from_u16(status) {
                Ok(StatusCode::OK) => Ok(()),
                Ok(status) => Err(status_error(&link.peer, status)),
                Err(_) => Err(PeerError::Failed {
                    id: link.peer.to_string(),
                    why: format!("answered {status}, which is not a status"),
                }),
            };
            answer(replies, outcome);
            last_heard = Instant::now();
        }
        if !link.is_open() {
            break;
        }
        buffer.reserve(256);
        tokio::select! {
            biased;
            // `read_buf` loses nothing when the other branch wins.
            read = read.read_buf(&mut buffer) => match read {
                Ok(0) => {
                    link.close(|id| PeerError::Reset {
                        id,
                        why: "the peer closed the link".into(),
                    });
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    link.close(|id| PeerError::Reset {
                        id,
                        why: format!("reading from the link failed: {e}"),
                    });
                    break;
                }
            },
            () = &mut check => {
                check.as_mut().reset(Instant::now() + CHECK_EVERY);
                if link.close_if_overdue_or_idle(last_heard) {
                    break;
                }
            }
        }
    }
    // A sender stuck in a write holds the write half; its timeout ends it.
    if let Ok(mut write) = link.write.try_lock() {
        let _ = write.shutdown().await;
    }
    on_close();
}

/// Why bytes read on the peer's side are not a frame.
#[derive(Debug, thiserror::Error)]
#[error("a link frame of {0} bytes is larger than the {MAX_BATCH_BYTES}-byte limit")]
pub struct FrameTooLarge(usize);

/// Take the next whole frame's batch body from the front of `buffer`, if
/// it holds one (the peer's side).
pub fn next_frame(buffer: &mut BytesMut) -> Result<Option<Bytes>, FrameTooLarge> {
    let Some(header) = buffer.get(..FRAME_HEADER) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header.try_into().expect("4 bytes")) as usize;
    if len > MAX_BATCH_BYTES {
        return Err(FrameTooLarge(len));
    }
    if buffer.len() < FRAME_HEADER + len {
        buffer.reserve(FRAME_HEADER + len - buffer.len());
        return Ok(None);
    }
    buffer.advance(FRAME_HEADER);
    Ok(Some(buffer.split_to(len).freeze()))
}

/// Append the answer to one frame (the peer's side).
pub fn encode_answer(status: StatusCode, out: &mut Vec<u8>) {
    out.extend_from_slice(&status.as_u16().to_le_bytes());
}
