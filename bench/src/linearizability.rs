//! Per-key linearizability of the key-value store, checked on recorded
//! histories.
//!
//! A history is what clients saw of one key: each operation's invocation and
//! completion times and its outcome. [`check`] splits a recording by key (a
//! store is linearizable when each key is: the P-compositionality that
//! Porcupine exploits) and runs `todc_utils`'s Wing–Gong–Lowe checker (the
//! algorithm Porcupine implements, with the memoisation of Horn and
//! Kroening) on each, against [`KvRegister`]: one value or none, with `GET`,
//! `PUT`, `DELETE` and compare-and-set (`If-Match`).
//!
//! An operation without an answer (transport error, timeout, 5xx) is
//! *indeterminate*: it may have taken effect at any point after its
//! invocation, or never. As in Jepsen, its completion is placed after every
//! other event, so the checker may linearize it anywhere from its invocation
//! on, including last, where it changes nothing anyone read. A read without
//! an answer is left out (it changes nothing).
//!
//! Compare-and-set names a version (`ETag`); the model names the value read
//! with that version instead. Every write carries a value never written
//! before, so a value identifies the version it was written with.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use todc_utils::linearizability::WGLChecker;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::specifications::Specification;

/// What one operation did, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// `GET` answered 200 with `Some(value)` or 404 with `None`.
    Get(Option<String>),
    /// `PUT` of a value never written before.
    Put(String),
    /// `DELETE`: `Some(true)` answered 204 (it existed), `Some(false)` 404
    /// (it did not), `None` no answer.
    Delete(Option<bool>),
    /// `PUT` with `If-Match` naming the version that `expected` was read
    /// with: `Some(true)` applied, `Some(false)` refused (409), `None` no
    /// answer.
    Cas {
        expected: String,
        new: String,
        applied: Option<bool>,
    },
}

/// The sequential specification: a register holding one value or none.
pub struct KvRegister;

impl Specification for KvRegister {
    type State = Option<String>;
    type Operation = KvOp;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &KvOp, state: &Self::State) -> (bool, Self::State) {
        match op {
            KvOp::Get(seen) => (seen == state, state.clone()),
            KvOp::Put(value) => (true, Some(value.clone())),
            KvOp::Delete(Some(existed)) => (*existed == state.is_some(), None),
            KvOp::Delete(None) => (true, None),
            KvOp::Cas {
                expected,
                new,
                applied,
            } => {
                let matches = state.as_deref() == Some(expected.as_str());
                match applied {
                    Some(true) => (
                        matches,
                        if matches {
                            Some(new.clone())
                        } else {
                            state.clone()
                        },
                    ),
                    Some(false) => (!matches, state.clone()),
                    // Applied if it could be; linearized last, it was not.
                    None if matches => (true, Some(new.clone())),
                    None => (true, state.clone()),
                }
            }
        }
    }
}

/// One operation of a recording.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub key: String,
    /// Who ran it: operations of one process never overlap. A client that
    /// saw no answer goes on as a new process (the old one's operation
    /// never ends).
    pub process: usize,
    /// Invocation, since the recording started.
    pub called: Duration,
    /// Completion; `None`: indeterminate.
    pub returned: Option<Duration>,
    pub op: KvOp,
}

/// The verdict on a recording.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Keys checked (one history each).
    pub histories: usize,
    pub operations: usize,
    /// Operations without an answer (indeterminate).
    pub indeterminate: usize,
    /// Keys whose history is not linearizable.
    pub violations: Vec<String>,
    /// Keys the checker did not decide within its time.
    pub undecided: Vec<String>,
}

impl Verdict {
    /// `linearizable: N histories (M operations, I indeterminate), V violations`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "linearizable: {} histories ({} operations, {} indeterminate), {} violations",
            self.histories,
            self.operations,
            self.indeterminate,
            self.violations.len()
        );
        if !self.violations.is_empty() {
            line.push_str(&format!(" (keys {})", self.violations.join(", ")));
        }
        if !self.undecided.is_empty() {
            line.push_str(&format!(
                ", {} undecided (keys {})",
                self.undecided.len(),
                self.undecided.join(", ")
            ));
        }
        line
    }

    /// True when every history was decided and none is a violation.
    pub fn linearizable(&self) -> bool {
        self.violations.is_empty() && self.undecided.is_empty() && self.histories > 0
    }
}

/// Check every key of `recording`, each within `budget` (the search is
/// exponential in the worst case; a key not decided in time is reported
/// undecided, never as linearizable).
pub async fn check(recording: Vec<Recorded>, budget: Duration) -> Verdict {
    let mut by_key: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    for op in recording {
        by_key.entry(op.key.clone()).or_default().push(op);
    }
    let mut verdict = Verdict::default();
    for (key, ops) in by_key {
        verdict.histories += 1;
        verdict.operations += ops.len();
        verdict.indeterminate += ops.iter().filter(|o| o.returned.is_none()).count();
        let history = history_of(ops);
        // A thread of its own, not the blocking pool: a search that runs
        // past its budget is left behind (the runtime would wait for it).
        let (decided, verdict_of) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = decided.send(WGLChecker::<KvRegister>::is_linearizable(history));
        });
        match tokio::time::timeout(budget, verdict_of).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => verdict.violations.push(key),
            Ok(Err(_)) | Err(_) => verdict.undecided.push(key),
        }
    }
    verdict
}

