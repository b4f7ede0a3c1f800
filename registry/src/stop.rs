//! What asks an instance to stop: SIGTERM, Ctrl-C ([`StopSignals`]), or its
//! retire key ([`RetireWatch`]). Shared by every program that registers an
//! instance (`app-server`, `registry run`).
//!
//! The autoscaler retires an instance by writing
//! `{prefix}/retire/{service}/{id}`; [`RetireWatch`] follows that one key and
//! removes it once the instance has left, so that it does not linger.

use std::io;

use crate::model::RawValue;
use crate::store::Store;
use crate::watcher::Watcher;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

/// Longest retire reason quoted in logs.
const MAX_REASON_CHARS: usize = 200;

/// SIGTERM and SIGINT (Ctrl-C), installed once so that a failure to install
/// them is an error at start rather than a spurious stop later.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn install() -> io::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name. Cancel-safe; can be called again for a second signal.
    pub async fn recv(&mut self) -> &'static str {
        // `None` only when the runtime is shutting down; nothing to report then.
        tokio::select! {
            Some(()) = self.term.recv() => "SIGTERM",
            Some(()) = self.int.recv() => "SIGINT",
            else => std::future::pending().await,
        }
    }
}

/// Follows this instance's retire key.
pub struct RetireWatch {
    key: String,
    service: String,
    id: String,
    watcher: Watcher<RawValue>,
}

impl RetireWatch {
    pub fn start(store: &Store, service: &str, id: &str) -> Self {
        let key = store.keys().retire(service, id);
        // A watch on the exact key is a prefix watch; `requested` checks for the
        // key itself so that `{id}x` never retires `{id}`.
        let watcher = Watcher::start(store, key.clone());
        RetireWatch {
            key,
            service: service.to_owned(),
            id: id.to_owned(),
            watcher,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Resolves with the reason once the retire key exists; never if the watch stops.
    pub async fn requested(&self) -> String {
        let mut snapshots = self.watcher.snapshots();
        let found = snapshots
            .wait_for(|s| s.entries.contains_key(&self.key))
            .await
            .map(|s| s.entries.get(&self.key).map(reason));
        match found {
            Ok(Some(reason)) => reason,
            Ok(None) | Err(_) => std::future::pending().await,
        }
    }

    /// Whether the key is there, as far as the watch last saw.
    pub fn is_written(&self) -> bool {
        self.watcher.snapshot().entries.contains_key(&self.key)
    }

    /// Delete the retire key if it was written. Failures are logged only: the
    /// instance has already left, and the autoscaler cleans up leftovers.
    pub async fn clean_up(&self, store: &Store) {
        if !self.is_written() {
            return;
        }
        match store.clear_retire(&self.service, &self.id).await {
            Ok(_) => info!(key = %self.key, "retire key deleted"),
            Err(e) => {
                warn!(key = %self.key, error = %e, "cannot delete the retire key; it stays until someone deletes it")
            }
        }
    }
}

fn reason(value: &RawValue) -> String {
    let text = String::from_utf8_lossy(&value.0);
    let mut reason: String = text.chars().take(MAX_REASON_CHARS).collect();
    if text.chars().count() > MAX_REASON_CHARS {
        reason.push('…');
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_quoted_briefly() {
        assert_eq!(
            reason(&RawValue(br#"{"reason":"scale down"}"#.to_vec())),
            r#"{"reason":"scale down"}"#
        );
        let long = reason(&RawValue(vec![b'x'; 1000]));
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
