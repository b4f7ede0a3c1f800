//! Key-value clients for the checker and the fault suite: each writes
//! unique values to keys of its own (and now and then deletes one) and
//! reads them back through the gateway's `/kv/` route, remembering every
//! acknowledged write; [`KvClients::verify`] reads every key once more at
//! the end.
//!
//! A write that failed (any answer but 2xx, or no answer) may or may not have
//! been kept, so until the next acknowledged write a key may hold its last
//! acknowledged value or any value (or deletion) attempted since. A key is
//! **lost** when its final value is none of those; a **stale read** is a
//! read during the run that returned none of those.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_tests::wait_for;
use tokio::sync::Mutex;

/// The state a key may be in: its last acknowledged value (`None`: absent)
/// and what was attempted since without an acknowledgement.
#[derive(Debug, Default, Clone)]
struct KeyState {
    acked: Option<String>,
    unsure: Vec<Option<String>>,
    written: bool,
    /// Where and when the last acknowledged write was coordinated, for the
    /// examples of stale reads.
    acked_at: Served,
}

/// Which instance coordinated a request (the one that answered, or the
/// primary it was forwarded to) and when it was answered.
#[derive(Debug, Default, Clone)]
struct Served {
    by: String,
    at: Duration,
}

impl Served {
    fn of(response: &reqwest::Response, started: Instant) -> Served {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v[..v.len().min(8)].to_owned())
        };
        let by = match (header("x-shoal-instance"), header("x-shoal-kv-primary")) {
            (Some(first), Some(primary)) => format!("{first}→{primary}"),
            (Some(first), None) => first,
            (None, _) => "?".into(),
        };
        Served {
            by,
            at: started.elapsed(),
        }
    }
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {:.3} s", self.by, self.at.as_secs_f64())
    }
}

impl KeyState {
    fn allows(&self, seen: &Option<String>) -> bool {
        *seen == self.acked || self.unsure.contains(seen)
    }
}

/// What the clients saw during a run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ops: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub reads: u64,
    pub stale_reads: u64,
    /// Failure reasons (`PUT: timeout error`, ...) with counts.
    pub failures: HashMap<String, u64>,
    /// Writes (PUT and DELETE) attempted.
    pub writes: u64,
    /// Up to 5 examples of stale reads.
    pub examples: Vec<String>,
    /// The first [`FAILURE_EXAMPLES`] failures Shoal explained: method,
    /// status, error code and the answer's `detail`.
    pub failure_examples: Vec<String>,
}

/// Failures kept with their `detail` in [`Tally::failure_examples`].
pub const FAILURE_EXAMPLES: usize = 3;

/// Shoal's JSON error body: `{"error": code, "detail": ...}`.
#[derive(Debug)]
struct ErrorBody {
    error: String,
    detail: String,
}

impl Tally {
    /// Failed writes (PUT and DELETE, any reason).
    pub fn failed_writes(&self) -> u64 {
        self.failed_where(|reason| reason.starts_with("PUT") || reason.starts_with("DELETE"))
    }

    /// Failed reads (any reason).
    pub fn failed_reads(&self) -> u64 {
        self.failed_where(|reason| reason.starts_with("GET"))
    }

