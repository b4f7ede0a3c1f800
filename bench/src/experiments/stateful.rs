//! Experiment 4, `stateful`: a per-session counter kept two ways, on three
//! instances, before and after the instance holding sessions is killed -9.
//!
//! (a) **sticky**: `POST /counter/{session}` (instance-local memory) behind a
//! `sticky` route; each session keeps its cookie. Correct while every
//! request reaches the pinned instance; when that instance dies its sessions
//! move and restart from 1 — the source's failure mode, expected here.
//! (b) **kv**: the count in the distributed store, `/kv/session-{n}`, raised
//! with a compare-and-set loop (GET, then PUT with `If-Match`; a write that
//! failed is re-read, since it may have been kept). It must survive the kill.
//!
//! A session is correct when its answers were exactly 1, 2, ... K (and, for
//! sticky, all from one instance).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use shoal_tests::binaries::{instance_pid, service_instances, wait_ready};
use shoal_tests::platform::{APP, KV_ROUTE};
use shoal_tests::wait_until_async;

use super::{Config, Row, platform, verdict};

pub const NAME: &str = "stateful";
pub const SOURCE: &str = "worker-local state invisible to others; sticky sessions break when the pinned worker dies; use a shared store";
const INSTANCES: usize = 3;
const COUNTER_ROUTE: &str = r#"{"path_prefix":"/counter/","service":"app","policy":"sticky"}"#;

/// A sticky session: its cookie and the instance that answered.
#[derive(Debug, Default, Clone)]
struct Session {
    cookie: Option<String>,
    instances: BTreeSet<String>,
}

