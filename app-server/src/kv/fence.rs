//! When this instance may coordinate reads and writes: the fence that keeps
//! two instances from each acting as a key's primary at the same time.
//! Each rule closes one way that could happen:
//!
//! - **Its lease lives** for [`LEASE_MARGIN`] more at least. An instance cut
//!   off from etcd keeps its keys in its own view, while the others take
//!   them over once etcd expires its lease (their watch sees its key go);
//!   etcd counts the TTL from a keep-alive's arrival, after `lease_until`'s
//!   start, so the old primary stops first.
//! - **Its view is confirmed**: the ready set its registry watch shows
//!   matched a linearizable read of the registry sent less than
//!   [`VIEW_FRESH`] ago (`feed.rs` reads it every [`CONFIRM_EVERY`]). So the
//!   view holds every instance that became ready more than `VIEW_FRESH`
//!   ago, however late its watch is.
//! - **It has joined**: it coordinates nothing until [`JOIN_DELAY`] after
//!   etcd acknowledged its ready state. By then every other instance either
//!   sees it (and sends it the keys it now owns) or has an unconfirmed view
//!   and coordinates nothing. A joining instance's requests wait for the
//!   end of the delay; they are not handed over.
//!
//! A second instance can then only coordinate a key when it is the key's
//! primary in a view that holds every instance that could be primary
//! instead. An instance the fence refuses hands the request over to the
//! key's successor (`routes::kv`), which passes it on to the primary its
//! own view names, if that is another. What is left is a stand-in for a
//! primary that refuses connections (docs/architecture.md, "Consistency
//! model").

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use registry::{InstanceState, RegistrationStatus};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long before its lease may end a primary stops coordinating: the
/// time between the check and the answer, and clocks that do not tick at
/// exactly the same rate on every machine. Keep-alives go every third of a
/// TTL (at least 2 s), so a healthy instance is always further away.
pub const LEASE_MARGIN: Duration = Duration::from_millis(250);
/// How recently the view must have been confirmed for this instance to
/// coordinate. Four confirmations fit in it: a slow etcd read or two does
/// not stop the store.
pub const VIEW_FRESH: Duration = Duration::from_secs(1);
/// How often the view is confirmed (sooner again after a read that did not
/// match: the watch is usually a few milliseconds behind).
pub const CONFIRM_EVERY: Duration = Duration::from_millis(250);
/// How long a request that no other instance will take (one handed over to
/// this instance, or one with no successor to hand it to) waits for an
/// unconfirmed view to be confirmed again before it is refused: etcd
/// restarting or electing a leader takes a second or two, and a request
/// that waits is answered rather than refused.
pub const VIEW_WAIT: Duration = Duration::from_secs(2);
/// How long after its ready state is in etcd an instance starts
/// coordinating: [`VIEW_FRESH`], and [`LEASE_MARGIN`] for the time between
/// another instance's check and its answer.
pub const JOIN_DELAY: Duration = VIEW_FRESH.saturating_add(LEASE_MARGIN);

/// Whether this instance may coordinate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It may. `new_lease`: registered again on a lease other than the one
    /// it last coordinated on (the others left it out meanwhile).
    Coordinates { new_lease: bool },
    /// Ready in the registry since a moment ago: it may from `until` on.
    Joining { until: Instant },
    /// It may not; others may own its keys now or soon.
    Refused(Refusal),
}

/// Why this instance does not coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this instance could not renew its registry lease in time (is etcd reachable from it?)"
    )]
    LeaseLost,
    #[error(
        "this instance's view of the service's instances has not been confirmed against etcd in the last {}s (is etcd reachable from it?)",
        VIEW_FRESH.as_secs()
    )]
    ViewUnconfirmed,
    #[error("this instance is not ready in the registry yet")]
    NotReady,
    #[error("the service's instances changed while this request waited on its peers")]
    ViewChanged,
}

impl Refusal {
    /// The error code, and the `x-shoal-kv-refused` value that says nothing
    /// was done.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::LeaseLost => "lease_lost",
            Refusal::ViewUnconfirmed => "view_unconfirmed",
            Refusal::NotReady => "not_ready",
            Refusal::ViewChanged => "view_changed",
        }
    }
}

