//! Leased self-registration of an instance (or of any [`LeasedValue`], such as
//! a gateway's announcement).
//!
//! [`Registration::start`] spawns one keeper task ([`keeper`]) that owns the
//! lease; the returned handle is how the instance changes its state, reads its
//! status (registered, fenced) and deregisters. The keeper talks to etcd
//! through [`backend::LeaseBackend`], so its timing is unit-tested on paused
//! time against the in-memory backend in [`memory`].
//!
//! Rules (see `docs/architecture.md`): TTL default 5 s, minimum 2 s;
//! keep-alive every TTL/3; a lost lease is replaced as soon as etcd answers;
//! no successful keep-alive for a whole TTL means fenced until registered again.

pub mod backend;
mod keeper;
pub mod memory;

use std::time::Duration;

use tokio::time::Instant;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::keys::Keys;
use crate::model::{GatewayInfo, Instance, InstanceState, ValidationError};
use backend::{EtcdLeases, LeaseBackend};
use keeper::Keeper;

/// Default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Shortest lease TTL accepted: shorter leases expire on ordinary GC pauses.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// Where a registration stands, as its keeper last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// The instance's key is in etcd on a live lease (as far as we know).
    pub registered: bool,
    /// No keep-alive has succeeded for a whole TTL: the key may be gone.
    pub fenced: bool,
    /// The lease the key is (being) put on: reported from its grant, before
    /// the put, since whoever sees the key may send work at once.
    pub lease: Option<i64>,
    /// Until when the lease surely lives in etcd: a TTL after the last
    /// successful grant or keep-alive was *sent* (etcd counts from when it
    /// received it, which is later). Whoever must stop before others can
    /// take over the instance's place (the key-value store's primaries)
    /// stops by then. `None`: no lease.
    pub lease_until: Option<Instant>,
    /// How many times a lease was granted and the instance put (1 + re-registrations).
    pub registrations: u64,
    /// The state last written to etcd on the current lease.
    pub written_state: Option<InstanceState>,
    /// When etcd acknowledged that write (the registration's put, or a
    /// later one). Watchers see the value from then on, or a moment
    /// before; whoever must not act before every watcher has seen it (the
    /// key-value store's primaries) counts from here.
    pub written_at: Option<Instant>,
}

/// A value kept in etcd on its owner's lease: an [`Instance`], or a gateway's
/// [`GatewayInfo`].
pub trait LeasedValue: Clone + Send + Sync + 'static {
    /// Where it is stored.
    fn key(&self, keys: &Keys) -> String;
    fn validate(&self) -> Result<(), ValidationError>;
    fn to_json(&self) -> String;
    /// The lifecycle state it carries, if any (reported as `written_state`).
    fn state(&self) -> Option<InstanceState> {
        None
    }
}

impl LeasedValue for Instance {
    fn key(&self, keys: &Keys) -> String {
        keys.instance(&self.service, &self.id)
    }
    fn validate(&self) -> Result<(), ValidationError> {
        Instance::validate(self)
    }
    fn to_json(&self) -> String {
        Instance::to_json(self)
    }
    fn state(&self) -> Option<InstanceState> {
        Some(self.state)
    }
}

impl LeasedValue for GatewayInfo {
    fn key(&self, keys: &Keys) -> String {
        keys.gateway(&self.id)
    }
    fn validate(&self) -> Result<(), ValidationError> {
        GatewayInfo::validate(self)
    }
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("GatewayInfo always serializes")
    }
}

