//! Steps 2 and 4 of a request: holding it while its service has no
//! instance to send it to.
//!
//! A request is held when its service has no ready instance (scale from
//! zero: [`Inner::hold`]), and again when its last failure could be retried
//! but no instance is left that it has not failed on ([`Inner::hold_for_another`]:
//! the only instance was killed and its replacement is starting). Both wait
//! on the routing table for a snapshot that has what they need, within what
//! is left of `--hold-timeout`, and count the request as held meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tracing::debug;

use super::Inner;
use crate::table::{RoutingTable, ServicePool};

impl Inner {
    /// Wait for `pool`'s service to have a ready instance; the table that has one.
    pub(super) async fn hold(&self, pool: &ServicePool) -> Option<Arc<RoutingTable>> {
        debug!(service = %pool.service, "no ready instance; holding the request");
        self.hold_until(pool, self.settings.hold_timeout, |p| !p.ready.is_empty())
            .await
    }

    /// After a retriable failure with no instance left to try: wait, up to
    /// `timeout`, for `pool`'s service to have a ready instance that is not
    /// one of `failed`; the table that has one.
    pub(super) async fn hold_for_another(
        &self,
        pool: &ServicePool,
        failed: &[&str],
        timeout: Duration,
    ) -> Option<Arc<RoutingTable>> {
        debug!(service = %pool.service, ?failed, "no instance left to retry on; holding the request for another");
        self.hold_until(pool, timeout, |p| {
            p.ready.iter().any(|b| !failed.contains(&b.id()))
        })
        .await
    }

    /// Wait, up to `timeout`, until `pool`'s service satisfies `accept`; the
    /// table where it does. Counted as held while waiting (also when the
    /// client goes away meanwhile), and as a hold timeout if it never does.
    async fn hold_until(
        &self,
        pool: &ServicePool,
        timeout: Duration,
        accept: impl Fn(&ServicePool) -> bool,
    ) -> Option<Arc<RoutingTable>> {
        let counters = &pool.counters;
        counters.held_total.fetch_add(1, Ordering::Relaxed);
        counters.held_now.fetch_add(1, Ordering::Relaxed);
        struct Unhold<'a>(&'a AtomicI64);
        impl Drop for Unhold<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _unhold = Unhold(&counters.held_now);
        let table = self.table.wait_for(&pool.service, timeout, accept).await;
        if table.is_none() {
            counters.hold_timeouts_total.fetch_add(1, Ordering::Relaxed);
            debug!(service = %pool.service, timeout_ms = timeout.as_millis() as u64, "held until the timeout; giving up");
        }
        table
    }
}
