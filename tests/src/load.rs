//! A load generator for end-to-end tests: N clients, each sending GETs to
//! one URL back to back until stopped, counting what was served and keeping
//! every failure (status other than 200, transport error, broken body) with
//! its reason, so a test can assert "zero failed requests" and say which.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// Clients running against one URL.
pub struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<JoinHandle<()>>,
}

/// What a load run saw.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub served: u64,
    pub failures: Vec<String>,
}

impl Load {
    /// Start `clients` clients on `url`, sharing `http`'s connection pool.
    pub fn start(http: &reqwest::Client, url: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|_| {
                let (http, url) = (http.clone(), url.to_owned());
                let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match get(&http, &url).await {
                            Ok(()) => {
                                served.fetch_add(1, Ordering::Relaxed);
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
            clients,
        }
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

async fn get(http: &reqwest::Client, url: &str) -> Result<(), String> {
    let resp = http.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            resp.text().await.unwrap_or_default()
        ));
    }
    resp.bytes()
        .await
        .map(|_| ())
        .map_err(|e| format!("body: {e}"))
}
