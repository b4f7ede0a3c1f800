//! Requests through the compose project's gateway, counted by status
//! ([`Codes`], 0 for no answer): a burst of N requests M at a time, and
//! background clients ([`Traffic`]) that keep sending while something
//! happens.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

/// Every request gives up after this long: longer than the gateway's
/// `--hold-timeout` (10 s), so that a request held for an app server that
/// never comes is seen as the gateway's 503, not as no answer.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Status codes seen, with counts; 0 stands for no answer.
#[derive(Clone, Default)]
pub struct Codes(Arc<Mutex<BTreeMap<u16, u64>>>);

impl Codes {
    fn record(&self, code: u16) {
        *self.0.lock().expect("codes lock").entry(code).or_default() += 1;
    }

    /// How many answered `code`.
    pub fn count(&self, code: u16) -> u64 {
        self.0
            .lock()
            .expect("codes lock")
            .get(&code)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.lock().expect("codes lock").values().sum()
    }

    /// Requests that did not answer 200.
    pub fn failed(&self) -> u64 {
        self.total() - self.count(200)
    }

    /// Whether every request answered one of `codes`.
    pub fn only(&self, codes: &[u16]) -> bool {
        self.0
            .lock()
            .expect("codes lock")
            .keys()
            .all(|c| codes.contains(c))
    }

    /// `N × code` for each code, as `uniq -c` would say it.
    pub fn summary(&self) -> String {
        let counts = self.0.lock().expect("codes lock");
        let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{n} × {c}")).collect();
        parts.join(", ")
    }

    /// Add `other`'s 200s to these.
    pub fn add_ok(&self, other: &Codes) {
        let ok = other.count(200);
        *self.0.lock().expect("codes lock").entry(200).or_default() += ok;
    }
}

async fn get(http: &reqwest::Client, url: &str) -> u16 {
    match http.get(url).timeout(TIMEOUT).send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            // A broken body is no answer either.
            if resp.bytes().await.is_ok() { code } else { 0 }
        }
        Err(_) => 0,
    }
}

/// `n` GETs of `url`, `parallel` at a time, into `codes`.
pub async fn burst(http: &reqwest::Client, url: &str, n: usize, parallel: usize, codes: &Codes) {
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|_| get(http, url))
        .buffer_unordered(parallel)
        .collect()
        .await;
    for code in statuses {
        codes.record(code);
    }
}

/// Background clients, each sending GETs of one URL one after another.
pub struct Traffic {
    running: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// `clients` clients on `url`, `pause` between one client's requests,
    /// counting into `codes`.
    pub fn start(
        http: &reqwest::Client,
        url: &str,
        clients: usize,
        pause: Duration,
        codes: &Codes,
    ) -> Traffic {
        let running = Arc::new(AtomicBool::new(true));
        let clients = (0..clients)
            .map(|_| {
                let (http, url, codes) = (http.clone(), url.to_owned(), codes.clone());
                let running = running.clone();
                tokio::spawn(async move {
                    while running.load(Ordering::Relaxed) {
                        codes.record(get(&http, &url).await);
                        // A client's pace (light traffic), not a wait.
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Traffic { running, clients }
    }

    /// A steady trickle: one client, a request every 50 ms.
    pub fn light(http: &reqwest::Client, url: &str, codes: &Codes) -> Traffic {
        Traffic::start(http, url, 1, Duration::from_millis(50), codes)
    }

    /// Stop every client after its current request.
    pub async fn stop(self) {
        self.running.store(false, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("a traffic client panicked");
        }
    }
}
