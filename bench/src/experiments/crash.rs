//! Experiment 2, `crash`: every instance crashes at a random moment 1–3 s
//! after it starts (`SHOAL_CRASH_AFTER=1..3`, which `autoscaler run` passes
//! to the instances it starts) while clients send requests through the
//! gateway and the autoscaler replaces each crashed instance.
//!
//! Four in five requests are `GET /` (idempotent); the fifth is
//! `POST /counter/{session}` (not idempotent: the gateway may retry it only
//! when nothing was sent). Both are counted separately, with every failure's
//! reason, so a missed goal says which requests failed and why.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Mutex;

use shoal_tests::platform::{APP, pinned_policy};

use super::{Config, Row, Tally, measure_for, percent, platform, verdict};

pub const NAME: &str = "crash";
pub const SOURCE: &str = "~4 % failed (1k of 25k), workers crashing every 1–3 s";
/// Most failed requests overall, in percent; none may be a GET.
const GOAL_PERCENT: f64 = 0.1;

/// The row and the overall error percentage (for the summary line).
pub async fn run(config: &Config) -> anyhow::Result<(Row, f64)> {
    // The policy, not `.pinned(n)`: instances crash all the time, so the
    // platform is never steady; one answer through the gateway is enough.
    let platform = platform()
        .policy(APP, &pinned_policy(APP, config.crash_instances))
        .instance_env("SHOAL_CRASH_AFTER", "1..3")
        .try_start()
        .await?;
    let http = platform.http.clone();
    platform
        .gateway()
        .wait_answering(&http, "/", Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let running = Arc::new(AtomicBool::new(true));
    let served_by = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..config.clients {
        let (http, running, served_by) = (http.clone(), running.clone(), served_by.clone());
        let hello = platform.gateway().url("/");
        let counter = platform.gateway().url(&format!("/counter/crash-{c}"));
        clients.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut seen = BTreeSet::new();
            while running.load(Ordering::Acquire) {
                let post = rand::rng().random_range(0..5u32) == 0;
                let (kind, answer) = if post {
                    ("POST", http.post(&counter).send().await)
                } else {
                    ("GET", http.get(&hello).send().await)
                };
                if let Ok(r) = &answer
                    && let Some(id) = r.headers().get("x-shoal-instance")
                {
                    seen.insert(id.to_str().unwrap_or_default().to_owned());
                }
                tally.record(kind, answer).await;
            }
            served_by.lock().await.extend(seen);
            tally
        }));
    }
    let started = Instant::now();
    measure_for(config.crash_load).await;
    running.store(false, Ordering::Release);
    let mut tally = Tally::default();
    for c in clients {
        tally.merge(&c.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    let instances = served_by.lock().await.len();
    let backoff = BackoffSeen::from_log(&platform.autoscaler().proc.stderr());
    let (n, failed) = tally.total();
    let (gets, get_failed) = tally.of("GET");
    let (posts, post_failed) = tally.of("POST");
    let overall = percent(failed, n);
    let mut details = vec![format!(
        "{} clients for {secs:.0} s; {instances} different instances answered ({} at a time, each crashing 1–3 s after it started)",
        config.clients, config.crash_instances
    )];
    details.extend(tally.reason_lines());
    details.push(format!(
        "the autoscaler replaced {} crashed instances at once and delayed {} replacements for its crash-loop back-off, the longest by {} s",
        backoff.immediate, backoff.delayed, backoff.longest_secs
    ));
    let row = Row {
        experiment: NAME,
        shoal: format!(
            "{overall:.3} % failed ({failed} of {n}): GET {get_failed}/{gets} ({:.3} %), POST {post_failed}/{posts} ({:.3} %); {instances} instances served in turn; replacements delayed by crash-loop back-off up to {} s",
            percent(get_failed, gets),
            percent(post_failed, posts),
            backoff.longest_secs
        ),
        source: SOURCE,
        goal: format!("≤ {GOAL_PERCENT} % overall, 0 GET"),
        verdict: verdict(n > 0 && overall <= GOAL_PERCENT && get_failed == 0),
        details,
    };
    Ok((row, overall))
}

/// The autoscaler's replacements as its log tells them: at once, or after a
/// crash-loop back-off delay (`replacing it in N s (crash-loop back-off`).
#[derive(Debug, Default)]
struct BackoffSeen {
    immediate: usize,
    delayed: usize,
    longest_secs: u64,
}

impl BackoffSeen {
    fn from_log(log: &str) -> BackoffSeen {
        let mut seen = BackoffSeen::default();
        for line in log.lines().filter(|l| l.contains("exited with code")) {
            if line.contains("; replacing it now") {
                seen.immediate += 1;
            } else if let Some(rest) = line.split("replacing it in ").nth(1) {
                seen.delayed += 1;
                let secs = rest
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                seen.longest_secs = seen.longest_secs.max(secs);
            }
        }
        seen
    }
}