    fn failed_where(&self, pick: impl Fn(&str) -> bool) -> u64 {
        self.failures
            .iter()
            .filter(|(reason, _)| pick(reason))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The final check of every key written: how many were lost.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Keys written at least once (each read back).
    pub keys: usize,
    /// Keys whose final value is neither the last acknowledged one nor one
    /// attempted since.
    pub lost: u64,
    /// Up to 10 lost keys, described.
    pub examples: Vec<String>,
}

/// Key-value clients writing, deleting and reading their own keys through
/// the gateway's `/kv/` route, every acknowledged write remembered (see the
/// module doc for what counts as lost).
pub struct KvClients {
    keys_per_client: usize,
    states: Arc<Vec<Mutex<KeyState>>>,
    tally: Arc<Mutex<Tally>>,
    running: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// What every client loop shares.
struct Shared {
    http: reqwest::Client,
    /// `http://gateway/kv/`
    base: String,
    /// Keys per client.
    per: usize,
    states: Arc<Vec<Mutex<KeyState>>>,
    tally: Arc<Mutex<Tally>>,
    running: Arc<AtomicBool>,
    started: Instant,
}

impl KvClients {
    /// Start `clients` clients with `keys_per_client` keys each on `base`
    /// (`http://gateway/kv/`).
    pub fn start(
        http: &reqwest::Client,
        base: &str,
        clients: usize,
        keys_per_client: usize,
    ) -> KvClients {
        let states: Arc<Vec<Mutex<KeyState>>> = Arc::new(
            (0..clients * keys_per_client)
                .map(|_| Mutex::default())
                .collect(),
        );
        let tally = Arc::new(Mutex::new(Tally::default()));
        let running = Arc::new(AtomicBool::new(true));
        let started = Instant::now();
        let clients = (0..clients)
            .map(|c| {
                let shared = Shared {
                    http: http.clone(),
                    base: base.to_owned(),
                    per: keys_per_client,
                    states: states.clone(),
                    tally: tally.clone(),
                    running: running.clone(),
                    started,
                };
                tokio::spawn(async move { client_loop(c, &shared).await })
            })
            .collect();
        KvClients {
            keys_per_client,
            states,
            tally,
            running,
            clients,
            started,
        }
    }

    /// Time since the clients started (the clock of the stale-read examples).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stop every client after its current request; what they saw.
    pub async fn stop(&mut self) -> anyhow::Result<Tally> {
        self.running.store(false, Ordering::Release);
        for c in self.clients.drain(..) {
            c.await?;
        }
        Ok(self.tally.lock().await.clone())
    }

