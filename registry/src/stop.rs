//! What asks an instance to stop: SIGTERM, Ctrl-C, the hangup of the
//! terminal it runs in ([`StopSignals`]), or its retire key
//! ([`RetireWatch`]). Shared by every program that registers an instance
//! (`app-server`, `registry run`), and by the autoscaler and the CLIs.
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

/// SIGTERM, SIGINT (Ctrl-C) and SIGHUP, installed once so that a failure to
/// install them is an error at start rather than a spurious stop later.
///
/// SIGHUP is what a process gets when the terminal it runs in goes away,
/// along with the rest of its process group: it stops the program as
/// SIGTERM does, so that it drains, deregisters and (`registry run`) stops
/// its own program rather than die at once and leave that running. Unless
/// SIGHUP was ignored when the process started (`nohup`, which a handler
/// would otherwise override), or the program gives SIGHUP a meaning of its
/// own ([`StopSignals::install_without_hangup`]).
pub struct StopSignals {
    term: Signal,
    int: Signal,
    hangup: Option<Signal>,
}

impl StopSignals {
    pub fn install() -> io::Result<Self> {
        let hangup = if ignored_at_start(SIGHUP) {
            None
        } else {
            Some(signal(SignalKind::hangup())?)
        };
        Ok(StopSignals {
            hangup,
            ..Self::install_without_hangup()?
        })
    }

    /// SIGTERM and SIGINT only, for a program whose SIGHUP means something
    /// else (the gateway's: read your files again).
    pub fn install_without_hangup() -> io::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hangup: None,
        })
    }

    /// The next signal's name. Cancel-safe; can be called again for a second signal.
    pub async fn recv(&mut self) -> &'static str {
        let hangup = async {
            match &mut self.hangup {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        // `None` only when the runtime is shutting down; nothing to report then.
        tokio::select! {
            Some(()) = self.term.recv() => "SIGTERM",
            Some(()) = self.int.recv() => "SIGINT",
            Some(()) = hangup => "SIGHUP",
            else => std::future::pending().await,
        }
    }
}

/// SIGHUP's number.
const SIGHUP: u32 = 1;

/// Whether signal `number` is ignored by this process, as `nohup` leaves
/// SIGHUP for the program it starts: the `SigIgn` mask of
/// `/proc/self/status` (bit N-1 for signal N). False when it cannot be read.
fn ignored_at_start(number: u32) -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| ignored_in(&status, number))
}

/// Whether a `/proc/PID/status` text says signal `number` is ignored.
fn ignored_in(status: &str, number: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (number - 1)) != 0)
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

    /// `nohup` leaves SIGHUP ignored: bit 0 of the mask (signal 1).
    #[test]
    fn the_ignored_mask_is_read_bit_by_signal_number() {
        let status = |mask: &str| {
            format!(
                "Name:\tregistry\nSigBlk:\t0000000000000000\nSigIgn:\t{mask}\nSigCgt:\t0000000180004a02\n"
            )
        };
        assert!(ignored_in(&status("0000000000000001"), SIGHUP));
        assert!(!ignored_in(&status("0000000000001000"), SIGHUP));
        assert!(ignored_in(&status("0000000000001000"), 13), "SIGPIPE");
        assert!(!ignored_in("Name:\tno mask here\n", SIGHUP));
        // Where the mask is read from has it.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(own.lines().any(|l| l.starts_with("SigIgn:")), "{own}");
    }
}
