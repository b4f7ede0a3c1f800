//! Copies pushed to one peer, gathered into batches.
//!
//! A write with R ≥ 2 sends its new entry to the other owners before it
//! answers. One HTTP request per copy made the replica's request handling,
//! and the primary's client, cost as much as the writes themselves. Now
//! [`Peers::push`](super::peers::Peers::push) queues the copy for its peer
//! and waits for that peer's answer:
//!
//! - a copy queued while the peer's sender is busy goes in the next batch,
//!   with every other copy queued meanwhile (up to [`MAX_BATCH_BYTES`]). A
//!   lone write leaves at once: nothing waits for a batch to fill.
//! - batches go on the peer's [`link`]: one long-lived
//!   connection, a batch written as soon as the one before it is written,
//!   the answers read back in order. A peer without links (an older
//!   version, during a rolling upgrade) gets each batch as an HTTP request
//!   to [`PATH`], at most [`IN_FLIGHT`] at once; one without that endpoint
//!   either (404 or 405) gets the copies one request each. Either fallback
//!   lasts as long as the peer's queue.
//! - the peer stores every copy, flushes once (`--durability fsync`), and
//!   answers once for the whole batch. Its answer is every copy's answer: a
//!   failure fails them all, and each is then indeterminate, as a failed
//!   push always was.
//! - no copy waits longer than [`CALL_TIMEOUT`] for its answer, queued
//!   or sent: the bound a call to a peer always had.
//!
//! Wire format of a batch (`POST /_shoal/kv-batch`, body
//! `application/octet-stream`, or a link's frame): items `len: u32 LE`
//! followed by `len` bytes: `owners_len: u16 LE`, the owner ids as in
//! `x-shoal-kv-owners`, then the copy in [`codec`]'s form (a value or a
//! tombstone; never a removal).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::codec::{self, Record};
use super::link::{self, Answer, FRAME_HEADER, Link, NotSent, Replies};
use super::membership::Member;
use super::peers::{CALL_TIMEOUT, PeerError, Peers};
use super::store::Entry;

/// The receiving endpoint for a batch sent as an HTTP request.
pub const PATH: &str = "/_shoal/kv-batch";
/// Batches sent as HTTP requests to one peer at once.
pub const IN_FLIGHT: usize = 2;
/// A batch is closed before it grows past this (one copy, at most a 1 MiB
/// value, always fits); the receiver refuses bigger bodies.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// The batch queues, one per peer (by instance id).
#[derive(Debug, Default)]
pub struct Batches {
    queues: Mutex<HashMap<Arc<str>, Arc<Queue>>>,
}

#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Batches not sent yet, oldest first.
    waiting: VecDeque<Pending>,
    /// Senders running (each sends one batch at a time).
    senders: usize,
    route: Route,
}

/// How batches reach the peer.
#[derive(Debug, Clone)]
enum Route {
    /// On a link: the one open, or a new one.
    Link(Option<Arc<Link>>),
    /// As HTTP requests to [`PATH`]: the peer has no link endpoint.
    Requests,
    /// A request per copy: the peer has no batch endpoint either.
    OneByOne,
}

impl Default for Route {
    fn default() -> Self {
        Route::Link(None)
    }
}

impl Route {
    /// Senders at once: a link's frames are written one after another and
    /// no sender waits for an answer; a request waits for its answer.
    fn senders(&self) -> usize {
        match self {
            Route::Link(_) => 1,
            Route::Requests | Route::OneByOne => IN_FLIGHT,
        }
    }
}

#[derive(Debug)]
struct Pending {
    /// [`FRAME_HEADER`] bytes (a link's frame header, filled in when sent),
    /// then the batch body.
    frame: Vec<u8>,
    replies: Replies,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            frame: vec![0; FRAME_HEADER],
            replies: Vec::new(),
        }
    }
}

impl Pending {
    fn body_len(&self) -> usize {
        self.frame.len() - FRAME_HEADER
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().expect("batch queue poisoned")
    }
}

impl Batches {
    fn queue(&self, peer: &Member) -> Arc<Queue> {
        let mut queues = self.queues.lock().expect("batch queues poisoned");
        queues.entry(peer.id.clone()).or_default().clone()
    }

