//! SIGHUP, the gateway's "read your files again" signal: one task that, on
//! each signal, reopens the `--access-log` file (after logrotate moved it)
//! and reloads the `--tls-cert`/`--tls-key` files (after a renewal), each
//! only when configured. Nothing else restarts: connections stay open.
//! With neither configured it only says so: SIGHUP never stops the
//! gateway (as it does not stop nginx or HAProxy), not even when the
//! terminal it runs in goes away; SIGTERM and Ctrl-C do, draining first.

use std::io;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::access_log::AccessLog;
use crate::tls::Certs;

/// What SIGHUP acts on.
#[derive(Default)]
pub struct OnHangup {
    /// An access log written to a file (stdout is not reopened).
    pub access_log: Option<AccessLog>,
    pub certs: Option<Arc<Certs>>,
}

impl OnHangup {
    /// Install the handler, in a task that runs until the runtime stops.
    pub fn spawn(self) -> io::Result<()> {
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                self.act().await;
            }
        });
        Ok(())
    }

    async fn act(&self) {
        if self.access_log.is_none() && self.certs.is_none() {
            info!(
                "SIGHUP: nothing to read again (no --access-log file, no --tls-cert); still serving"
            );
        }
        if let Some(log) = &self.access_log {
            info!("SIGHUP: reopening the access log");
            log.reopen();
        }
        if let Some(certs) = &self.certs {
            info!("SIGHUP: reloading the TLS certificates");
            let certs = certs.clone();
            // File reads: off the request workers.
            match tokio::task::spawn_blocking(move || certs.reload()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    error!(error = %e, "TLS certificates not reloaded; still serving the previous ones")
                }
                Err(e) => {
                    error!(error = %e, "the TLS reload task failed; still serving the previous certificates")
                }
            }
        }
    }
}
