//! The background task that owns one registration: it grants the lease, puts
//! the value, keeps the lease alive every TTL/3, notices when the lease is
//! gone and registers again, checks after each keep-alive that the key is
//! still there (and writes it again if someone deleted it), writes state changes in place, marks itself
//! fenced when keep-alives have failed for a whole TTL, and revokes on shutdown.
//! A keep-alive attempt that does not answer within a sixth of the TTL is
//! given up and the next one sent at once (an etcd member cut off hangs
//! calls rather than failing them).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::LeasedValue;
use super::RegistrationStatus;
use super::backend::{BackendError, LeaseBackend, attempt};

/// First retry delay after a failed etcd call; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Retries stay this frequent so that registration resumes within about a
/// second of etcd answering again.
const MAX_RETRY: Duration = Duration::from_secs(1);
pub(super) struct Keeper<B, V> {
    pub backend: B,
    pub key: String,
    pub ttl: Duration,
    pub desired: watch::Receiver<V>,
    pub status: watch::Sender<RegistrationStatus>,
    pub shutdown: CancellationToken,
}

/// What the keeper does next while it holds a lease.
enum Next {
    KeepAlive,
    Write,
    Fence,
    Stop,
}

impl<B: LeaseBackend, V: LeasedValue> Keeper<B, V> {
    pub async fn run(mut self) {
        // Counted from start: an instance that cannot reach etcd for a whole
        // TTL after starting is fenced too, since nobody can route to it.
        let mut last_ok = Instant::now();
        let mut retry = FIRST_RETRY;
        let mut failures = 0u32;
        let shutdown = self.shutdown.clone();
        loop {
            // Not registered: grant a lease and put the instance.
            let (lease, asked) = loop {
                let asked = Instant::now();
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.register(asked) => r,
                };
                match attempt {
                    Ok(lease) => break (lease, asked),
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_power_of_two() {
                            warn!(key = %self.key, error = %e, failures, "cannot register; retrying");
                        }
                        self.fence_if_stale(last_ok);
                        // Wake at the fence deadline too, so fencing is never late.
                        let mut delay = retry;
                        if !self.status.borrow().fenced {
                            delay = delay.min(
                                (last_ok + self.ttl).saturating_duration_since(Instant::now()),
                            );
                        }
                        if pause(&shutdown, delay).await {
                            return;
                        }
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
            };
            // The lease's TTL runs from when etcd granted it: after we asked.
            last_ok = asked;
            retry = FIRST_RETRY;
            let again = self.status.borrow().registrations > 0;
            self.status.send_modify(|s| {
                s.registered = true;
                s.fenced = false;
                s.registrations += 1;
                s.written_state = self.desired.borrow().state();
                s.written_at = Some(Instant::now());
            });
            if again {
                info!(key = %self.key, lease, "registered again with a new lease");
            } else {
                info!(key = %self.key, lease, "registered");
            }
            failures = 0;

            // Registered: keep the lease alive until it is lost or we stop.
            let mut next_keep_alive = Instant::now() + self.ttl / 3;
            let lost = loop {
                let fence_at = last_ok + self.ttl;
                let fenced = self.status.borrow().fenced;
                let next = tokio::select! {
                    _ = self.shutdown.cancelled() => Next::Stop,
                    changed = self.desired.changed() => if changed.is_ok() { Next::Write } else { Next::Stop },
                    _ = sleep_until(next_keep_alive) => Next::KeepAlive,
                    _ = sleep_until(fence_at), if !fenced => Next::Fence,
                };
                match next {
                    Next::Stop => {
                        self.revoke(lease).await;
                        return;
                    }
                    Next::Fence => self.fence_if_stale(last_ok),
                    Next::Write => {
                        let value = self.desired.borrow_and_update().clone();
                        match self.backend.put(&self.key, value.to_json(), lease).await {
                            Ok(()) => {
                                // A put does not renew the lease: `last_ok` stays.
                                self.status.send_modify(|s| {
                                    s.written_state = value.state();
                                    s.written_at = Some(Instant::now());
                                });
                                info!(key = %self.key, state = ?value.state(), "value written");
                            }
                            Err(BackendError::LeaseNotFound(_)) => break "lease not found on write",
                            Err(e) => {
                                // The next successful keep-alive or registration writes it.
                                warn!(key = %self.key, error = %e, "cannot write state; will retry");
                                self.desired.mark_changed();
                                next_keep_alive = next_keep_alive.min(Instant::now() + retry);
                                retry = (retry * 2).min(MAX_RETRY);
                                if pause(&shutdown, FIRST_RETRY).await {
                                    self.revoke(lease).await;
                                    return;
                                }
                            }
                        }
                    }
                    Next::KeepAlive => {
                        // etcd renews the lease when the keep-alive reaches it,
                        // after we sent it: count from sending.
                        let asked = Instant::now();
                        match attempt(self.ttl, self.backend.keep_alive(lease)).await {
                            Ok(ttl) if ttl > 0 => {
                                if self.status.borrow().fenced {
                                    info!(key = %self.key, lease, "keep-alive succeeded again; no longer fenced");
                                }
                                last_ok = asked;
                                retry = FIRST_RETRY;
                                failures = 0;
                                let granted = Duration::from_secs(ttl as u64).min(self.ttl);
                                self.status.send_modify(|s| {
                                    s.fenced = false;
                                    s.lease_until = Some(asked + granted);
                                });
                                next_keep_alive = Instant::now() + self.ttl / 3;
                                // The lease lives, but the key may not: an operator's
                                // `etcdctl del --prefix` deletes keys and leaves leases.
                                match attempt(self.ttl, self.backend.holds(&self.key, lease)).await
                                {
                                    Ok(true) => {}
                                    Ok(false) => {
                                        warn!(key = %self.key, lease, "key deleted while the lease lives; writing it again");
                                        self.desired.mark_changed();
                                    }
                                    Err(e) => {
                                        warn!(key = %self.key, lease, error = %e, "cannot check the key is still there; checking again after the next keep-alive");
                                    }
                                }
                            }
                            Ok(_) | Err(BackendError::LeaseNotFound(_)) => {
                                break "lease expired or etcd lost it";
                            }
                            Err(e) => {
                                failures += 1;
                                if failures == 1 || failures.is_power_of_two() {
                                    warn!(key = %self.key, lease, error = %e, failures, "keep-alive failed; retrying");
                                }
                                // An attempt that timed out has waited already.
                                let wait = match e {
                                    BackendError::Timeout(_) => Duration::ZERO,
                                    _ => retry.min(self.ttl / 3),
                                };
                                next_keep_alive = Instant::now() + wait;
                                retry = (retry * 2).min(MAX_RETRY);
                            }
                        }
                    }
                }
            };
            warn!(key = %self.key, lease, reason = lost, "lease lost; registering again");
            self.status.send_modify(|s| {
                s.lease = None;
                s.lease_until = None;
                s.registered = false;
                s.written_state = None;
                s.written_at = None;
            });
            self.fence_if_stale(last_ok);
        }
    }