/// One key's operations as the checker's history: calls and returns in time
/// order (a call before a return at the same instant, so that touching
/// operations count as concurrent), indeterminate returns after everything,
/// process numbers made dense.
fn history_of(ops: Vec<Recorded>) -> History<KvOp> {
    let mut dense: HashMap<usize, usize> = HashMap::new();
    let mut events: Vec<(Duration, u8, usize, Action<KvOp>)> = Vec::with_capacity(ops.len() * 2);
    for op in ops {
        let next = dense.len();
        let process = *dense.entry(op.process).or_insert(next);
        let returned = op.returned.unwrap_or(Duration::MAX);
        events.push((op.called, 0, process, Action::Call(op.op.clone())));
        events.push((returned, 1, process, Action::Response(op.op)));
    }
    events.sort_by_key(|(at, kind, process, _)| (*at, *kind, *process));
    History::from_actions(
        events
            .into_iter()
            .map(|(_, _, process, action)| (process, action))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: usize, called: u64, returned: Option<u64>, op: KvOp) -> Recorded {
        Recorded {
            key: "k".into(),
            process,
            called: Duration::from_millis(called),
            returned: returned.map(Duration::from_millis),
            op,
        }
    }

    fn get(v: Option<&str>) -> KvOp {
        KvOp::Get(v.map(str::to_owned))
    }

    fn put(v: &str) -> KvOp {
        KvOp::Put(v.into())
    }

    fn cas(expected: &str, new: &str, applied: Option<bool>) -> KvOp {
        KvOp::Cas {
            expected: expected.into(),
            new: new.into(),
            applied,
        }
    }

    async fn linearizable(ops: Vec<Recorded>) -> bool {
        let verdict = check(ops, Duration::from_secs(10)).await;
        assert!(verdict.undecided.is_empty());
        verdict.linearizable()
    }

    #[tokio::test]
    async fn a_read_after_an_acknowledged_write_must_see_it() {
        let stale = vec![
            op(0, 0, Some(10), put("a")),
            op(0, 20, Some(30), put("b")),
            op(1, 40, Some(50), get(Some("a"))),
        ];
        assert!(!linearizable(stale).await);
        let overlapping = vec![
            op(0, 0, Some(10), put("a")),
            op(0, 20, Some(60), put("b")),
            op(1, 40, Some(50), get(Some("a"))),
        ];
        assert!(linearizable(overlapping).await);
    }

    #[tokio::test]
    async fn two_readers_may_not_see_a_concurrent_write_in_opposite_orders() {
        let ops = vec![
            op(0, 0, Some(100), put("b")),
            op(1, 10, Some(20), get(Some("b"))),
            op(2, 30, Some(40), get(None)),
        ];
        assert!(!linearizable(ops).await);
    }

    #[tokio::test]
    async fn an_indeterminate_write_may_take_effect_late_or_never() {
        let late = vec![
            op(0, 0, None, put("a")),
            op(1, 50, Some(60), get(None)),
            op(1, 70, Some(80), get(Some("a"))),
        ];
        assert!(linearizable(late).await);
        let never = vec![op(0, 0, None, put("a")), op(1, 50, Some(60), get(None))];
        assert!(linearizable(never).await);
        // But not twice: once seen and then overwritten, it cannot come back.
        let back = vec![
            op(0, 0, None, put("a")),
            op(1, 50, Some(60), get(Some("a"))),
            op(1, 70, Some(80), put("b")),
            op(1, 90, Some(95), get(Some("a"))),
        ];
        assert!(!linearizable(back).await);
    }

    #[tokio::test]
    async fn compare_and_set_applies_only_to_the_value_it_names() {
        let lost_update = vec![
            op(0, 0, Some(10), put("a")),
            op(1, 20, Some(30), cas("a", "b", Some(true))),
            op(2, 40, Some(50), cas("a", "c", Some(true))),
        ];
        assert!(!linearizable(lost_update).await);
        let refused = vec![
            op(0, 0, Some(10), put("a")),
            op(1, 20, Some(30), cas("a", "b", Some(true))),
            op(2, 40, Some(50), cas("a", "c", Some(false))),
            op(2, 60, Some(70), get(Some("b"))),
        ];
        assert!(linearizable(refused).await);
        let wrongly_refused = vec![
            op(0, 0, Some(10), put("a")),
            op(2, 40, Some(50), cas("a", "c", Some(false))),
        ];
        assert!(!linearizable(wrongly_refused).await);
    }

    #[tokio::test]
    async fn a_delete_says_whether_the_key_existed() {
        let ops = vec![
            op(0, 0, Some(10), put("a")),
            op(0, 20, Some(30), KvOp::Delete(Some(true))),
            op(1, 40, Some(50), KvOp::Delete(Some(true))),
        ];
        assert!(!linearizable(ops).await);
    }

    #[tokio::test]
    async fn keys_are_checked_apart() {
        let mut ops = vec![op(0, 0, Some(10), put("a"))];
        let mut other = op(1, 20, Some(30), get(None));
        other.key = "other".into();
        ops.push(other);
        let verdict = check(ops, Duration::from_secs(10)).await;
        assert_eq!(verdict.histories, 2);
        assert!(verdict.linearizable(), "{}", verdict.summary());
    }
}
