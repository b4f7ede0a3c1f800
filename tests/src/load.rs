//! A load generator for end-to-end tests: N clients, each sending GETs to
//! one URL back to back until stopped, counting what was served and keeping
//! every failure (status other than 200, transport error, broken body) with
//! its reason, so a test can assert "zero failed requests" and say which.
//! It also notes when each instance (`x-shoal-instance`) first and last
//! served and how many it served, and tests wait on those counts (the load
//! has reached an instance, has gone on past an event) instead of letting
//! it run for a fixed time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::wait::wait_until;

/// What one instance answered of this load's requests.
#[derive(Debug, Clone, Copy)]
struct ServedBy {
    first: Instant,
    last: Instant,
    count: u64,
}

/// Instance id → what it answered.
type Served = Arc<Mutex<HashMap<String, ServedBy>>>;

/// Clients running against one URL.
pub struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    served_by: Served,
    clients: Vec<JoinHandle<()>>,
}

/// What a load run saw.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub served: u64,
    pub failures: Vec<String>,
}

impl LoadReport {
    /// `N of M requests failed, first: ...`, for an assertion's message.
    pub fn failure_summary(&self) -> String {
        format!(
            "{} of {} requests failed, first: {:?}",
            self.failures.len(),
            self.served + self.failures.len() as u64,
            self.failures.first()
        )
    }
}

impl Load {
    /// Start `clients` clients on `url`, sharing `http`'s connection pool.
    pub fn start(http: &reqwest::Client, url: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let served_by: Served = Arc::default();
        let clients = (0..clients)
            .map(|_| {
                let (http, url) = (http.clone(), url.to_owned());
                let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
                let served_by = served_by.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match get(&http, &url).await {
                            Ok(instance) => {
                                served.fetch_add(1, Ordering::Relaxed);
                                let now = Instant::now();
                                served_by
                                    .lock()
                                    .expect("served-by lock")
                                    .entry(instance)
                                    .and_modify(|s| {
                                        s.last = now;
                                        s.count += 1;
                                    })
                                    .or_insert(ServedBy {
                                        first: now,
                                        last: now,
                                        count: 1,
                                    });
                            }
                            Err(e) => failures.lock().expect("failures lock").push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            served,
            failures,
            served_by,
            clients,
        }
    }

    /// When each instance first served, earliest first.
    pub fn first_served(&self) -> Vec<(String, Instant)> {
        let mut seen: Vec<(String, Instant)> = self
            .served_by
            .lock()
            .expect("served-by lock")
            .iter()
            .map(|(id, s)| (id.clone(), s.first))
            .collect();
        seen.sort_by_key(|(_, at)| *at);
        seen
    }

    /// When `instance` last answered one of this load's requests, if ever.
    pub fn last_served(&self, instance: &str) -> Option<Instant> {
        self.served_by
            .lock()
            .expect("served-by lock")
            .get(instance)
            .map(|s| s.last)
    }

    /// Requests `instance` has answered so far.
    pub fn served_by(&self, instance: &str) -> u64 {
        self.served_by
            .lock()
            .expect("served-by lock")
            .get(instance)
            .map_or(0, |s| s.count)
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Wait until `n` more requests than now have been served: the load
    /// goes on past whatever just happened. How long it took.
    pub async fn wait_more_served(&self, n: u64, timeout: Duration) -> Result<Duration, String> {
        let target = self.served() + n;
        wait_until(timeout, &format!("{n} more requests served"), || {
            self.served() >= target
        })
        .await
    }

    /// Wait until `instance` has answered a request that was answered after
    /// `since`; how long it took.
    pub async fn wait_served_by(
        &self,
        instance: &str,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        wait_until(timeout, &format!("a request served by {instance}"), || {
            self.last_served(instance).is_some_and(|last| last > since)
        })
        .await
    }

    /// Stop every client after its current request; what they saw.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("a load client panicked");
        }
        LoadReport {
            served: self.served.load(Ordering::Relaxed),
            failures: self.failures.lock().expect("failures lock").clone(),
        }
    }
}

/// One GET; the instance that served it.
async fn get(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = http.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let instance = resp
        .headers()
        .get("x-shoal-instance")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            resp.text().await.unwrap_or_default()
        ));
    }
    resp.bytes()
        .await
        .map(|_| instance)
        .map_err(|e| format!("body: {e}"))
}