    /// Read every key ever written once more (after [`KvClients::stop`]) and
    /// compare it with what was acknowledged.
    pub async fn verify(&self, http: &reqwest::Client, base: &str) -> anyhow::Result<Verdict> {
        let mut verdict = Verdict::default();
        for (i, state) in self.states.iter().enumerate() {
            let state = state.lock().await.clone();
            if !state.written {
                continue;
            }
            verdict.keys += 1;
            let key = key_name(i / self.keys_per_client, i % self.keys_per_client);
            let seen = read_final(http, base, &key).await?;
            if !state.allows(&seen) {
                verdict.lost += 1;
                if verdict.examples.len() < 10 {
                    verdict.examples.push(format!(
                        "{key}: holds {seen:?}, last acknowledged {:?} (unsure {:?})",
                        state.acked, state.unsure
                    ));
                }
            }
        }
        Ok(verdict)
    }
}

fn key_name(client: usize, n: usize) -> String {
    format!("c{client}-k{n}")
}

async fn client_loop(c: usize, shared: &Shared) {
    let Shared {
        http,
        base,
        per,
        states,
        tally,
        running,
        started,
    } = shared;
    let per = *per;
    let mut n = 0u64;
    while running.load(Ordering::Acquire) {
        let (k, roll) = {
            let mut rng = rand::rng();
            (rng.random_range(0..per), rng.random_range(0..100u32))
        };
        let key = key_name(c, k);
        let url = format!("{base}{key}");
        // One client owns its keys: the state cannot change under us.
        let mut state = states[c * per + k].lock().await;
        n += 1;
        if roll < 45 || !state.written {
            let value = format!("{key}-v{n}");
            let answer = http.put(&url).body(value.clone()).send().await;
            state.written = true;
            let served = answer.as_ref().ok().map(|r| Served::of(r, *started));
            if record(tally, "PUT", status_and_code(answer).await).await {
                state.acked = Some(value);
                state.unsure.clear();
                state.acked_at = served.unwrap_or_default();
            } else {
                state.unsure.push(Some(value));
            }
        } else if roll < 50 {
            let answer = http.delete(&url).send().await;
            let served = answer.as_ref().ok().map(|r| Served::of(r, *started));
            // 404 means it was already absent: acknowledged as absent.
            let answer = status_and_code(answer).await.map(|(status, code)| {
                if status == 404 {
                    (reqwest::StatusCode::NO_CONTENT, None)
                } else {
                    (status, code)
                }
            });
            if record(tally, "DELETE", answer).await {
                state.acked = None;
                state.unsure.clear();
                state.acked_at = served.unwrap_or_default();
            } else {
                state.unsure.push(None);
            }
        } else {
            let (seen, served) = match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => {
                    let served = Served::of(&r, *started);
                    (r.text().await.ok().map(Some), served)
                }
                Ok(r) if r.status() == 404 => (Some(None), Served::of(&r, *started)),
                Ok(r) => {
                    record(tally, "GET", status_and_code(Ok(r)).await).await;
                    continue;
                }
                Err(e) => {
                    record(tally, "GET", Err(e)).await;
                    continue;
                }
            };
            let mut t = tally.lock().await;
            t.ops += 1;
            t.reads += 1;
            match seen {
                Some(seen) => {
                    t.acknowledged += 1;
                    if !state.allows(&seen) {
                        t.stale_reads += 1;
                        if t.examples.len() < 5 {
                            t.examples.push(format!(
                                "stale read of {key}: {seen:?} from {served}, expected {:?} \
                                 (acknowledged by {}) or {:?}",
                                state.acked, state.acked_at, state.unsure
                            ));
                        }
                    }
                }
                None => {
                    t.failed += 1;
                    *t.failures.entry("GET: unreadable body".into()).or_default() += 1;
                }
            }
        }
    }
}

/// A response's status and, when it is an error, its JSON error body
/// (Shoal's errors carry one), for the failure reasons.
async fn status_and_code(
    answer: Result<reqwest::Response, reqwest::Error>,
) -> Result<(reqwest::StatusCode, Option<ErrorBody>), reqwest::Error> {
    let r = answer?;
    let status = r.status();
    if status.is_success() {
        return Ok((status, None));
    }
    let body = r.json::<serde_json::Value>().await.ok();
    let field = |name| Some(body.as_ref()?.get(name)?.as_str()?.to_owned());
    let error = field("error").map(|error| ErrorBody {
        error,
        detail: field("detail").unwrap_or_default(),
    });
    Ok((status, error))
}

/// Count one request; true if acknowledged (2xx).
async fn record(
    tally: &Mutex<Tally>,
    method: &str,
    answer: Result<(reqwest::StatusCode, Option<ErrorBody>), reqwest::Error>,
) -> bool {
    let mut t = tally.lock().await;
    t.ops += 1;
    if method != "GET" {
        t.writes += 1;
    }
    match answer {
        Ok((status, _)) if status.is_success() => {
            t.acknowledged += 1;
            true
        }
        Ok((status, body)) => {
            t.failed += 1;
            let reason = match &body {
                Some(body) => format!("{method}: {status} {}", body.error),
                None => format!("{method}: {status}"),
            };
            if let Some(body) = body
                && t.failure_examples.len() < FAILURE_EXAMPLES
            {
                t.failure_examples
                    .push(format!("{reason}: {}", body.detail));
            }
            *t.failures.entry(reason).or_default() += 1;
            false
        }
        Err(e) => {
            t.failed += 1;
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "transport"
            };
            *t.failures
                .entry(format!("{method}: {kind} error"))
                .or_default() += 1;
            false
        }
    }
}

/// The final read of `key`: it must get an answer, so transport errors and
/// 5xx are retried for 5 s; `None` when the key is absent.
async fn read_final(
    http: &reqwest::Client,
    base: &str,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let url = format!("{base}{key}");
    let answer = wait_for(
        Duration::from_secs(5),
        &format!("an answer to the final read of {key}"),
        || async {
            match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => Some(r.text().await.map(Some)),
                Ok(r) if r.status() == 404 => Some(Ok(None)),
                _ => None,
            }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    Ok(answer?)
}
