//! The controller's tick against an in-memory driver and journal, on paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use registry::InstanceState;
use registry::model::ScalingMetric;

use registry::store::memory::MemoryEtcd;
use registry::store::{Fence, Store};
use registry::{Keys, RegistryValue};
use tokio_util::sync::CancellationToken;

use super::journal::Journal;
use super::*;
use crate::collect::InstanceObservation;
use crate::driver::DriverError;

/// Instances are entries in a map; tests crash them by hand.
#[derive(Default)]
struct MemoryDriver {
    owned: Mutex<BTreeMap<String, Owned>>,
    /// The spec version each instance was started with ("" without a spec).
    versions: Mutex<BTreeMap<String, String>>,
    /// When set, every start is refused with this reason.
    refuse: Mutex<Option<String>>,
}

impl MemoryDriver {
    fn version(&self, id: &str) -> String {
        self.versions
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
    fn exit(&self, id: &str, code: i32) {
        self.owned.lock().unwrap().get_mut(id).unwrap().exited = Some(code);
    }
    fn ids(&self) -> Vec<String> {
        self.owned.lock().unwrap().keys().cloned().collect()
    }
}

impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }
    async fn start(&self, spec: &StartSpec) -> Result<(), DriverError> {
        if let Some(reason) = self.refuse.lock().unwrap().clone() {
            return Err(DriverError::Start {
                service: spec.service.clone(),
                id: spec.id.clone(),
                reason,
            });
        }
        self.versions.lock().unwrap().insert(
            spec.id.clone(),
            spec.spec.as_ref().map(|s| s.version()).unwrap_or_default(),
        );
        self.owned.lock().unwrap().insert(
            spec.id.clone(),
            Owned {
                id: spec.id.clone(),
                service: spec.service.clone(),
                exited: None,
            },
        );
        Ok(())
    }
    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), DriverError> {
        self.owned
            .lock()
            .unwrap()
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| DriverError::Unknown(id.to_owned()))
    }
    async fn list(&self) -> Result<Vec<Owned>, DriverError> {
        Ok(self.owned.lock().unwrap().values().cloned().collect())
    }
}

fn policy(min: u32) -> ScalingPolicy {
    ScalingPolicy {
        service: "app".into(),
        min,
        max: 10,
        metric: ScalingMetric::Inflight,
        target: 2.0,
        tolerance: 0.1,
        scale_up_stabilization_secs: 0,
        scale_down_stabilization_secs: 0,
        max_scale_up_step: None,
        max_scale_down_step: None,
        step_period_secs: 15,
        warmup_secs: 0,
        pinned: None,
    }
}

struct World {
    controller: Controller<MemoryDriver>,
    driver: Arc<MemoryDriver>,
    etcd: MemoryEtcd,
    journal: Journal,
    observed: Observed,
}

impl World {
    fn new(policy: ScalingPolicy) -> World {
        let driver = Arc::new(MemoryDriver::default());
        let settings = Settings {
            startup_grace: Duration::from_secs(20),
            lease_ttl: Duration::from_secs(5),
            retire_deadline: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
        };
        let etcd = MemoryEtcd::default();
        let store = Store::memory(&etcd, Keys::default());
        let fence = World::elect(&etcd);
        World {
            controller: Controller::new(driver.clone(), settings),
            driver,
            journal: Journal::new(store, fence, CancellationToken::new()),
            etcd,
            observed: Observed {
                policies: vec![policy],
                synced: true,
                ..Observed::default()
            },
        }
    }

    /// Put the election key this world's controller leads under.
    fn elect(etcd: &MemoryEtcd) -> Fence {
        let key = format!("{}/leader-1", Keys::default().leader());
        etcd.put(&key, "controller");
        Fence {
            create_revision: etcd.revision(),
            key,
        }
    }

