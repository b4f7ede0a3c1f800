//! Copies pushed to one peer, gathered into batches.
//!
//! A write with R ≥ 2 sends its new entry to the other owners before it
//! answers. One HTTP request per copy made the replica's request handling,
//! and the primary's client, cost as much as the writes themselves. Now
//! [`Peers::push`](super::peers::Peers::push) queues the copy for its peer
//! and waits for that peer's answer:
//!
//! - at most [`IN_FLIGHT`] batches per peer are on their way at once; a copy
//!   queued while they are goes in the next batch, with every other copy
//!   queued meanwhile (up to [`MAX_BATCH_BYTES`]). A lone write leaves at
//!   once: nothing waits for a batch to fill.
//! - the peer stores every copy, flushes once (`--durability fsync`), and
//!   answers once for the whole batch ([`PATH`]). Its answer is every copy's
//!   answer: a failure fails them all, and each is then indeterminate, as a
//!   failed push always was.
//! - no copy waits longer than [`CALL_TIMEOUT`] for its answer, queued
//!   or sent: the bound a call to a peer always had.
//! - a peer that does not know [`PATH`] (404 or 405: an older version,
//!   during a rolling upgrade) gets the copies one request each, as before,
//!   for as long as its queue lives.
//!
//! Wire format of a batch (`POST /_shoal/kv-batch`, body
//! `application/octet-stream`): items `len: u32 LE` followed by `len` bytes:
//! `owners_len: u16 LE`, the owner ids as in `x-shoal-kv-owners`, then the
//! copy in [`codec`]'s form (a value or a tombstone; never a removal).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::codec::{self, Record};
use super::membership::Member;
use super::peers::{CALL_TIMEOUT, PeerError, Peers};
use super::store::Entry;

/// The receiving endpoint.
pub const PATH: &str = "/_shoal/kv-batch";
/// Batches on their way to one peer at once.
pub const IN_FLIGHT: usize = 2;
/// A batch is closed before it grows past this (one copy, at most a 1 MiB
/// value, always fits); the receiver refuses bigger bodies.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// One peer's answer, given to every copy of a batch.
type Answer = Result<(), PeerError>;

/// The batch queues, one per peer (by instance id).
#[derive(Debug, Default)]
pub struct Batches {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
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
    /// The peer answered 404 or 405 to [`PATH`]: send copies one by one.
    one_by_one: bool,
}

#[derive(Debug, Default)]
struct Pending {
    body: Vec<u8>,
    replies: Vec<oneshot::Sender<Answer>>,
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