/// Handle to a running registration. Dropping it without [`Registration::deregister`]
/// stops the keeper and revokes the lease in the background.
pub struct Registration<V: LeasedValue = Instance> {
    key: String,
    desired: watch::Sender<V>,
    status: watch::Receiver<RegistrationStatus>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl<V: LeasedValue> Registration<V> {
    /// Start keeping `value` in etcd under `keys` on a lease of `ttl`.
    pub fn start(
        client: Client,
        keys: &Keys,
        value: V,
        ttl: Duration,
    ) -> Result<Self, ValidationError> {
        Self::start_with(EtcdLeases::new(client), keys, value, ttl)
    }

    /// As [`Registration::start`], with any lease backend.
    pub fn start_with<B: LeaseBackend>(
        backend: B,
        keys: &Keys,
        value: V,
        ttl: Duration,
    ) -> Result<Self, ValidationError> {
        value.validate()?;
        if ttl < MIN_TTL {
            return Err(ValidationError::new(
                "lease ttl",
                format!("{ttl:?} is below the {MIN_TTL:?} minimum; use e.g. 5s"),
            ));
        }
        let key = value.key(keys);
        let (desired, desired_rx) = watch::channel(value);
        let (status_tx, status) = watch::channel(RegistrationStatus::default());
        let shutdown = CancellationToken::new();
        let keeper = Keeper {
            backend,
            key: key.clone(),
            ttl,
            desired: desired_rx,
            status: status_tx,
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(keeper.run());
        Ok(Registration {
            key,
            desired,
            status,
            shutdown,
            task: Some(task),
        })
    }

    /// The etcd key this registration writes.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value as it is (or will next be) written.
    pub fn value(&self) -> V {
        self.desired.borrow().clone()
    }

    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Wait until `state` has been written to etcd, up to `timeout`.
    pub async fn wait_written(&self, state: InstanceState, timeout: Duration) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.written_state == Some(state)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stop keeping the lease alive and revoke it, deleting the key.
    pub async fn deregister(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(key = %self.key, error = %e, "registration keeper ended abnormally");
        }
    }
}

impl Registration<Instance> {
    /// The instance as it is (or will next be) written.
    pub fn instance(&self) -> Instance {
        self.value()
    }

    /// Change the state; written in place on the current lease.
    pub fn set_state(&self, state: InstanceState) {
        self.desired.send_if_modified(|i| {
            let changed = i.state != state;
            i.state = state;
            changed
        });
    }
}

impl<V: LeasedValue> Drop for Registration<V> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::backend::BackendError;
    use super::memory::MemoryEtcd;
    use super::*;
    use tokio::time::{Instant, advance, sleep};

    const TTL: Duration = Duration::from_secs(5);

    fn start(etcd: &MemoryEtcd) -> Registration {
        let mut instance = Instance::new("app", "127.0.0.1:9000");
        instance.id = "i1".into();
        Registration::start_with(etcd.backend(), &Keys::default(), instance, TTL).unwrap()
    }

    /// Let the keeper run until `cond` holds, advancing paused time in small steps.
    async fn run_until(
        reg: &Registration,
        limit: Duration,
        cond: impl Fn(&RegistrationStatus) -> bool,
    ) -> Duration {
        run_until_status(&reg.watch_status(), limit, cond).await
    }