    /// Drop `queue` from the map if it is still the peer's, has nothing
    /// to do and holds no open link (a departed peer leaves no queue
    /// behind).
    fn forget_if_idle(&self, peer: &Member, queue: &Arc<Queue>) {
        let mut queues = self.queues.lock().expect("batch queues poisoned");
        if let Some(current) = queues.get(&peer.id)
            && Arc::ptr_eq(current, queue)
        {
            let state = queue.lock();
            let linked = matches!(&state.route, Route::Link(Some(link)) if link.is_open());
            if state.senders == 0 && state.waiting.is_empty() && !linked {
                drop(state);
                queues.remove(&peer.id);
            }
        }
    }
}

/// Queue a copy of `entry` for `peer` and wait for the peer's answer to
/// the batch it leaves in.
pub async fn push(peers: &Peers, peer: &Member, key: &str, entry: &Entry, owners: &str) -> Answer {
    let (reply, answer) = oneshot::channel();
    let queue = peers.batches().queue(peer);
    let start_sender = {
        let mut state = queue.lock();
        let item_len = item_len(key, entry, owners);
        let fits = state
            .waiting
            .back()
            .is_some_and(|last| last.body_len() + item_len <= MAX_BATCH_BYTES);
        if !fits {
            state.waiting.push_back(Pending::default());
        }
        let last = state.waiting.back_mut().expect("a batch was just made");
        encode_item(&mut last.frame, key, entry, owners);
        last.replies.push(reply);
        let start = state.senders < state.route.senders();
        state.senders += start as usize;
        start
    };
    if start_sender {
        tokio::spawn(send_queued(peers.clone(), peer.clone(), queue));
    }
    // A copy queued behind batches to a peer that does not answer waits no
    // longer than a call to it would (each batch has that timeout too).
    let failed = |why: String| {
        Err(PeerError::Failed {
            id: peer.id.to_string(),
            why,
        })
    };
    match tokio::time::timeout(CALL_TIMEOUT, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => failed("the batch it was queued in was dropped".into()),
        Err(_) => failed(format!("no answer within {} ms", CALL_TIMEOUT.as_millis())),
    }
}

/// Send the peer's batches, one at a time, until none is waiting.
async fn send_queued(peers: Peers, peer: Member, queue: Arc<Queue>) {
    loop {
        let (pending, route) = {
            let mut state = queue.lock();
            match state.waiting.pop_front() {
                Some(pending) => (pending, state.route.clone()),
                None => {
                    state.senders -= 1;
                    break;
                }
            }
        };
        match route {
            Route::Link(link) => send_on_link(&peers, &peer, &queue, link, pending).await,
            Route::Requests => {
                let answer = send_request(&peers, &peer, &queue, &pending.frame).await;
                link::answer(pending.replies, answer);
            }
            Route::OneByOne => {
                let answer = push_each(&peers, &peer, &pending.frame[FRAME_HEADER..]).await;
                link::answer(pending.replies, answer);
            }
        }
    }
    peers.batches().forget_if_idle(&peer, &queue);
}

/// Write `pending` on the peer's link, opening one if there is none (or
/// the one there has died); returns once it is written, not answered.
async fn send_on_link(
    peers: &Peers,
    peer: &Member,
    queue: &Arc<Queue>,
    open: Option<Arc<Link>>,
    pending: Pending,
) {
    let Pending { frame, replies } = pending;
    let (frame, replies) = match open.filter(|link| link.is_open()) {
        Some(link) => match link.send(frame, replies).await {
            Err(NotSent::Closed(frame, replies)) => (frame, replies),
            Ok(()) | Err(NotSent::Failed) => return,
        },
        None => (frame, replies),
    };
    let on_close = {
        let (batches, peer, queue) = (peers.batches().clone(), peer.clone(), queue.clone());
        move || {
            if let Route::Link(link) = &mut queue.lock().route
                && link.as_ref().is_some_and(|link| !link.is_open())
            {
                *link = None;
            }
            batches.forget_if_idle(&peer, &queue);
        }
    };
    match Link::open(peer, on_close).await {
        Ok(Some(link)) => {
            if let Route::Link(open) = &mut queue.lock().route {
                *open = Some(link.clone());
            }
            if let Err(NotSent::Closed(_, replies)) = link.send(frame, replies).await {
                let closed = PeerError::Reset {
                    id: peer.id.to_string(),
                    why: "the link closed as soon as it opened".into(),
                };
                link::answer(replies, Err(closed));
            }
        }
        Ok(None) => {
            queue.lock().route = Route::Requests;
            let answer = send_request(peers, peer, queue, &frame).await;
            link::answer(replies, answer);
        }
        Err(e) => link::answer(replies, Err(e)),
    }
}