/// The fence of one instance. Unfenced (always coordinates) until
/// [`Fence::on_lease`] and [`Fence::confirming_views`] switch its rules on:
/// a store without a registry has neither.
#[derive(Debug, Default)]
pub struct Fence {
    lease: OnceLock<watch::Receiver<RegistrationStatus>>,
    /// The lease this instance last coordinated on (0: none yet).
    coordinated_on: AtomicI64,
    /// When the last confirmed read of the ready set was sent (`None`:
    /// never); set once views are confirmed.
    confirmed: OnceLock<watch::Sender<Option<Instant>>>,
}

impl Fence {
    /// Coordinate only while `registration`'s lease lives and after its
    /// ready state has been in etcd for [`JOIN_DELAY`]. Set once.
    pub fn on_lease(&self, registration: watch::Receiver<RegistrationStatus>) {
        let _ = self.lease.set(registration);
    }

    /// Coordinate only while the view was confirmed in the last
    /// [`VIEW_FRESH`] (by [`Fence::confirmed`]).
    pub fn confirming_views(&self) {
        let _ = self.confirmed.set(watch::Sender::new(None));
    }

    /// The view matched a read of the registry sent at `asked`.
    pub fn confirmed(&self, asked: Instant) {
        if let Some(confirmed) = self.confirmed.get() {
            confirmed.send_if_modified(|last| {
                let newer = last.is_none_or(|before| before < asked);
                if newer {
                    *last = Some(asked);
                }
                newer
            });
        }
    }

    /// Wait until the view is confirmed (true), or until `deadline` (false).
    pub async fn wait_confirmed(&self, deadline: Instant) -> bool {
        let Some(confirmed) = self.confirmed.get() else {
            return true;
        };
        let mut updates = confirmed.subscribe();
        let fresh = updates.wait_for(|last| is_fresh(*last, Instant::now()));
        matches!(tokio::time::timeout_at(deadline, fresh).await, Ok(Ok(_)))
    }

    /// Wait until etcd has acknowledged a ready (or draining) state on the
    /// current registration (true), or until `deadline` (false). A gateway
    /// may send work as soon as the ready state lands in etcd, a moment
    /// before the acknowledgement reaches this instance.
    pub async fn wait_ready(&self, deadline: Instant) -> bool {
        let Some(registration) = self.lease.get() else {
            return true;
        };
        let mut updates = registration.clone();
        let ready = updates.wait_for(|status| {
            matches!(
                status.written_state,
                Some(InstanceState::Ready | InstanceState::Draining)
            )
        });
        matches!(tokio::time::timeout_at(deadline, ready).await, Ok(Ok(_)))
    }

    /// Whether this instance may coordinate now (see the module doc).
    pub fn standing(&self) -> Standing {
        let now = Instant::now();
        let mut new_lease = false;
        if let Some(registration) = self.lease.get() {
            let status = registration.borrow();
            let live = status
                .lease_until
                .is_some_and(|until| now + LEASE_MARGIN < until);
            if !live {
                return Standing::Refused(Refusal::LeaseLost);
            }
            match (status.written_state, status.written_at) {
                (Some(InstanceState::Ready), Some(at)) if now < at + JOIN_DELAY => {
                    return Standing::Joining {
                        until: at + JOIN_DELAY,
                    };
                }
                // A draining instance owns nothing, but coordinates what
                // reaches it when no owner answers.
                (Some(InstanceState::Ready | InstanceState::Draining), _) => {}
                _ => return Standing::Refused(Refusal::NotReady),
            }
            let lease = status.lease.unwrap_or(0);
            let before = self.coordinated_on.swap(lease, Ordering::AcqRel);
            new_lease = before != 0 && before != lease;
        }
        if let Some(confirmed) = self.confirmed.get()
            && !is_fresh(*confirmed.borrow(), now)
        {
            return Standing::Refused(Refusal::ViewUnconfirmed);
        }
        Standing::Coordinates { new_lease }
    }
}

