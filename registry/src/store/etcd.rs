//! The store's primitives on a real etcd, through `etcd-client`.
//!
//! The watch is where etcd needs care: a quiet watch asks etcd for progress
//! every [`PROGRESS_EVERY`], and one that hears nothing at all for
//! [`PROGRESS_TIMEOUT`] (a frozen etcd, a cut-off host whose TCP connection
//! still looks open) is reported `Broken`, so the watcher lists again
//! instead of waiting forever on a dead stream. A watch's `created`
//! response is skipped: its header is the store's revision, not how far
//! this watch has got.

use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, SortOrder, SortTarget, Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchOptions,
    WatchResponseStream,
};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};

use super::backend::{
    Backend, BackendError, Cmp, Compare, Kv, Listing, Op, OpResult, Range, Span, Target, Txn,
    TxnOutcome, WatchEvent, WatchMessage,
};
use crate::cli::etcd::describe;

/// A watch that has heard nothing for this long asks etcd for progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A watch that has heard nothing, not even progress, for this long is broken.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(4);

/// A real etcd. Clones of the client share one connection.
#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
}

impl EtcdBackend {
    pub fn new(client: Client) -> Self {
        EtcdBackend { client }
    }
}

/// gRPC codes that mean "this request is wrong" (INVALID_ARGUMENT, e.g. a
/// transaction naming a key twice; FAILED_PRECONDITION): etcd-client does
/// not re-export tonic's `Code`, so they are compared by number.
const REFUSED_CODES: [i32; 2] = [3, 9];
/// PERMISSION_DENIED and UNAUTHENTICATED: the user may not do this (or its
/// token is not valid). Retrying cannot help until the operator changes the
/// user's roles; a write refused this way was not made.
const DENIED_CODES: [i32; 2] = [7, 16];

fn classify(e: etcd_client::Error) -> BackendError {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        let code = status.code() as i32;
        if REFUSED_CODES.contains(&code) {
            return BackendError::Refused(status.message().to_owned());
        }
        if DENIED_CODES.contains(&code) {
            return BackendError::Denied(format!(
                "{}: the etcd user given with --etcd-user needs a role that grants this key range (etcdctl role grant-permission)",
                status.message()
            ));
        }
    }
    BackendError::Unavailable(describe(&e))
}

fn kv(kv: &KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn get_options(span: &Span) -> (String, GetOptions) {
    match span {
        Span::Key(key) => (key.clone(), GetOptions::new()),
        Span::Prefix(prefix) => (prefix.clone(), GetOptions::new().with_prefix()),
        Span::Range { from, to } => (from.clone(), GetOptions::new().with_range(to.as_str())),
    }
}

fn delete_options(span: &Span) -> (String, Option<DeleteOptions>) {
    match span {
        Span::Key(key) => (key.clone(), None),
        Span::Prefix(prefix) => (prefix.clone(), Some(DeleteOptions::new().with_prefix())),
        Span::Range { from, to } => (
            from.clone(),
            Some(DeleteOptions::new().with_range(to.as_str())),
        ),
    }
}

fn compare(c: &Compare) -> EtcdCompare {
    let cmp = match c.cmp {
        Cmp::Equal => CompareOp::Equal,
        Cmp::Greater => CompareOp::Greater,
        Cmp::Less => CompareOp::Less,
        Cmp::NotEqual => CompareOp::NotEqual,
    };
    let key = c.key.as_str();
    match c.target {
        Target::Version => EtcdCompare::version(key, cmp, c.value),
        Target::CreateRevision => EtcdCompare::create_revision(key, cmp, c.value),
        Target::ModRevision => EtcdCompare::mod_revision(key, cmp, c.value),
    }
}

fn op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let mut options = PutOptions::new().with_prev_key();
            if *lease != 0 {
                options = options.with_lease(*lease);
            }
            TxnOp::put(key.as_str(), value.clone(), Some(options))
        }
        Op::Delete(span) => {
            let (key, options) = delete_options(span);
            TxnOp::delete(key, options)
        }
        Op::Get(key) => TxnOp::get(key.as_str(), None),
    }
}

fn op_result(response: TxnOpResponse) -> OpResult {
    match response {
        TxnOpResponse::Put(put) => OpResult::Put {
            prev: put.prev_key().map(kv),
        },
        TxnOpResponse::Delete(delete) => OpResult::Delete {
            deleted: delete.deleted(),
        },
        TxnOpResponse::Get(get) => OpResult::Get(get.kvs().first().map(kv)),
        TxnOpResponse::Txn(_) => unreachable!("the store never nests transactions"),
    }
}

