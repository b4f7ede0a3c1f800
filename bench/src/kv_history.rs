//! Clients that share a few hot keys through the gateway's `/kv/` route and
//! record every operation for the linearizability check
//! ([`crate::linearizability`]).
//!
//! Unlike [`crate::kv_load`]'s clients, which own their keys, these contend:
//! each picks one of `keys` keys at random and reads it, writes a value
//! never written before, deletes it, or compares-and-sets it against the
//! version it last saw (`If-Match` with the `ETag` of its last read or
//! acknowledged write of that key). Every operation is recorded with its
//! invocation and completion times; one without an answer is recorded as
//! indeterminate and the client goes on as a new process. An answer that
//! says nothing was done (503 with `x-shoal-kv-refused`: the instance
//! refused to coordinate) is left out, like a read without an answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MATCH};
use tokio::sync::Mutex;

use crate::linearizability::{KvOp, Recorded};

/// Set by an app server on an answer that did nothing (see [`refused`]).
const REFUSED_HEADER: &str = "x-shoal-kv-refused";

/// Recording clients on shared keys; see the module doc.
pub struct HotKeyClients {
    recording: Arc<Mutex<Vec<Recorded>>>,
    running: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What every client shares.
struct Shared {
    http: reqwest::Client,
    /// `http://gateway/kv/`
    base: String,
    keys: usize,
    recording: Arc<Mutex<Vec<Recorded>>>,
    running: Arc<AtomicBool>,
    /// The next process number (a client takes a new one after an
    /// indeterminate operation).
    processes: AtomicUsize,
    started: Instant,
}

impl HotKeyClients {
    /// Start `clients` clients on `keys` shared keys (`hot-0`…) at `base`
    /// (`http://gateway/kv/`).
    pub fn start(http: &reqwest::Client, base: &str, clients: usize, keys: usize) -> HotKeyClients {
        let recording = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Shared {
            http: http.clone(),
            base: base.to_owned(),
            keys,
            recording: recording.clone(),
            running: running.clone(),
            processes: AtomicUsize::new(0),
            started: Instant::now(),
        });
        let clients = (0..clients)
            .map(|c| {
                let shared = shared.clone();
                tokio::spawn(async move { client_loop(c, &shared).await })
            })
            .collect();
        HotKeyClients {
            recording,
            running,
            clients,
        }
    }

    /// Stop every client after its current operation; the recording.
    pub async fn stop(&mut self) -> anyhow::Result<Vec<Recorded>> {
        self.running.store(false, Ordering::Release);
        for c in self.clients.drain(..) {
            c.await?;
        }
        Ok(std::mem::take(&mut *self.recording.lock().await))
    }
}

/// What a client last saw of a key: the value and the `ETag` it came with.
type Seen = HashMap<String, (String, String)>;

async fn client_loop(c: usize, shared: &Shared) {
    let mut process = shared.processes.fetch_add(1, Ordering::Relaxed);
    let mut seen: Seen = HashMap::new();
    let mut n = 0u64;
    while shared.running.load(Ordering::Acquire) {
        n += 1;
        let (k, roll) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..shared.keys),
                rng.random_range(0..100u32),
            )
        };
        let key = format!("hot-{k}");
        let url = format!("{}{key}", shared.base);
        let value = format!("{key}-c{c}-v{n}");
        let called = shared.started.elapsed();
        let (op, answered) = if roll < 40 {
            get(shared, &url, &key, &mut seen).await
        } else if roll < 70 {
            put(shared, &url, &key, &value, None, &mut seen).await
        } else if roll < 75 {
            delete(shared, &url, &key, &mut seen).await
        } else if let Some((expected, etag)) = seen.get(&key).cloned() {
            put(
                shared,
                &url,
                &key,
                &value,
                Some((expected, etag)),
                &mut seen,
            )
            .await
        } else {
            get(shared, &url, &key, &mut seen).await
        };
        let Some(op) = op else { continue };
        let returned = answered.then(|| shared.started.elapsed());
        shared.recording.lock().await.push(Recorded {
            key,
            process,
            called,
            returned,
            op,
        });
        if !answered {
            process = shared.processes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A read; `None` when it got no usable answer (left out: it changed
/// nothing).
async fn get(shared: &Shared, url: &str, key: &str, seen: &mut Seen) -> (Option<KvOp>, bool) {
    let Ok(r) = shared.http.get(url).send().await else {
        return (None, false);
    };
    match r.status() {
        StatusCode::OK => {
            let etag = etag_of(&r);
            let Ok(body) = r.text().await else {
                return (None, false);
            };
            if let Some(etag) = etag {
                seen.insert(key.to_owned(), (body.clone(), etag));
            }
            (Some(KvOp::Get(Some(body))), true)
        }
        StatusCode::NOT_FOUND => {
            seen.remove(key);
            (Some(KvOp::Get(None)), true)
        }
        _ => (None, false),
    }
}

/// A write, or a compare-and-set when `expected` (value and its `ETag`) is
/// given; answered means a definite outcome.
async fn put(
    shared: &Shared,
    url: &str,
    key: &str,
    value: &str,
    expected: Option<(String, String)>,
    seen: &mut Seen,
) -> (Option<KvOp>, bool) {
    let mut request = shared.http.put(url).body(value.to_owned());
    if let Some((_, etag)) = &expected {
        request = request.header(IF_MATCH, etag);
    }
    let answer = request.send().await;
    if refused(&answer) {
        return (None, true);
    }
    let outcome = match &answer {
        Ok(r) if r.status().is_success() => {
            if let Some(etag) = etag_of(r) {
                seen.insert(key.to_owned(), (value.to_owned(), etag));
            }
            Some(true)
        }
        Ok(r) if r.status() == StatusCode::CONFLICT && expected.is_some() => {
            seen.remove(key);
            Some(false)
        }
        _ => None,
    };
    let op = match expected {
        Some((expected, _)) => KvOp::Cas {
            expected,
            new: value.to_owned(),
            applied: outcome,
        },
        None => KvOp::Put(value.to_owned()),
    };
    (Some(op), outcome.is_some())
}

async fn delete(shared: &Shared, url: &str, key: &str, seen: &mut Seen) -> (Option<KvOp>, bool) {
    seen.remove(key);
    let answer = shared.http.delete(url).send().await;
    if refused(&answer) {
        return (None, true);
    }
    let existed = match answer {
        Ok(r) if r.status().is_success() => Some(true),
        Ok(r) if r.status() == StatusCode::NOT_FOUND => Some(false),
        _ => None,
    };
    (Some(KvOp::Delete(existed)), existed.is_some())
}

/// 503 with `Retry-After` and nothing done: the instance refused to
/// coordinate (`x-shoal-kv-refused` says why: `lease_lost`,
/// `view_unconfirmed`, `view_changed`, `not_ready`).
fn refused(answer: &Result<reqwest::Response, reqwest::Error>) -> bool {
    answer.as_ref().is_ok_and(|r| {
        r.status() == StatusCode::SERVICE_UNAVAILABLE && r.headers().contains_key(REFUSED_HEADER)
    })
}

fn etag_of(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