    async fn run_until_status(
        status: &watch::Receiver<RegistrationStatus>,
        limit: Duration,
        cond: impl Fn(&RegistrationStatus) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !cond(&status.borrow()) {
            assert!(
                start.elapsed() <= limit,
                "condition not reached within {limit:?}: {:?}",
                *status.borrow()
            );
            sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn registers_and_keeps_alive_every_third_of_the_ttl() {
        let etcd = MemoryEtcd::default();
        let reg = start(&etcd);
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        assert!(etcd.get("/shoal/instances/app/i1").is_some());
        let before = etcd.keep_alives();
        sleep(Duration::from_secs(60)).await;
        let sent = etcd.keep_alives() - before;
        // 60 s / (5 s / 3) = 36 keep-alives.
        assert!((35..=37).contains(&sent), "{sent} keep-alives in 60 s");
        let s = reg.status();
        assert!(s.registered && !s.fenced && s.registrations == 1, "{s:?}");
    }

    #[test]
    fn ttl_below_minimum_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let etcd = MemoryEtcd::default();
        let err = Registration::start_with(
            etcd.backend(),
            &Keys::default(),
            Instance::new("app", "127.0.0.1:1"),
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("below the 2s minimum"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn state_changes_are_written_on_the_same_lease() {
        let etcd = MemoryEtcd::default();
        let reg = start(&etcd);
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        let lease = reg.status().lease;
        let registered_at = reg
            .status()
            .written_at
            .expect("the registration's put is a write");
        sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        reg.set_state(InstanceState::Ready);
        assert!(
            reg.wait_written(InstanceState::Ready, Duration::from_millis(50))
                .await
        );
        let (value, stored_lease) = etcd.get("/shoal/instances/app/i1").unwrap();
        assert!(value.contains("\"ready\""), "{value}");
        assert_eq!(Some(stored_lease), lease);
        // The write's acknowledgement is what `written_at` tells.
        let written_at = reg.status().written_at.unwrap();
        assert!(written_at >= asked && written_at > registered_at);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_replaced_within_a_keep_alive_period() {
        let etcd = MemoryEtcd::default();
        let reg = start(&etcd);
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        let old = reg.status().lease.unwrap();
        etcd.expire(old);
        assert!(etcd.get("/shoal/instances/app/i1").is_none());
        let took = run_until(&reg, TTL / 3 + Duration::from_millis(100), |s| {
            s.registrations == 2
        })
        .await;
        assert!(took <= TTL / 3 + Duration::from_millis(100), "{took:?}");
        assert_ne!(reg.status().lease, Some(old));
        assert!(etcd.get("/shoal/instances/app/i1").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_key_on_a_live_lease_is_written_again_within_a_keep_alive_period() {
        let etcd = MemoryEtcd::default();
        let reg = start(&etcd);
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        let lease = reg.status().lease.unwrap();
        etcd.delete("/shoal/instances/app/i1");
        let start = Instant::now();
        while etcd.get("/shoal/instances/app/i1").is_none() {
            assert!(
                start.elapsed() <= TTL / 3 + Duration::from_millis(100),
                "the key was not written again within a keep-alive period"
            );
            sleep(Duration::from_millis(10)).await;
        }
        let (_, stored_lease) = etcd.get("/shoal/instances/app/i1").unwrap();
        assert_eq!(stored_lease, lease, "written again on the same lease");
        assert_eq!(reg.status().registrations, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_is_reported_alive_no_longer_than_etcd_keeps_it() {
        let etcd = MemoryEtcd::default();
        let reg = start(&etcd);
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        // Renewed by keep-alives: always more than two thirds of a TTL ahead.
        for _ in 0..10 {
            sleep(TTL / 4).await;
            let until = reg.status().lease_until.expect("a lease");
            assert!(until >= Instant::now() + TTL * 2 / 3 - Duration::from_millis(50));
        }
        etcd.set_up(false);
        let until = reg.status().lease_until.expect("a lease");
        assert!(
            until > Instant::now(),
            "the lease was renewed less than a TTL ago"
        );
        // etcd (in memory, on the same clock) expires the lease no earlier.
        while etcd.get("/shoal/instances/app/i1").is_some() {
            sleep(Duration::from_millis(10)).await;
        }
        assert!(
            Instant::now() >= until,
            "etcd expired the lease {:?} before the instance stopped counting on it",
            until - Instant::now()
        );
        run_until(&reg, TTL, |s| s.fenced).await;
    }

    #[tokio::test(start_paused = true)]
    async fn fenced_after_a_ttl_without_keep_alive_then_registered_again_after_a_wipe() {
        let etcd = MemoryEtcd::default();
        let reg = start(&etcd);
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        etcd.set_up(false);
        let down_at = Instant::now();
        // Fenced no earlier than TTL after the last good keep-alive, and no later than TTL after etcd went away.
        run_until(&reg, TTL + Duration::from_millis(50), |s| s.fenced).await;
        assert!(
            down_at.elapsed() >= TTL - TTL / 3,
            "fenced too early: {:?}",
            down_at.elapsed()
        );
        advance(Duration::from_secs(5)).await;
        assert!(reg.status().fenced);

        etcd.wipe();
        etcd.set_up(true);
        let took = run_until(&reg, Duration::from_secs(2), |s| {
            s.registrations == 2 && !s.fenced
        })
        .await;
        assert!(
            took <= Duration::from_millis(1100),
            "re-registration took {took:?} after etcd answered"
        );
        assert!(etcd.get("/shoal/instances/app/i1").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn etcd_back_with_its_data_keeps_the_same_lease() {
        let etcd = MemoryEtcd::default();
        let reg = start(&etcd);
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        let lease = reg.status().lease;
        etcd.set_up(false);
        sleep(Duration::from_secs(3)).await;
        etcd.set_up(true);
        etcd.refresh_all(); // a restarted etcd renews every lease's TTL
        sleep(Duration::from_secs(3)).await;
        let s = reg.status();
        assert_eq!(s.lease, lease);
        assert_eq!(s.registrations, 1);
        assert!(!s.fenced);
    }

    #[tokio::test(start_paused = true)]
    async fn any_leased_value_is_kept_under_its_own_key() {
        let etcd = MemoryEtcd::default();
        let info = GatewayInfo {
            id: "g1".into(),
            admin_addr: "127.0.0.1:9090".into(),
            started_at: chrono::Utc::now(),
        };
        let reg = Registration::start_with(etcd.backend(), &Keys::default(), info, TTL).unwrap();
        run_until_status(&reg.watch_status(), Duration::from_millis(50), |s| {
            s.registered
        })
        .await;
        let (value, _) = etcd.get("/shoal/gateways/g1").unwrap();
        assert!(value.contains("127.0.0.1:9090"), "{value}");
        assert_eq!(reg.status().written_state, None);
    }

    #[tokio::test(start_paused = true)]
    async fn deregister_revokes_the_lease() {
        let etcd = MemoryEtcd::default();
        let reg = start(&etcd);
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        reg.deregister().await;
        assert!(etcd.get("/shoal/instances/app/i1").is_none());
        assert_eq!(etcd.live_leases(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn registers_once_etcd_comes_up_after_start() {
        let etcd = MemoryEtcd::default();
        etcd.set_up(false);
        let reg = start(&etcd);
        sleep(TTL + Duration::from_millis(100)).await;
        assert!(reg.status().fenced && !reg.status().registered);
        etcd.set_up(true);
        let took = run_until(&reg, Duration::from_secs(2), |s| s.registered && !s.fenced).await;
        assert!(took <= Duration::from_millis(1100), "{took:?}");
    }

    /// The in-memory leases, except that the next `hang` keep-alives never
    /// answer, as through an etcd member that was cut off, and that a put's
    /// answer arrives `put_answer_after` it was done, as when etcd's watchers
    /// hear of it before the writer does.
    struct Hanging {
        inner: memory::MemoryLeases,
        hang: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        put_answer_after: Duration,
    }

    impl LeaseBackend for Hanging {
        async fn grant(&mut self, ttl: Duration) -> Result<i64, BackendError> {
            self.inner.grant(ttl).await
        }
        async fn put(&mut self, key: &str, value: String, lease: i64) -> Result<(), BackendError> {
            self.inner.put(key, value, lease).await?;
            sleep(self.put_answer_after).await;
            Ok(())
        }
        async fn keep_alive(&mut self, lease: i64) -> Result<i64, BackendError> {
            use std::sync::atomic::Ordering;
            let hang = self
                .hang
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if hang.is_ok() {
                std::future::pending::<()>().await;
            }
            self.inner.keep_alive(lease).await
        }
        async fn revoke(&mut self, lease: i64) -> Result<(), BackendError> {
            self.inner.revoke(lease).await
        }
        async fn holds(&mut self, key: &str, lease: i64) -> Result<bool, BackendError> {
            self.inner.holds(key, lease).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_that_hang_are_given_up_in_time_to_keep_the_lease() {
        let etcd = MemoryEtcd::default();
        let hang = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = Hanging {
            inner: etcd.backend(),
            hang: hang.clone(),
            put_answer_after: Duration::ZERO,
        };
        let mut instance = Instance::new("app", "127.0.0.1:9000");
        instance.id = "i1".into();
        let reg = Registration::start_with(backend, &Keys::default(), instance, TTL).unwrap();
        run_until(&reg, Duration::from_millis(50), |s| s.registered).await;
        let lease = reg.status().lease;
        // Three in a row hang: each is given up after TTL/6 and the next sent
        // at once, so the fourth renews the lease before it expires.
        hang.store(3, std::sync::atomic::Ordering::SeqCst);
        sleep(TTL * 3).await;
        assert_eq!(hang.load(std::sync::atomic::Ordering::SeqCst), 0);
        let s = reg.status();
        assert_eq!(s.lease, lease, "the lease was lost: {s:?}");
        assert!(s.registered && !s.fenced && s.registrations == 1, "{s:?}");
        assert!(etcd.get("/shoal/instances/app/i1").is_some());
    }

    /// Whoever sees the instance's key may send it work at once, before
    /// etcd's answer to the put reaches the keeper: the lease it is on is
    /// reported from the grant, so the key-value store's fence
    /// (`lease_until`) never refuses work routed to it for that reason.
    #[tokio::test(start_paused = true)]
    async fn the_lease_is_reported_before_the_key_can_be_seen() {
        let etcd = MemoryEtcd::default();
        let backend = Hanging {
            inner: etcd.backend(),
            hang: Default::default(),
            put_answer_after: Duration::from_secs(1),
        };
        let mut instance = Instance::new("app", "127.0.0.1:9000");
        instance.id = "i1".into();
        let reg = Registration::start_with(backend, &Keys::default(), instance, TTL).unwrap();
        let start = Instant::now();
        while etcd.get("/shoal/instances/app/i1").is_none() {
            assert!(start.elapsed() < Duration::from_millis(500), "never put");
            sleep(Duration::from_millis(1)).await;
        }
        let seen = reg.status();
        assert!(!seen.registered, "the put has not answered yet: {seen:?}");
        assert!(
            seen.lease.is_some() && seen.lease_until.is_some_and(|until| until > Instant::now()),
            "the key is visible but its lease is not reported: {seen:?}"
        );
        run_until(&reg, Duration::from_secs(2), |s| s.registered).await;
        assert_eq!(reg.status().lease, seen.lease);
    }
}