    /// Grant a lease (asked for at `asked`) and put the value on it.
    async fn register(&mut self, asked: Instant) -> Result<i64, BackendError> {
        let lease = self.backend.grant(self.ttl).await?;
        // Whoever watches the key may send this instance work as soon as the
        // put lands, before its answer reaches us: report the lease first.
        self.status.send_modify(|s| {
            s.lease = Some(lease);
            s.lease_until = Some(asked + self.ttl);
        });
        let value = self.desired.borrow_and_update().clone();
        if let Err(e) = self.backend.put(&self.key, value.to_json(), lease).await {
            self.status.send_modify(|s| {
                s.lease = None;
                s.lease_until = None;
            });
            // Do not leave an unused lease behind if etcd is still there.
            if let Err(revoke) = self.backend.revoke(lease).await {
                warn!(key = %self.key, lease, error = %revoke, "cannot revoke unused lease; it will expire");
            }
            return Err(e);
        }
        Ok(lease)
    }

    async fn revoke(&mut self, lease: i64) {
        match self.backend.revoke(lease).await {
            Ok(()) => info!(key = %self.key, lease, "deregistered (lease revoked)"),
            Err(e) => {
                warn!(key = %self.key, lease, error = %e, "cannot revoke lease; the key goes when it expires")
            }
        }
        self.status.send_modify(|s| {
            s.lease = None;
            s.lease_until = None;
            s.registered = false;
            s.written_state = None;
            s.written_at = None;
        });
    }

    fn fence_if_stale(&self, last_ok: Instant) {
        if last_ok.elapsed() >= self.ttl && !self.status.borrow().fenced {
            warn!(
                key = %self.key,
                since_ms = last_ok.elapsed().as_millis() as u64,
                "no successful keep-alive for a whole TTL: fenced (may be out of the registry)"
            );
            self.status.send_modify(|s| s.fenced = true);
        }
    }
}

/// Sleep for `delay`; true if shutdown was asked for meanwhile.
async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}