    /// This term ends and another begins: the election key is created
    /// again, so the fence (its old create revision) no longer holds.
    fn depose(&self) {
        self.etcd
            .delete(&format!("{}/leader-1", Keys::default().leader()));
        World::elect(&self.etcd);
    }

    /// The events stored for `app`, by sequence number.
    fn events(&self) -> Vec<(u64, ScalingEvent)> {
        let keys = Keys::default();
        self.etcd
            .list(&keys.service_events("app"))
            .into_iter()
            .map(|kv| {
                let Ok(registry::Key::Event { seq, .. }) = keys.parse(&kv.key) else {
                    panic!("not an event key: {}", kv.key)
                };
                (
                    seq,
                    ScalingEvent::decode(&keys, &kv.key, &kv.value).unwrap(),
                )
            })
            .collect()
    }

    /// The instances with a retire key, as (service, id).
    fn retired(&self) -> Vec<(String, String)> {
        let keys = Keys::default();
        self.etcd
            .list(&keys.retires())
            .into_iter()
            .map(|kv| match keys.parse(&kv.key) {
                Ok(registry::Key::Retire { service, id }) => (service, id),
                _ => panic!("not a retire key: {}", kv.key),
            })
            .collect()
    }

    /// The rollout requests stored, by service.
    fn rollouts(&self) -> BTreeMap<String, Rollout> {
        let keys = Keys::default();
        self.etcd
            .list(&keys.rollouts())
            .into_iter()
            .map(|kv| {
                let rollout = Rollout::decode(&keys, &kv.key, &kv.value).unwrap();
                (rollout.service.clone(), rollout)
            })
            .collect()
    }