/// A view last confirmed by a read sent at `last` is still confirmed at `now`.
fn is_fresh(last: Option<Instant>, now: Instant) -> bool {
    last.is_some_and(|at| now < at + VIEW_FRESH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn ready(lease: i64, for_: Duration) -> RegistrationStatus {
        RegistrationStatus {
            registered: true,
            lease: Some(lease),
            lease_until: Some(Instant::now() + for_),
            written_state: Some(InstanceState::Ready),
            written_at: Some(Instant::now()),
            ..RegistrationStatus::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfenced_store_always_coordinates() {
        let fence = Fence::default();
        assert_eq!(fence.standing(), Standing::Coordinates { new_lease: false });
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_instance_waits_the_join_delay_from_its_ready_write() {
        let (status, rx) = watch::channel(RegistrationStatus::default());
        let fence = Fence::default();
        fence.on_lease(rx);
        assert_eq!(fence.standing(), Standing::Refused(Refusal::LeaseLost));
        status.send_modify(|s| {
            *s = ready(7, Duration::from_secs(5));
            s.written_state = Some(InstanceState::Starting);
        });
        assert_eq!(fence.standing(), Standing::Refused(Refusal::NotReady));
        status.send_replace(ready(7, Duration::from_secs(5)));
        let until = Instant::now() + JOIN_DELAY;
        assert_eq!(fence.standing(), Standing::Joining { until });
        advance(JOIN_DELAY - Duration::from_millis(1)).await;
        assert_eq!(fence.standing(), Standing::Joining { until });
        advance(Duration::from_millis(1)).await;
        assert_eq!(fence.standing(), Standing::Coordinates { new_lease: false });
        // Draining, written a moment ago: no join delay.
        status.send_modify(|s| {
            s.written_state = Some(InstanceState::Draining);
            s.written_at = Some(Instant::now());
        });
        assert_eq!(fence.standing(), Standing::Coordinates { new_lease: false });
    }

    #[tokio::test(start_paused = true)]
    async fn a_view_coordinates_for_view_fresh_after_the_read_that_confirmed_it() {
        let fence = Fence::default();
        fence.confirming_views();
        assert_eq!(
            fence.standing(),
            Standing::Refused(Refusal::ViewUnconfirmed)
        );
        let asked = Instant::now();
        advance(Duration::from_millis(300)).await;
        fence.confirmed(asked);
        // An older read answering late does not move the confirmation back.
        fence.confirmed(asked - Duration::from_millis(100));
        advance(VIEW_FRESH - Duration::from_millis(301)).await;
        assert_eq!(fence.standing(), Standing::Coordinates { new_lease: false });
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            fence.standing(),
            Standing::Refused(Refusal::ViewUnconfirmed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_can_wait_for_the_view_to_be_confirmed_again() {
        let fence = std::sync::Arc::new(Fence::default());
        fence.confirming_views();
        let start = Instant::now();
        // No confirmation: the wait ends at its deadline.
        assert!(!fence.wait_confirmed(start + VIEW_WAIT).await);
        assert_eq!(start.elapsed(), VIEW_WAIT);
        // A confirmation half a second in ends it then.
        let confirmer = fence.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            confirmer.confirmed(Instant::now());
        });
        let waiting = Instant::now();
        assert!(fence.wait_confirmed(waiting + VIEW_WAIT).await);
        assert_eq!(waiting.elapsed(), Duration::from_millis(500));
        // Still fresh: no wait at all.
        assert!(fence.wait_confirmed(Instant::now()).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_can_wait_for_the_ready_state_to_be_acknowledged() {
        let starting = RegistrationStatus {
            written_state: Some(InstanceState::Starting),
            ..ready(7, Duration::from_secs(5))
        };
        let (status, rx) = watch::channel(starting);
        let fence = std::sync::Arc::new(Fence::default());
        fence.on_lease(rx);
        assert_eq!(fence.standing(), Standing::Refused(Refusal::NotReady));
        let start = Instant::now();
        // Never acknowledged: the wait ends at its deadline.
        assert!(!fence.wait_ready(start + VIEW_WAIT).await);
        assert_eq!(start.elapsed(), VIEW_WAIT);
        // Acknowledged 100 ms in: the wait ends then, and the join delay
        // runs from the acknowledgement.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            status.send_replace(ready(7, Duration::from_secs(5)));
        });
        let waiting = Instant::now();
        assert!(fence.wait_ready(waiting + VIEW_WAIT).await);
        assert_eq!(waiting.elapsed(), Duration::from_millis(100));
        assert_eq!(
            fence.standing(),
            Standing::Joining {
                until: Instant::now() + JOIN_DELAY
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_lease_is_reported_once() {
        let (status, rx) = watch::channel(ready(7, Duration::from_secs(5)));
        let fence = Fence::default();
        fence.on_lease(rx);
        advance(JOIN_DELAY).await;
        assert_eq!(fence.standing(), Standing::Coordinates { new_lease: false });
        status.send_replace(ready(8, Duration::from_secs(5)));
        advance(JOIN_DELAY).await;
        assert_eq!(fence.standing(), Standing::Coordinates { new_lease: true });
        assert_eq!(fence.standing(), Standing::Coordinates { new_lease: false });
    }
}