    /// Drop `queue` from the map if it is still the peer's and has nothing
    /// to do (a departed peer leaves no queue behind).
    fn forget_if_idle(&self, peer: &Member, queue: &Arc<Queue>) {
        let mut queues = self.queues.lock().expect("batch queues poisoned");
        if let Some(current) = queues.get(&peer.id)
            && Arc::ptr_eq(current, queue)
        {
            let state = queue.lock();
            if state.senders == 0 && state.waiting.is_empty() {
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
            .is_some_and(|last| last.body.len() + item_len <= MAX_BATCH_BYTES);
        if !fits {
            state.waiting.push_back(Pending::default());
        }
        let last = state.waiting.back_mut().expect("a batch was just made");
        encode_item(&mut last.body, key, entry, owners);
        last.replies.push(reply);
        let start = state.senders < IN_FLIGHT;
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
            id: peer.id.clone(),
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
        let (pending, one_by_one) = {
            let mut state = queue.lock();
            match state.waiting.pop_front() {
                Some(pending) => (pending, state.one_by_one),
                None => {
                    state.senders -= 1;
                    break;
                }
            }
        };
        let body = Bytes::from(pending.body);
        let answer = if one_by_one {
            push_each(&peers, &peer, &body).await
        } else {
            match peers.send_batch(&peer, body.clone()).await {
                Err(BatchRefused::NotUnderstood) => {
                    queue.lock().one_by_one = true;
                    push_each(&peers, &peer, &body).await
                }
                Err(BatchRefused::Peer(e)) => Err(e),
                Ok(()) => Ok(()),
            }
        };
        for reply in pending.replies {
            // The writer may have gone (its client left): nothing to tell.
            let _ = reply.send(answer.clone());
        }
    }
    peers.batches().forget_if_idle(&peer, &queue);
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
        id: peer.id.clone(),
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
    use std::time::{Duration, SystemTime};

    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use futures::future::join_all;

    use super::*;
    use crate::kv::version::Version;
    use crate::routes::testing::TestApp;

    /// How the peer under test treats the batch endpoint.
    #[derive(Clone, Copy, PartialEq)]
    enum Peer {
        /// This version: takes batches.
        Current,
        /// An older version: no batch endpoint (404), copies one by one.
        Older,
        /// Takes nothing: 503 to every batch.
        Refusing,
    }

    struct Served {
        app: TestApp,
        member: Member,
        batches: Arc<AtomicUsize>,
        singles: Arc<AtomicUsize>,
    }

    /// The real app's router on a real socket, counting the internal calls.
    async fn serve(kind: Peer) -> Served {
        let app = TestApp::new();
        let batches = Arc::new(AtomicUsize::new(0));
        let singles = Arc::new(AtomicUsize::new(0));
        let (b, s) = (batches.clone(), singles.clone());
        let router =
            app.router
                .clone()
                .layer(middleware::from_fn(move |request: Request, next: Next| {
                    let (batches, singles) = (b.clone(), s.clone());
                    async move {
                        let path = request.uri().path().to_owned();
                        if path == PATH {
                            batches.fetch_add(1, Ordering::SeqCst);
                            match kind {
                                Peer::Current => {}
                                Peer::Older => return StatusCode::NOT_FOUND.into_response(),
                                Peer::Refusing => {
                                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                                }
                            }
                        } else if path.starts_with("/_shoal/kv/") {
                            singles.fetch_add(1, Ordering::SeqCst);
                        }
                        let response: Response = next.run(request).await;
                        response
                    }
                }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Served {
            app,
            member: peer_at(addr),
            batches,
            singles,
        }
    }

    /// The peer `peer` listening at `addr`.
    fn peer_at(addr: std::net::SocketAddr) -> Member {
        Member {
            id: "peer".into(),
            addr: addr.to_string(),
            weight: 1,
            started: SystemTime::UNIX_EPOCH,
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

    #[tokio::test]
    async fn copies_pushed_together_leave_in_one_batch_and_are_all_stored() {
        let peer = serve(Peer::Current).await;
        let peers = Peers::default();
        let answers = push_all(&peers, &peer.member, "k", 64).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        for i in 0..64 {
            let stored = peer.app.state.kv().local(&format!("k-{i}"));
            assert_eq!(stored, Some(entry(i + 1, Some("v"))), "k-{i}");
        }
        let batches = peer.batches.load(Ordering::SeqCst);
        assert!(
            (1..=IN_FLIGHT).contains(&batches),
            "{batches} batches for 64 copies"
        );
        assert_eq!(peer.singles.load(Ordering::SeqCst), 0);
        assert!(
            peers.batches().queues.lock().unwrap().is_empty(),
            "an idle queue is forgotten"
        );
    }

    #[tokio::test]
    async fn an_older_peer_gets_each_copy_in_a_request_of_its_own() {
        let peer = serve(Peer::Older).await;
        let peers = Peers::default();
        let answers = push_all(&peers, &peer.member, "k", 5).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        for i in 0..5 {
            assert!(
                peer.app.state.kv().local(&format!("k-{i}")).is_some(),
                "k-{i}"
            );
        }
        assert_eq!(peer.singles.load(Ordering::SeqCst), 5);
        assert_eq!(peer.batches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_a_reset_and_a_closed_port_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let member = peer_at(listener.local_addr().unwrap());
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
    async fn a_refused_batch_fails_every_copy_in_it() {
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

    /// A frozen peer holds the first batches unanswered; a copy queued
    /// behind them fails at its own `CALL_TIMEOUT`, not after theirs and
    /// then its own (twice as long).
    #[tokio::test]
    async fn a_copy_queued_behind_unanswered_batches_waits_no_longer_than_a_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let member = peer_at(listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        // Frozen: takes connections, reads nothing, answers nothing.
        let frozen = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        let peers = Peers::default();
        // One at a time, so that each leaves in a batch of its own.
        let mut sent = Vec::new();
        for i in 0..IN_FLIGHT {
            let (peers, member) = (peers.clone(), member.clone());
            sent.push(tokio::spawn(async move {
                let key = format!("sent-{i}");
                peers
                    .push(&member, &key, &entry(1, Some("v")), "self,peer")
                    .await
            }));
            let on_its_way = async {
                while accepted.load(Ordering::SeqCst) <= i {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(2), on_its_way)
                .await
                .unwrap_or_else(|_| panic!("batch {i} not sent within 2 s"));
        }
        let queued_at = tokio::time::Instant::now();
        let answer = peers
            .push(&member, "queued", &entry(9, Some("v")), "self,peer")
            .await;
        let waited = queued_at.elapsed();
        let Err(PeerError::Failed { why, .. }) = &answer else {
            panic!("{answer:?}");
        };
        assert!(why.contains("no answer within 3000 ms"), "{why}");
        assert!(
            waited >= CALL_TIMEOUT && waited < CALL_TIMEOUT + Duration::from_secs(2),
            "waited {waited:?}"
        );
        for push in sent {
            assert!(push.await.unwrap().is_err());
        }
        frozen.abort();
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
