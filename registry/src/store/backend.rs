//! The few primitive operations the typed [`Store`](super::Store) is built
//! on, as etcd defines them: a range read, a transaction (compares, then
//! puts, deletes and gets, or others), and a watch of a prefix from a
//! revision. [`EtcdBackend`](super::etcd::EtcdBackend) forwards them to a real
//! etcd; [`MemoryEtcd`](super::memory::MemoryEtcd) implements the same
//! semantics in memory (revisions, versions, leases, compaction), and the
//! conformance suite (`super::conformance`) holds both to it.
//!
//! These types are etcd's data model, not Shoal's: nothing outside the store
//! builds them. Product code calls the store's typed operations.

use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// One stored key, with etcd's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since its last delete).
    pub create_revision: i64,
    /// Revision of the last put.
    pub mod_revision: i64,
    /// Puts since creation (1 for a new key).
    pub version: i64,
    /// Lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// Which keys a read or delete covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// Exactly this key.
    Key(String),
    /// Every key starting with this prefix.
    Prefix(String),
    /// `[from, to)` in byte order.
    Range { from: String, to: String },
}

impl Span {
    /// Whether `key` is inside the span.
    pub fn contains(&self, key: &str) -> bool {
        match self {
            Span::Key(k) => k == key,
            Span::Prefix(p) => key.starts_with(p.as_str()),
            Span::Range { from, to } => from.as_str() <= key && key < to.as_str(),
        }
    }
}

/// A range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub span: Span,
    /// At most this many keys (0: all).
    pub limit: i64,
    /// Newest key first (by key, descending) instead of ascending.
    pub descending: bool,
    /// Leave values out.
    pub keys_only: bool,
}

impl Range {
    pub fn key(key: impl Into<String>) -> Self {
        Range::over(Span::Key(key.into()))
    }

    pub fn prefix(prefix: impl Into<String>) -> Self {
        Range::over(Span::Prefix(prefix.into()))
    }

    fn over(span: Span) -> Self {
        Range {
            span,
            limit: 0,
            descending: false,
            keys_only: false,
        }
    }
}

/// What a range read found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    /// The store's revision when it was read.
    pub revision: i64,
    pub kvs: Vec<Kv>,
}

/// What a compare in a transaction looks at. A missing key has version,
/// create revision and mod revision 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Version,
    CreateRevision,
    ModRevision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub target: Target,
    pub cmp: Cmp,
    pub value: i64,
}

impl Compare {
    /// The key exists.
    pub fn exists(key: impl Into<String>) -> Self {
        Compare::new(key, Target::Version, Cmp::Greater, 0)
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::new(key, Target::Version, Cmp::Equal, 0)
    }

    /// Nobody wrote the key since `revision` (the mod revision it was read at).
    pub fn unchanged_since(key: impl Into<String>, revision: i64) -> Self {
        Compare::new(key, Target::ModRevision, Cmp::Equal, revision)
    }

    pub fn new(key: impl Into<String>, target: Target, cmp: Cmp, value: i64) -> Self {
        Compare {
            key: key.into(),
            target,
            cmp,
            value,
        }
    }

    /// Whether the condition holds for `kv` (`None`: the key is missing).
    pub fn holds(&self, kv: Option<&Kv>) -> bool {
        let actual = match (self.target, kv) {
            (_, None) => 0,
            (Target::Version, Some(kv)) => kv.version,
            (Target::CreateRevision, Some(kv)) => kv.create_revision,
            (Target::ModRevision, Some(kv)) => kv.mod_revision,
        };
        match self.cmp {
            Cmp::Equal => actual == self.value,
            Cmp::Greater => actual > self.value,
            Cmp::Less => actual < self.value,
            Cmp::NotEqual => actual != self.value,
        }
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put `value` at `key`, on `lease` (0: none). Answers the previous value.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    /// Delete what `span` covers. Answers how many keys went.
    Delete(Span),
    /// Read one key.
    Get(String),
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete(Span::Key(key.into()))
    }
}

/// A transaction: if every compare holds, `then`, else `otherwise`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub when: Vec<Compare>,
    pub then: Vec<Op>,
    pub otherwise: Vec<Op>,
}

impl Txn {
    /// Unconditional operations.
    pub fn ops(ops: Vec<Op>) -> Self {
        Txn {
            then: ops,
            ..Txn::default()
        }
    }
}

/// What one operation of a transaction answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// The value the put replaced, if the key existed.
    Put { prev: Option<Kv> },
    /// How many keys the delete removed.
    Delete { deleted: i64 },
    /// The key read, if it exists.
    Get(Option<Kv>),
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Every compare held, so `then` ran (else `otherwise` did).
    pub succeeded: bool,
    /// One per operation that ran, in order.
    pub results: Vec<OpResult>,
    /// The store's revision after the transaction.
    pub revision: i64,
}

impl TxnOutcome {
    /// The first key a `Get` of the transaction found.
    pub fn first_get(&self) -> Option<&Kv> {
        self.results.iter().find_map(|r| match r {
            OpResult::Get(kv) => kv.as_ref(),
            _ => None,
        })
    }
}

/// A change seen by a watch. A delete carries the key and the revision of
/// the delete (its value is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Kv),
    Delete { key: String, revision: i64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// What a watch stream delivers. After `Compacted`, `Canceled` or `Broken`
/// the stream is over and the watcher lists again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order.
    Events(Vec<WatchEvent>),
    /// Nothing changed under the prefix up to this revision.
    Progress(i64),
    /// The start revision has been compacted away (up to this revision).
    Compacted(i64),
    /// The server canceled the watch, for this reason.
    Canceled(String),
    /// The connection failed or went quiet.
    Broken(String),
}

/// Why a primitive operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// etcd refused the request itself (e.g. a transaction naming one key
    /// twice); retrying cannot help.
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// The etcd user may not do this (or is not signed in): nothing was
    /// done, and retrying cannot help until its roles change.
    #[error("etcd denied the request: {0}")]
    Denied(String),
    /// etcd could not be reached, failed, or did not answer in time. A write
    /// may or may not have been made.
    #[error("{0}")]
    Unavailable(String),
}

/// The primitive operations. Object-safe, so a [`Store`](super::Store) holds
/// any backend behind one `Arc`; none of this is on a request path.
pub trait Backend: Send + Sync + 'static {
    fn range(&self, range: Range) -> BoxFuture<'_, Result<Listing, BackendError>>;

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, BackendError>>;

    /// Watch every key under `prefix` from `start` (inclusive). A start
    /// revision that was compacted yields `Compacted` and ends the stream.
    fn watch(
        &self,
        prefix: String,
        start: i64,
    ) -> BoxFuture<'_, Result<BoxStream<'static, WatchMessage>, BackendError>>;
}