pub async fn run(config: &Config) -> anyhow::Result<Row> {
    let platform = platform()
        .route("counter", COUNTER_ROUTE)
        .route("kv", KV_ROUTE)
        .pinned(INSTANCES)
        .try_start()
        .await?;
    let http = platform.http.clone();
    let k = config.increments as u64;
    let counter_url = |s: usize| platform.gateway().url(&format!("/counter/session-{s}"));
    let kv_url = |s: usize| platform.gateway().url(&format!("/kv/session-{s}"));

    // (a) sticky, while pinned.
    let mut sessions = vec![Session::default(); config.sessions];
    let mut sticky_correct = 0;
    for (s, session) in sessions.iter_mut().enumerate() {
        let mut answers = Vec::new();
        for _ in 0..k {
            answers.push(sticky_post(&http, &counter_url(s), session).await?);
        }
        if answers == (1..=k).collect::<Vec<_>>() && session.instances.len() == 1 {
            sticky_correct += 1;
        }
    }
    // (b) kv, before the kill.
    let mut kv_correct = 0;
    for s in 0..config.sessions {
        let mut answers = Vec::new();
        for _ in 0..k {
            answers.push(kv_increment(&http, &kv_url(s)).await?);
        }
        if answers == (1..=k).collect::<Vec<_>>() {
            kv_correct += 1;
        }
    }

    // Kill -9 the instance session 0 is pinned to; wait for its replacement.
    let victim = sessions[0]
        .instances
        .iter()
        .next()
        .context("session 0 was never answered")?
        .clone();
    let addr = service_instances(&platform.client, APP)
        .await
        .into_iter()
        .find(|i| i.id == victim)
        .context("the pinned instance is not in the registry")?
        .addr;
    let pid = instance_pid(&http, &addr).await?;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).context("kill -9")?;
    wait_until_async(
        Duration::from_secs(30),
        "the killed instance to leave the registry",
        || async {
            !service_instances(&platform.client, APP)
                .await
                .iter()
                .any(|i| i.id == victim)
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    wait_ready(&platform.client, APP, INSTANCES, Duration::from_secs(30)).await?;

    // (a) after the kill: the victim's sessions restart, the others go on.
    let (mut reset, mut kept_elsewhere, mut pinned_to_victim) = (0, 0, 0);
    let mut sticky_after = BTreeMap::new();
    for (s, session) in sessions.iter_mut().enumerate() {
        let was_on_victim = session.instances.contains(&victim);
        let answer = sticky_post(&http, &counter_url(s), session).await?;
        sticky_after.insert(s, answer);
        if was_on_victim {
            pinned_to_victim += 1;
            if answer == 1 {
                reset += 1;
            }
        } else if answer == k + 1 {
            kept_elsewhere += 1;
        }
    }
    // (b) after the kill: K more increments, and the count goes on.
    let mut kv_kept = 0;
    for s in 0..config.sessions {
        let mut answers = Vec::new();
        for _ in 0..k {
            answers.push(kv_increment(&http, &kv_url(s)).await?);
        }
        if answers == (k + 1..=2 * k).collect::<Vec<_>>() {
            kv_kept += 1;
        }
    }

    let n = config.sessions;
    let others = n - pinned_to_victim;
    let sticky_after_text = if reset == pinned_to_victim {
        "reset (expected)".to_owned()
    } else {
        format!("{reset}/{pinned_to_victim} reset (expected all)")
    };
    let met = sticky_correct == n
        && reset == pinned_to_victim
        && pinned_to_victim > 0
        && kept_elsewhere == others
        && kv_correct == n
        && kv_kept == n;
    Ok(Row {
        experiment: NAME,
        shoal: format!(
            "sticky: {sticky_correct}/{n} correct, after kill: {sticky_after_text} for the {pinned_to_victim} on it, {kept_elsewhere}/{others} others kept; kv: {kv_correct}/{n}, after kill: {kv_kept}/{n} kept"
        ),
        source: SOURCE,
        goal: "sticky correct while pinned; kv correct and kept after kill -9".into(),
        verdict: verdict(met),
        details: vec![format!(
            "{n} sessions × {k} increments; killed {victim} (pid {pid}); sticky answers after the kill: {sticky_after:?}"
        )],
    })
}

/// `POST /counter/...` with the session's sticky cookie, retrying a failed
/// request briefly (a dead pinned instance may still be listed for a
/// moment); the count it answered.
async fn sticky_post(
    http: &reqwest::Client,
    url: &str,
    session: &mut Session,
) -> anyhow::Result<u64> {
    let mut last = String::new();
    for _ in 0..50 {
        let mut request = http.post(url);
        if let Some(cookie) = &session.cookie {
            request = request.header("cookie", cookie);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                if let Some(set) = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
                    session.cookie = set.split(';').next().map(str::to_owned);
                }
                if let Some(id) = r
                    .headers()
                    .get("x-shoal-instance")
                    .and_then(|v| v.to_str().ok())
                {
                    session.instances.insert(id.to_owned());
                }
                return Ok(r.text().await?.trim().parse()?);
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        // A retry's pace, up to 50 of them; each answer is the condition.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("POST {url} failed 50 times, last: {last}")
}

/// Raise the count under `url` by one with compare-and-set; the new count.
/// One client per session, so a write that failed and yet holds our value
/// was ours.
async fn kv_increment(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let mut last = String::new();
    for _ in 0..50 {
        let (current, etag) = match read(http, url).await {
            Ok(read) => read,
            Err(e) => {
                last = e;
                // A retry's pace, as below.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let next = current + 1;
        let mut request = http.put(url).body(next.to_string());
        if let Some(etag) = etag {
            request = request.header("if-match", etag);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => return Ok(next),
            Ok(r) if r.status() == 409 => {
                last = "409".into();
                continue;
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        // A retry's pace, up to 50 of them; each answer is the condition.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if matches!(read(http, url).await, Ok((seen, _)) if seen == next) {
            return Ok(next);
        }
    }
    bail!("raising {url} failed 50 times, last: {last}")
}

/// The count under `url` (0 when absent) and its `ETag`.
async fn read(http: &reqwest::Client, url: &str) -> Result<(u64, Option<String>), String> {
    let r = http.get(url).send().await.map_err(|e| e.to_string())?;
    match r.status().as_u16() {
        404 => Ok((0, None)),
        200 => {
            let etag = r
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = r.text().await.map_err(|e| e.to_string())?;
            let count = text
                .trim()
                .parse()
                .map_err(|_| format!("not a count: {text:?}"))?;
            Ok((count, etag))
        }
        status => Err(format!("GET status {status}")),
    }
}