/// Send one batch as an HTTP request (`frame` after its header), falling
/// back to a request per copy for a peer without the batch endpoint.
async fn send_request(peers: &Peers, peer: &Member, queue: &Queue, frame: &[u8]) -> Answer {
    let body = Bytes::copy_from_slice(&frame[FRAME_HEADER..]);
    match peers.send_batch(peer, body.clone()).await {
        Err(BatchRefused::NotUnderstood) => {
            queue.lock().route = Route::OneByOne;
            push_each(peers, peer, &body).await
        }
        Err(BatchRefused::Peer(e)) => Err(e),
        Ok(()) => Ok(()),
    }
}

/// Why a batch got no answer.
pub enum BatchRefused {
    /// The peer has no batch endpoint (404 or 405).
    NotUnderstood,
    Peer(PeerError),
}

/// An older peer: each copy of `body` in a request of its own.
async fn push_each(peers: &Peers, peer: &Member, body: &[u8]) -> Answer {
    let copies = decode(body).map_err(|e| PeerError::Failed {
        id: peer.id.to_string(),
        why: format!("could not read back a batch this instance made: {e}"),
    })?;
    for copy in copies {
        peers
            .push_one(peer, &copy.key, &copy.entry, &copy.owners)
            .await?;
    }
    Ok(())
}

fn item_len(key: &str, entry: &Entry, owners: &str) -> usize {
    4 + 2 + owners.len() + codec::payload_len(Record::Put(key, entry))
}

fn encode_item(out: &mut Vec<u8>, key: &str, entry: &Entry, owners: &str) {
    let len = item_len(key, entry, owners) - 4;
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&(owners.len() as u16).to_le_bytes());
    out.extend_from_slice(owners.as_bytes());
    codec::encode(Record::Put(key, entry), out);
}

/// One copy in a batch, for one peer.
#[derive(Debug, PartialEq)]
pub struct Item {
    pub key: String,
    pub entry: Entry,
    /// The owner ids the sender sends it to, as in `x-shoal-kv-owners`.
    pub owners: String,
}

/// What is wrong with a batch body.
#[derive(Debug, thiserror::Error)]
#[error("batch item {index} (at byte {offset}) is {why}")]
pub struct BadBatch {
    index: usize,
    offset: usize,
    why: &'static str,
}