impl Backend for EtcdBackend {
    fn range(&self, range: Range) -> BoxFuture<'_, Result<Listing, BackendError>> {
        Box::pin(async move {
            let (key, mut options) = get_options(&range.span);
            if range.limit > 0 {
                options = options.with_limit(range.limit);
            }
            if range.descending {
                options = options.with_sort(SortTarget::Key, SortOrder::Descend);
            }
            if range.keys_only {
                options = options.with_keys_only();
            }
            let mut client = self.client.clone();
            let response = client.get(key, Some(options)).await.map_err(classify)?;
            Ok(Listing {
                revision: response.header().map_or(0, |h| h.revision()),
                kvs: response.kvs().iter().map(kv).collect(),
            })
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, BackendError>> {
        Box::pin(async move {
            let request = EtcdTxn::new()
                .when(txn.when.iter().map(compare).collect::<Vec<_>>())
                .and_then(txn.then.iter().map(op).collect::<Vec<_>>())
                .or_else(txn.otherwise.iter().map(op).collect::<Vec<_>>());
            let mut client = self.client.clone();
            let response = client.txn(request).await.map_err(classify)?;
            Ok(TxnOutcome {
                succeeded: response.succeeded(),
                revision: response.header().map_or(0, |h| h.revision()),
                results: response.op_responses().into_iter().map(op_result).collect(),
            })
        })
    }

    fn watch(
        &self,
        prefix: String,
        start: i64,
    ) -> BoxFuture<'_, Result<BoxStream<'static, WatchMessage>, BackendError>> {
        Box::pin(async move {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(start.max(1));
            let mut client = self.client.clone();
            let stream = client
                .watch(prefix.as_str(), Some(options))
                .await
                .map_err(classify)?;
            let (requests, responses) = stream.split();
            let mut ticker = tokio::time::interval(PROGRESS_EVERY);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let state = WatchState {
                requests,
                responses,
                ticker,
                last_heard: Instant::now(),
                ended: false,
            };
            Ok(stream::unfold(state, WatchState::next).boxed())
        })
    }
}

/// One etcd watch stream, with its progress requests and quiet-timeout.
struct WatchState {
    requests: etcd_client::WatchRequestSender,
    responses: WatchResponseStream,
    ticker: tokio::time::Interval,
    last_heard: Instant,
    ended: bool,
}

impl WatchState {
    async fn next(mut self) -> Option<(WatchMessage, Self)> {
        if self.ended {
            return None;
        }
        let message = self.receive().await;
        self.ended = matches!(
            message,
            WatchMessage::Compacted(_) | WatchMessage::Canceled(_) | WatchMessage::Broken(_)
        );
        Some((message, self))
    }

    async fn receive(&mut self) -> WatchMessage {
        loop {
            let received = tokio::select! {
                received = self.responses.message() => received,
                _ = self.ticker.tick() => {
                    let quiet = self.last_heard.elapsed();
                    if quiet >= PROGRESS_TIMEOUT {
                        return WatchMessage::Broken(format!("etcd answered nothing for {} ms", quiet.as_millis()));
                    }
                    if quiet >= PROGRESS_EVERY
                        && let Err(e) = self.requests.request_progress().await {
                            return WatchMessage::Broken(format!("cannot ask for progress: {e}"));
                        }
                    continue;
                }
            };
            self.last_heard = Instant::now();
            let message = match received {
                Ok(Some(m)) => m,
                Ok(None) => return WatchMessage::Broken("stream ended".into()),
                Err(e) => return WatchMessage::Broken(describe(&e)),
            };
            if message.compact_revision() > 0 {
                return WatchMessage::Compacted(message.compact_revision());
            }
            if message.canceled() {
                return WatchMessage::Canceled(message.cancel_reason().to_owned());
            }
            if message.created() {
                continue;
            }
            if message.events().is_empty() {
                let revision = message.header().map_or(0, |h| h.revision());
                return WatchMessage::Progress(revision);
            }
            let events = message
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(match event.event_type() {
                        EventType::Put => WatchEvent::Put(self::kv(kv)),
                        EventType::Delete => WatchEvent::Delete {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            revision: kv.mod_revision(),
                        },
                    })
                })
                .collect();
            return WatchMessage::Events(events);
        }
    }
}