    async fn tick(&mut self) {
        self.controller
            .tick(Instant::now(), &self.observed, &self.journal)
            .await
            .unwrap();
        // Let the spawned stops run.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Register every running owned instance as `state`, with this in-flight load
    /// (in id order) seen by one gateway that answered.
    fn register_all(&mut self, state: InstanceState, in_flight: &[f64]) {
        let ids = self.driver.ids();
        let mut registered = BTreeMap::new();
        let mut load = ServiceLoad {
            gateways_answered: 1,
            ..ServiceLoad::default()
        };
        for (n, id) in ids.iter().enumerate() {
            let mut i = Instance::new("app", "127.0.0.1:1");
            i.id = id.clone();
            i.state = state;
            i.version = self.driver.version(id);
            registered.insert(id.clone(), i);
            load.instances.insert(
                id.clone(),
                InstanceObservation {
                    in_flight: in_flight.get(n).copied().unwrap_or(0.0),
                    rate: 1.0,
                    ejected: false,
                },
            );
        }
        self.observed.instances.insert("app".into(), registered);
        self.observed.loads.insert("app".into(), load);
    }

    fn kinds(&self) -> Vec<String> {
        self.events().into_iter().map(|(_, e)| e.kind).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn starts_up_to_min_and_event_sequence_continues() {
    let mut w = World::new(policy(2));
    w.journal
        .commit(vec![Write::Event {
            seq: 41,
            event: event::new("app", "decision", (0, 0), "earlier".into(), None),
        }])
        .await
        .unwrap();
    w.tick().await;
    assert_eq!(w.driver.ids().len(), 2);
    let events = w.events();
    let seqs: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [41, 42, 43, 44]);
    assert_eq!(w.kinds()[1..], ["decision", "start", "start"]);
    assert_eq!((events[1].1.current, events[1].1.desired), (0, 2));
    assert!(
        events[1].1.reason.contains("no instance"),
        "{}",
        events[1].1.reason
    );

    // Started, not registered yet: they count, so nothing more starts.
    w.tick().await;
    assert_eq!(w.driver.ids().len(), 2);
    assert_eq!(w.events().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn crashes_are_replaced_at_once_then_with_back_off() {
    let mut w = World::new(policy(1));
    w.tick().await;
    w.register_all(InstanceState::Ready, &[]);
    let mut delays = Vec::new();
    for _ in 0..4 {
        let id = w.driver.ids().pop().unwrap();
        let crashed_at = Instant::now();
        w.driver.exit(&id, 137);
        w.tick().await;
        assert!(
            !w.driver.ids().contains(&id),
            "the crashed one is forgotten"
        );
        let (_, replace) = w
            .events()
            .into_iter()
            .rev()
            .find(|(_, e)| e.kind == "replace")
            .unwrap();
        assert_eq!(replace.instance.as_deref(), Some(id.as_str()));
        assert_eq!(replace.inputs.get("exit_code"), Some(&137.0));
        // Wait for the replacement, tick by tick.
        while w.driver.ids().is_empty() {
            tokio::time::advance(Duration::from_millis(500)).await;
            w.tick().await;
        }
        delays.push(Instant::now().duration_since(crashed_at).as_millis());
        w.register_all(InstanceState::Ready, &[]);
        assert_eq!(w.driver.ids().len(), 1, "exactly one replacement");
    }
    assert_eq!(delays, [0, 0, 1000, 2000]);
}

#[tokio::test(start_paused = true)]
async fn scale_down_retires_the_least_busy_then_reaps_once_gone() {
    let mut p = policy(1);
    p.min = 3;
    let mut w = World::new(p);
    w.tick().await;
    let ids = w.driver.ids();
    w.register_all(InstanceState::Ready, &[1.0, 0.0, 0.0]);
    w.observed.policies[0].min = 1;
    w.tick().await;
    // Mean 1/3 against target 2: one instance is enough.
    let retired: Vec<String> = w.retired().iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(retired.len(), 2);
    assert!(!retired.contains(&ids[0]), "the busy one stays");
    assert_eq!(
        w.kinds()[w.kinds().len() - 3..],
        ["decision", "retire", "retire"]
    );

    // Retiring: not counted, no new decision while they drain.
    let before = w.events().len();
    w.tick().await;
    assert_eq!(w.events().len(), before);
    assert_eq!(w.driver.ids().len(), 3, "not reaped before they exit");

    // They leave the registry and exit 0: reaped, not replaced.
    for id in &retired {
        w.driver.exit(id, 0);
        w.observed.instances.get_mut("app").unwrap().remove(id);
    }
    w.tick().await;
    assert_eq!(w.driver.ids(), [ids[0].clone()]);
    assert!(!w.kinds().contains(&"replace".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_silent_gateway_is_never_read_as_zero_load() {
    let mut p = policy(2);
    let mut w = World::new(p.clone());
    w.tick().await;
    w.register_all(InstanceState::Ready, &[0.0, 0.0]);
    w.observed
        .loads
        .get_mut("app")
        .unwrap()
        .silent
        .push(("g2".into(), "connection refused".into()));
    p.min = 1;
    w.observed.policies[0] = p;
    w.tick().await;
    w.tick().await;
    let events = w.events();
    let refused: Vec<&ScalingEvent> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.reason.contains("refused"))
        .collect();
    assert_eq!(refused.len(), 1, "reported once: {events:?}");
    assert!(
        refused[0].reason.contains("g2 (connection refused)"),
        "{}",
        refused[0].reason
    );
    assert_eq!((refused[0].current, refused[0].desired), (2, 2));
    assert!(w.retired().is_empty());
    assert_eq!(w.driver.ids().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_instance_whose_lease_expired_is_stopped_and_replaced() {
    let mut w = World::new(policy(1));
    w.tick().await;
    let id = w.driver.ids().pop().unwrap();
    w.register_all(InstanceState::Ready, &[]);
    w.tick().await;
    w.observed.instances.get_mut("app").unwrap().clear();
    w.observed.loads.get_mut("app").unwrap().instances.clear();
    // Within 2 × TTL it still counts: nothing happens.
    w.tick().await;
    tokio::time::advance(Duration::from_secs(9)).await;
    w.tick().await;
    assert_eq!(w.driver.ids(), std::slice::from_ref(&id));
    tokio::time::advance(Duration::from_secs(1)).await;
    w.tick().await;
    let ids = w.driver.ids();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], id, "stopped and replaced");
    let last_replace = w
        .events()
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| e.kind == "replace")
        .unwrap();
    assert!(
        last_replace.reason.contains("lease expired"),
        "{}",
        last_replace.reason
    );
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leader_acts_on_nothing() {
    let mut w = World::new(policy(2));
    w.depose();
    let result = w
        .controller
        .tick(Instant::now(), &w.observed, &w.journal)
        .await;
    assert!(matches!(result, Err(JournalError::Lost)));
    assert!(
        w.driver.ids().is_empty(),
        "nothing started without the fence"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_waits_a_whole_window_before_scaling_down() {
    let mut p = policy(3);
    p.scale_down_stabilization_secs = 5;
    let mut w = World::new(p);
    w.tick().await;
    w.register_all(InstanceState::Ready, &[0.0, 0.0, 0.0]);
    w.observed.policies[0].min = 1;
    w.controller.new_term();
    for _ in 0..5 {
        w.tick().await;
        assert!(w.retired().is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    w.tick().await;
    assert_eq!(w.retired().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retired_instance_that_does_not_leave_is_stopped_at_the_deadline() {
    let mut p = policy(2);
    let mut w = World::new(p.clone());
    w.tick().await;
    w.register_all(InstanceState::Ready, &[0.0, 1.0]);
    p.min = 1;
    w.observed.policies[0] = p;
    tokio::time::advance(Duration::from_secs(1)).await;
    w.tick().await;
    let retired = w.retired();
    assert_eq!(retired.len(), 1);
    // It never drains; 60 s later it is stopped and its retire key cleared.
    tokio::time::advance(Duration::from_secs(59)).await;
    w.tick().await;
    assert_eq!(w.driver.ids().len(), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    w.tick().await;
    assert_eq!(w.driver.ids().len(), 1);
    assert!(!w.driver.ids().contains(&retired[0].1));
    assert!(w.retired().is_empty());
    assert_eq!(w.kinds().last().map(String::as_str), Some("stop"));
}

impl World {
    /// Retired instances drain, exit 0 and leave the registry.
    fn retired_leave(&mut self) {
        let retired = self.retired();
        for (_, id) in retired {
            if self.driver.ids().contains(&id) {
                self.driver.exit(&id, 0);
            }
            if let Some(registered) = self.observed.instances.get_mut("app") {
                registered.remove(&id);
            }
        }
    }

    fn ask_rollout(&mut self, max_surge: u32, max_unavailable: u32) {
        let mut request = Rollout::request("app", "test");
        request.max_surge = max_surge;
        request.max_unavailable = max_unavailable;
        self.observed.rollouts.insert("app".into(), request);
    }

    /// What the journal holds for the request (the controller stamps and deletes it).
    fn stored_rollout(&self) -> Option<Rollout> {
        self.rollouts().get("app").cloned()
    }

    fn last_reason(&self, kind: &str) -> String {
        self.events()
            .into_iter()
            .rev()
            .find(|(_, e)| e.kind == kind)
            .map(|(_, e)| e.reason)
            .unwrap_or_default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_rolling_restart_surges_one_at_a_time_and_never_drops_below_desired() {
    let mut w = World::new(policy(3));
    w.tick().await;
    w.register_all(InstanceState::Ready, &[1.0, 1.0, 1.0]);
    w.tick().await;
    let old: BTreeSet<String> = w.driver.ids().into_iter().collect();
    assert_eq!(old.len(), 3);

    w.ask_rollout(1, 0);
    w.tick().await;
    let stamped = w.stored_rollout().expect("the request is stamped");
    let mut stamped_ids = stamped.replacing.clone().unwrap();
    stamped_ids.sort();
    assert_eq!(stamped_ids, old.iter().cloned().collect::<Vec<_>>());
    assert!(
        w.last_reason("rollout")
            .starts_with("rolling restart of 3 instance(s) requested by test"),
        "{}",
        w.last_reason("rollout")
    );
    assert_eq!(w.driver.ids().len(), 4, "one surge instance");
    assert!(w.retired().is_empty());
    // The surge is not ready yet: nothing more happens, and the decision
    // (3 instances at target) neither adds nor removes one.
    w.observed.rollouts.insert("app".into(), stamped);
    w.tick().await;
    assert_eq!(w.driver.ids().len(), 4);

    let mut rounds = 0;
    while w.stored_rollout().is_some() {
        rounds += 1;
        assert!(rounds <= 10, "the restart finishes");
        // Every new instance gets ready; retired old ones drain and leave.
        let running: Vec<String> = w.driver.ids();
        let retiring: Vec<String> = w.retired().iter().map(|(_, id)| id.clone()).collect();
        let serving = running.iter().filter(|id| !retiring.contains(id)).count();
        assert!(
            serving >= 3,
            "never fewer than the desired 3 serving or starting: {serving}"
        );
        w.register_all(InstanceState::Ready, &[1.0, 1.0, 1.0, 1.0]);
        w.retired_leave();
        tokio::time::advance(Duration::from_secs(1)).await;
        w.tick().await;
        w.observed.rollouts = w.rollouts();
    }
    let now: BTreeSet<String> = w.driver.ids().into_iter().collect();
    assert_eq!(now.len(), 3, "back to 3: {now:?}");
    assert!(now.is_disjoint(&old), "every old instance replaced");
    assert!(
        w.last_reason("rollout")
            .starts_with("rolling restart done: 3 instance(s) replaced in"),
        "{}",
        w.last_reason("rollout")
    );
    assert!(
        !w.kinds().contains(&"replace".to_owned()),
        "nothing crashed"
    );
}

#[tokio::test(start_paused = true)]
async fn max_unavailable_retires_without_waiting_and_stalled_restarts_are_abandoned() {
    let mut w = World::new(policy(2));
    w.tick().await;
    w.register_all(InstanceState::Ready, &[1.0, 1.0]);
    w.ask_rollout(0, 1);
    w.tick().await;
    assert_eq!(w.retired().len(), 1);
    assert_eq!(w.driver.ids().len(), 3, "its replacement starts at once");
    // The replacement never gets ready: no second old one goes, and after
    // the progress deadline the restart is abandoned.
    w.observed.rollouts = w.rollouts();
    w.retired_leave();
    w.tick().await;
    let retires = |w: &World| w.kinds().iter().filter(|k| *k == "retire").count();
    assert_eq!(retires(&w), 1);
    tokio::time::advance(rollout::PROGRESS_DEADLINE).await;
    // Keep the replacement "starting" within its grace as far as the
    // controller knows: register it starting.
    let ids = w.driver.ids();
    let mut registered = w.observed.instances.get("app").cloned().unwrap_or_default();
    for id in &ids {
        registered.entry(id.clone()).or_insert_with(|| {
            let mut i = Instance::new("app", "127.0.0.1:1");
            i.id = id.clone();
            i
        });
    }
    w.observed.instances.insert("app".into(), registered);
    w.tick().await;
    assert!(w.stored_rollout().is_none(), "abandoned and deleted");
    assert!(
        w.last_reason("rollout")
            .starts_with("rolling restart abandoned"),
        "{}",
        w.last_reason("rollout")
    );
    assert_eq!(retires(&w), 1, "the other old instance keeps serving");
    assert_eq!(w.driver.ids().len(), 2);
}

fn spec(greeting: &str) -> Arc<registry::spec::Service> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "name": "app",
            "process": {"argv": ["node", "server.js"], "port_env": "PORT", "env": {"GREETING": greeting}},
        }))
        .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_spec_change_rolls_the_instances_onto_the_new_version() {
    let mut w = World::new(policy(2));
    let v1 = spec("hello");
    w.observed.services.insert("app".into(), v1.clone());
    w.tick().await;
    let first = w.driver.ids();
    assert_eq!(first.len(), 2);
    assert!(
        first.iter().all(|id| w.driver.version(id) == v1.version()),
        "started from the spec"
    );
    w.register_all(InstanceState::Ready, &[]);
    w.tick().await;
    assert!(
        w.rollouts().is_empty(),
        "every instance runs the spec's version"
    );

    let v2 = spec("bonjour");
    w.observed.services.insert("app".into(), v2.clone());
    w.tick().await;
    let rollouts = w.rollouts();
    let request = rollouts.get("app").expect("a rollout was asked for");
    assert_eq!(request.requested_by, "spec");
    let mut replacing = request.replacing.clone().unwrap();
    replacing.sort();
    assert_eq!(replacing, first);
    assert!(
        w.last_reason(event::SPEC).contains(&v2.version()),
        "{}",
        w.last_reason(event::SPEC)
    );
    w.tick().await;
    assert_eq!(w.rollouts().len(), 1, "asked once, not every tick");

    // The leader carries it out: the surge instance runs the new spec.
    w.observed.rollouts = w.rollouts();
    w.tick().await;
    let new: Vec<String> = w
        .driver
        .ids()
        .into_iter()
        .filter(|id| !first.contains(id))
        .collect();
    assert_eq!(new.len(), 1, "one surge instance");
    assert_eq!(w.driver.version(&new[0]), v2.version());
}

#[tokio::test(start_paused = true)]
async fn a_start_the_driver_refuses_is_an_event_and_is_retried_with_back_off() {
    let mut w = World::new(policy(1));
    *w.driver.refuse.lock().unwrap() = Some("cannot run `nodex`: no such program on PATH".into());
    w.tick().await;
    assert!(w.driver.ids().is_empty());
    w.tick().await;
    let why = w.last_reason(event::START_FAILED);
    assert!(
        why.contains("nodex") && why.contains("retrying in"),
        "{why}"
    );
    // The first failures are retried at once; from the third, the crash-loop
    // back-off delays the next attempt (no time passes on this paused clock).
    for _ in 0..5 {
        w.tick().await;
    }
    let failures = |w: &World| {
        w.kinds()
            .iter()
            .filter(|k| *k == event::START_FAILED)
            .count()
    };
    assert_eq!(failures(&w), backoff::THRESHOLD as usize, "{:?}", w.kinds());
    tokio::time::advance(backoff::FIRST_DELAY).await;
    w.tick().await;
    w.tick().await;
    assert_eq!(
        failures(&w),
        backoff::THRESHOLD as usize + 1,
        "one more attempt after the delay"
    );

    *w.driver.refuse.lock().unwrap() = None;
    tokio::time::advance(Duration::from_secs(31)).await;
    w.tick().await;
    assert_eq!(w.driver.ids().len(), 1, "retried once the back-off passed");
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_registers_under_another_id_is_explained() {
    let mut w = World::new(policy(1));
    w.tick().await;
    let mine = w.driver.ids().pop().unwrap();
    // A wrapper registered the program under an id of its own.
    let mut stranger = Instance::new("app", "127.0.0.1:2");
    stranger.id = "random-id".into();
    stranger.state = InstanceState::Ready;
    w.observed.instances.insert(
        "app".into(),
        BTreeMap::from([(stranger.id.clone(), stranger)]),
    );
    tokio::time::advance(Duration::from_secs(21)).await;
    w.tick().await;
    let why = w.last_reason(event::REPLACE);
    assert!(why.contains(&mine), "{why}");
    assert!(
        why.contains("random-id"),
        "names who registered instead: {why}"
    );
    assert!(why.contains("SHOAL_INSTANCE_ID"), "names the fix: {why}");
}