/// The copies of a batch body, or what is wrong with it (nothing is
/// stored from a batch that is not valid to its end).
pub fn decode(mut body: &[u8]) -> Result<Vec<Item>, BadBatch> {
    let mut copies = Vec::new();
    let mut offset = 0;
    while !body.is_empty() {
        let bad = |why| BadBatch {
            index: copies.len(),
            offset,
            why,
        };
        let len = body
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad("cut short in its length"))?;
        let item = body.get(4..4 + len).ok_or_else(|| bad("cut short"))?;
        let owners_len = item
            .get(..2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")) as usize)
            .ok_or_else(|| bad("cut short in its owners"))?;
        let owners = item
            .get(2..2 + owners_len)
            .and_then(|o| std::str::from_utf8(o).ok())
            .ok_or_else(|| bad("not a list of owners"))?;
        let (key, entry) =
            codec::decode(&item[2 + owners_len..]).ok_or_else(|| bad("not a valid copy"))?;
        let entry = entry.ok_or_else(|| bad("a removal, which batches do not carry"))?;
        copies.push(Item {
            key,
            entry,
            owners: owners.to_owned(),
        });
        body = &body[4 + len..];
        offset += 4 + len;
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::ServiceExt as _;
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use futures::future::join_all;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tower::Layer;

    use super::*;
    use crate::kv::testing::{accept_link, answer_frame, fake_peer, peer_at, read_frame};
    use crate::kv::version::Version;
    use crate::routes::testing::TestApp;

    /// How the peer under test treats the link and batch endpoints.
    #[derive(Clone, Copy, PartialEq)]
    enum Peer {
        /// This version: takes links.
        Current,
        /// The version before: no link endpoint (404), takes batches as requests.
        NoLinks,
        /// Older still: no batch endpoint either, copies one by one.
        Older,
        /// Takes nothing: 503 to every link and batch.
        Refusing,
    }

    struct Served {
        app: TestApp,
        member: Member,
        links: Arc<AtomicUsize>,
        batches: Arc<AtomicUsize>,
        singles: Arc<AtomicUsize>,
    }

    /// The real app's router on a real socket, counting the internal calls.
    async fn serve(kind: Peer) -> Served {
        let app = TestApp::new();
        let counters: [Arc<AtomicUsize>; 3] = Default::default();
        let [links, batches, singles] = counters.clone();
        let router = middleware::from_fn(move |request: Request, next: Next| {
            let [links, batches, singles] = counters.clone();
            async move {
                let path = request.uri().path().to_owned();
                let refused = if path == link::PATH {
                    links.fetch_add(1, Ordering::SeqCst);
                    match kind {
                        Peer::Current => None,
                        Peer::NoLinks | Peer::Older => Some(StatusCode::NOT_FOUND),
                        Peer::Refusing => Some(StatusCode::SERVICE_UNAVAILABLE),
                    }
                } else if path == PATH {
                    batches.fetch_add(1, Ordering::SeqCst);
                    match kind {
                        Peer::Current | Peer::NoLinks => None,
                        Peer::Older => Some(StatusCode::NOT_FOUND),
                        Peer::Refusing => Some(StatusCode::SERVICE_UNAVAILABLE),
                    }
                } else {
                    if path.starts_with("/_shoal/kv/") {
                        singles.fetch_add(1, Ordering::SeqCst);
                    }
                    None
                };
                if let Some(status) = refused {
                    return status.into_response();
                }
                let response: Response = next.run(request).await;
                response
            }
        })
        .layer(app.router.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router.into_make_service()).await });
        Served {
            app,
            member: peer_at("peer", addr),
            links,
            batches,
            singles,
        }
    }

    /// Push `n` copies at once (`{prefix}-{i}`), every push's answer.
    async fn push_all(peers: &Peers, to: &Member, prefix: &str, n: u64) -> Vec<Answer> {
        let keys: Vec<(String, Entry)> = (0..n)
            .map(|i| (format!("{prefix}-{i}"), entry(i + 1, Some("v"))))
            .collect();
        join_all(
            keys.iter()
                .map(|(key, entry)| peers.push(to, key, entry, "self,peer")),
        )
        .await
    }

    fn assert_stored(app: &TestApp, prefix: &str, n: u64) {
        for i in 0..n {
            let stored = app.state.kv().local(&format!("{prefix}-{i}"));
            assert_eq!(stored, Some(entry(i + 1, Some("v"))), "{prefix}-{i}");
        }
    }

    fn queues(peers: &Peers) -> usize {
        peers.batches().queues.lock().unwrap().len()
    }

    /// Wait (up to 2 s) until no queue is left: its link closed and forgotten.
    async fn queue_forgotten(peers: &Peers) {
        let forgotten = async {
            while queues(peers) > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), forgotten)
            .await
            .expect("the link is closed and its queue forgotten within 2 s");
    }

    #[tokio::test]
    async fn copies_go_on_one_link_that_stays_open_for_the_next_ones() {
        let peer = serve(Peer::Current).await;
        let peers = Peers::default();
        for burst in ["a", "b"] {
            let answers = push_all(&peers, &peer.member, burst, 64).await;
            assert!(answers.iter().all(Result::is_ok), "{answers:?}");
            assert_stored(&peer.app, burst, 64);
        }
        assert_eq!(peer.links.load(Ordering::SeqCst), 1, "one link, kept");
        assert_eq!(peer.batches.load(Ordering::SeqCst), 0);
        assert_eq!(peer.singles.load(Ordering::SeqCst), 0);
        assert_eq!(queues(&peers), 1, "a queue with an open link is kept");
    }

    #[tokio::test]
    async fn a_link_idle_for_its_idle_time_is_closed_and_its_queue_forgotten() {
        let peer = serve(Peer::Current).await;
        let peers = Peers::default();
        let answer = peers
            .push(&peer.member, "k", &entry(1, Some("v")), "self,peer")
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        tokio::time::pause();
        let opened = tokio::time::Instant::now();
        while queues(&peers) > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let idle = opened.elapsed();
        assert!(
            idle >= link::IDLE && idle < link::IDLE + Duration::from_secs(1),
            "closed after {idle:?}"
        );
        // The next copy opens a new link.
        tokio::time::resume();
        let answer = peers
            .push(&peer.member, "k", &entry(2, Some("v")), "self,peer")
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(peer.links.load(Ordering::SeqCst), 2);
    }

    /// The peer's side of a link, spoken to by hand: each frame gets the
    /// batch endpoint's status, in order; a frame over the limit ends it.
    #[tokio::test]
    async fn a_link_answers_each_frame_in_order_and_closes_on_an_oversized_one() {
        let peer = serve(Peer::Current).await;
        let mut stream = TcpStream::connect(&*peer.member.addr).await.unwrap();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: peer\r\nConnection: upgrade\r\nUpgrade: {}\r\n\r\n",
            link::PATH,
            link::PROTOCOL
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let frame = |body: &[u8]| [&(body.len() as u32).to_le_bytes()[..], body].concat();
        let mut valid = Vec::new();
        encode_item(&mut valid, "k", &entry(1, Some("v")), "self,peer");
        // Two frames in one write: a damaged batch, then a valid one.
        let frames = [frame(&[1, 2, 3]), frame(&valid)].concat();
        stream.write_all(&frames).await.unwrap();
        assert_eq!(stream.read_u16_le().await.unwrap(), 400);
        assert_eq!(stream.read_u16_le().await.unwrap(), 200);
        assert_eq!(peer.app.state.kv().local("k"), Some(entry(1, Some("v"))));
        let oversized = (MAX_BATCH_BYTES as u32 + 1).to_le_bytes();
        stream.write_all(&oversized).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest))
            .await
            .expect("the peer closes the link");
        assert_eq!(read.unwrap(), 0, "nothing answers an oversized frame");
    }

    #[tokio::test]
    async fn a_peer_without_links_gets_batches_as_requests() {
        let peer = serve(Peer::NoLinks).await;
        let peers = Peers::default();
        let answers = push_all(&peers, &peer.member, "k", 64).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_stored(&peer.app, "k", 64);
        assert_eq!(peer.links.load(Ordering::SeqCst), 1);
        let batches = peer.batches.load(Ordering::SeqCst);
        assert!(
            (1..=IN_FLIGHT).contains(&batches),
            "{batches} batches for 64 copies"
        );
        assert_eq!(peer.singles.load(Ordering::SeqCst), 0);
        assert_eq!(
            queues(&peers),
            0,
            "an idle queue without a link is forgotten"
        );
    }

    #[tokio::test]
    async fn an_older_peer_gets_each_copy_in_a_request_of_its_own() {
        let peer = serve(Peer::Older).await;
        let peers = Peers::default();
        let answers = push_all(&peers, &peer.member, "k", 5).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_stored(&peer.app, "k", 5);
        assert_eq!(peer.singles.load(Ordering::SeqCst), 5);
        assert_eq!(peer.batches.load(Ordering::SeqCst), 1);
        assert_eq!(peer.links.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_a_reset_and_a_closed_port_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let member = peer_at("peer", listener.local_addr().unwrap());
        // A peer dying: it takes connections and closes them unanswered.
        let closer = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                drop(stream);
            }
        });
        let peers = Peers::default();
        let answer = peers
            .push(&member, "k", &entry(1, Some("v")), "self,peer")
            .await;
        assert!(matches!(answer, Err(PeerError::Reset { .. })), "{answer:?}");
        // Dead: nothing listens any more.
        closer.abort();
        let _ = closer.await;
        let answer = peers
            .push(&member, "k", &entry(1, Some("v")), "self,peer")
            .await;
        assert!(
            matches!(answer, Err(PeerError::Unavailable { .. })),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_link_the_peer_closes_is_replaced_by_a_new_one() {
        // Each connection: a link that answers one frame, then closes.
        let (member, accepted) = fake_peer("peer", |mut stream| async move {
            assert!(accept_link(&mut stream).await);
            let body = read_frame(&mut stream).await;
            assert_eq!(decode(&body).unwrap().len(), 1);
            answer_frame(&mut stream, StatusCode::OK).await;
        })
        .await;
        let peers = Peers::default();
        for (i, key) in ["first", "second"].into_iter().enumerate() {
            let answer = peers
                .push(&member, key, &entry(1, Some("v")), "self,peer")
                .await;
            assert!(answer.is_ok(), "{key}: {answer:?}");
            assert_eq!(accepted.load(Ordering::SeqCst), i + 1);
            // The closed link is dropped, and with it the idle queue.
            queue_forgotten(&peers).await;
        }
    }

    #[tokio::test]
    async fn a_refused_link_fails_every_copy_queued_for_it() {
        let peer = serve(Peer::Refusing).await;
        let peers = Peers::default();
        let answers = push_all(&peers, &peer.member, "k", 8).await;
        assert_eq!(answers.len(), 8);
        for answer in answers {
            assert!(
                matches!(answer, Err(PeerError::Unavailable { .. })),
                "{answer:?}"
            );
        }
        assert!(peer.app.state.kv().local("k-0").is_none());
    }

    /// A frozen peer takes the connection and answers nothing: the first
    /// copy's sender waits for the link; a copy queued behind it fails at
    /// its own `CALL_TIMEOUT`, not after the first's and then its own.
    #[tokio::test]
    async fn a_copy_queued_behind_an_unanswered_one_waits_no_longer_than_a_call() {
        let (member, accepted) = fake_peer("peer", |stream| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        })
        .await;
        let peers = Peers::default();
        let first = {
            let (peers, member) = (peers.clone(), member.clone());
            tokio::spawn(async move {
                peers
                    .push(&member, "first", &entry(1, Some("v")), "self,peer")
                    .await
            })
        };
        let connected = async {
            while accepted.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), connected)
            .await
            .expect("the first copy's link connects within 2 s");
        let queued_at = tokio::time::Instant::now();
        let answer = peers
            .push(&member, "queued", &entry(9, Some("v")), "self,peer")
            .await;
        let waited = queued_at.elapsed();
        let Err(PeerError::Failed { why, .. }) = &answer else {
            panic!("{answer:?}");
        };
        assert!(why.contains("within 3000 ms"), "{why}");
        assert!(
            waited < CALL_TIMEOUT + Duration::from_secs(2),
            "waited {waited:?}"
        );
        assert!(first.await.unwrap().is_err());
    }

    /// A peer that stops answering on an open link: its frames fail within
    /// a call, and the link is closed.
    #[tokio::test]
    async fn a_link_whose_peer_stops_answering_fails_its_frames_and_closes() {
        let (member, _) = fake_peer("peer", |mut stream| async move {
            assert!(accept_link(&mut stream).await);
            tokio::time::sleep(Duration::from_secs(60)).await;
        })
        .await;
        let peers = Peers::default();
        let sent_at = tokio::time::Instant::now();
        let answer = peers
            .push(&member, "k", &entry(1, Some("v")), "self,peer")
            .await;
        let Err(PeerError::Failed { why, .. }) = &answer else {
            panic!("{answer:?}");
        };
        assert!(why.contains("no answer within 3000 ms"), "{why}");
        let waited = sent_at.elapsed();
        assert!(
            waited >= CALL_TIMEOUT && waited < CALL_TIMEOUT + Duration::from_secs(2),
            "waited {waited:?}"
        );
        queue_forgotten(&peers).await;
    }

    fn entry(hlc: u64, value: Option<&'static str>) -> Entry {
        Entry {
            version: Version { hlc, node: 1 },
            value: value.map(|v| Bytes::from_static(v.as_bytes())),
        }
    }

    #[test]
    fn a_batch_body_gives_back_its_copies_in_order() {
        let copies = [
            ("a", entry(1, Some("one")), "x,y"),
            ("b", entry(2, None), "y,x"),
            ("c", entry(3, Some("")), "x"),
        ];
        let mut body = Vec::new();
        for (key, entry, owners) in &copies {
            encode_item(&mut body, key, entry, owners);
        }
        let expected: usize = copies.iter().map(|(k, e, o)| item_len(k, e, o)).sum();
        assert_eq!(body.len(), expected);
        let decoded = decode(&body).unwrap();
        let back: Vec<_> = decoded
            .iter()
            .map(|c| (c.key.as_str(), c.entry.clone(), c.owners.as_str()))
            .collect();
        assert_eq!(back, copies);
    }

    #[test]
    fn a_damaged_batch_says_which_item_and_stores_nothing() {
        let mut body = Vec::new();
        encode_item(&mut body, "a", &entry(1, Some("one")), "x");
        let first = body.len();
        encode_item(&mut body, "b", &entry(2, Some("two")), "x");
        let err = decode(&body[..body.len() - 1]).unwrap_err();
        assert_eq!((err.index, err.offset), (1, first), "{err}");
        assert!(err.to_string().contains("item 1"), "{err}");

        let mut removal = Vec::new();
        codec::encode(
            Record::Remove("a", Version { hlc: 1, node: 1 }),
            &mut removal,
        );
        let mut body = Vec::new();
        body.extend_from_slice(&((2 + removal.len()) as u32).to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&removal);
        let err = decode(&body).unwrap_err();
        assert!(err.to_string().contains("removal"), "{err}");
    }
}
