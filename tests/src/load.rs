//! A load generator for end-to-end tests: N clients, each sending GETs to
//! one URL back to back until stopped, counting what was served and keeping
//! every failure (status other than 200, transport error, broken body) with
//! its reason, so a test can assert "zero failed requests" and say which.
//! It also notes when each instance (`x-shoal-instance`) first and last served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;

/// Instance id → when it first and last answered one of this load's requests.
type Served = Arc<Mutex<HashMap<String, (Instant, Instant)>>>;

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
                                    .and_modify(|(_, last)| *last = now)
                                    .or_insert((now, now));
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
            .map(|(id, (first, _))| (id.clone(), *first))
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
            .map(|(_, last)| *last)
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
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
