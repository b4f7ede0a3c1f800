//! [`TableWatch`]: polls a gateway's `/api/v1/services` while an event
//! happens, keeping the fewest routable instances of one service seen and
//! the most shown as unconfirmed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::Gateway;

/// Polls a gateway's `/api/v1/services` while an event happens: the fewest
/// routable (ready) instances of one service seen, and the most shown as
/// unconfirmed.
pub struct TableWatch {
    stop: Arc<AtomicBool>,
    min_ready: Arc<AtomicUsize>,
    max_unconfirmed: Arc<AtomicUsize>,
    polls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`TableWatch`] saw.
#[derive(Debug, Clone, Copy)]
pub struct TableSeen {
    pub min_ready: usize,
    pub max_unconfirmed: usize,
    /// Answers read (an unanswered poll counts nothing).
    pub polls: usize,
}

impl TableWatch {
    /// Start polling `gateway`'s table for `service` every 20 ms.
    pub fn start(http: &reqwest::Client, gateway: &Gateway, service: &str) -> TableWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
        let max_unconfirmed = Arc::new(AtomicUsize::new(0));
        let polls = Arc::new(AtomicUsize::new(0));
        let url = gateway.admin_url("/api/v1/services");
        let task = tokio::spawn({
            let (http, stop, service) = (http.clone(), stop.clone(), service.to_owned());
            let (min_ready, max_unconfirmed, polls) =
                (min_ready.clone(), max_unconfirmed.clone(), polls.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = http.get(&url).timeout(Duration::from_secs(2)).send().await;
                    if let Ok(services) = answer
                        && let Ok(services) = services.json::<serde_json::Value>().await
                    {
                        let this = services
                            .as_array()
                            .and_then(|all| all.iter().find(|s| s["name"] == service.as_str()))
                            .cloned()
                            .unwrap_or_default();
                        let count = |field: &str| this[field].as_u64().unwrap_or(0) as usize;
                        min_ready.fetch_min(count("ready_instances"), Ordering::Relaxed);
                        max_unconfirmed
                            .fetch_max(count("unconfirmed_instances"), Ordering::Relaxed);
                        polls.fetch_add(1, Ordering::Relaxed);
                    }
                    // A sampling pace, not a wait: the watch runs until stopped.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        TableWatch {
            stop,
            min_ready,
            max_unconfirmed,
            polls,
            task,
        }
    }

    /// Answers read so far (a test waits for the first before its event).
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::Relaxed)
    }

    /// Stop polling; what was seen.
    pub async fn stop(self) -> TableSeen {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the table watch panicked");
        TableSeen {
            min_ready: self.min_ready.load(Ordering::Relaxed),
            max_unconfirmed: self.max_unconfirmed.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
        }
    }
}
