//! What the controller looks at each tick: the policies, the service specs,
//! the registry's instances, every gateway's view of each service, and — for `cpu`
//! policies — each instance's own `/load`, turned into cores busy
//! (`cpu_seconds` delta per wall second between two ticks).
//!
//! [`Observer`] reads the registry through watchers (snapshots, no etcd
//! round trip per tick) and asks gateways and instances over HTTP, all
//! concurrently. [`Observed`] is plain data, so the controller's tick can be
//! driven from tests without etcd or HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use registry::model::{GatewayInfo, Rollout, ScalingMetric, ScalingPolicy};
use registry::spec::Service;
use registry::wire::load::LoadReport;
use registry::{Instance, Store, Watcher};
use tokio::time::Instant;
use tracing::debug;

use crate::collect::{ServiceLoad, collect};

/// How long an instance's `/load` may take.
pub const LOAD_TIMEOUT: Duration = Duration::from_millis(500);

/// One tick's view of the world.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub policies: Vec<ScalingPolicy>,
    /// Declared workloads, by service (a service without one runs the
    /// driver's default).
    pub services: BTreeMap<String, Arc<Service>>,
    /// Rolling restarts asked for, by service.
    pub rollouts: BTreeMap<String, Rollout>,
    /// Registered instances by service, then id.
    pub instances: BTreeMap<String, BTreeMap<String, Instance>>,
    /// Load by service, merged across gateways.
    pub loads: BTreeMap<String, ServiceLoad>,
    /// Cores busy by instance id (for `cpu` policies; absent until two samples).
    pub cpu: BTreeMap<String, f64>,
    /// Whether the registry watchers have listed at least once (acting on an
    /// empty, unsynced view would read every instance as gone).
    pub synced: bool,
}

/// Reads the registry through watchers and load over HTTP.
pub struct Observer {
    policies: Watcher<ScalingPolicy>,
    services: Watcher<Service>,
    rollouts: Watcher<Rollout>,
    instances: Watcher<Instance>,
    gateways: Watcher<GatewayInfo>,
    /// For reads the watchers cannot answer yet (see [`Observer::observe`]).
    store: Store,
    http: reqwest::Client,
    /// Last `/load` sample per instance: (cpu seconds, when).
    cpu_samples: HashMap<String, (f64, Instant)>,
}

impl Observer {
    pub fn start(store: &Store) -> Self {
        let keys = store.keys();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a plain HTTP client always builds");
        Observer {
            policies: Watcher::start(store, keys.policies()),
            services: Watcher::start(store, keys.services()),
            rollouts: Watcher::start(store, keys.rollouts()),
            instances: Watcher::start(store, keys.instances()),
            gateways: Watcher::start(store, keys.gateways()),
            store: store.clone(),
            http,
            cpu_samples: HashMap::new(),
        }
    }

    /// Wait until every watcher has listed once, up to `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        self.policies.wait_synced(timeout).await
            && self.services.wait_synced(timeout).await
            && self.rollouts.wait_synced(timeout).await
            && self.instances.wait_synced(timeout).await
            && self.gateways.wait_synced(timeout).await
    }

    pub async fn observe(&mut self) -> Observed {
        let policies = self.policies.snapshot();
        let instances = self.instances.snapshot();
        let gateways = self.gateways.snapshot();
        let rollouts = self.rollouts.snapshot();
        let services = self.services.snapshot();
        let synced = policies.synced
            && services.synced
            && instances.synced
            && gateways.synced
            && rollouts.synced;
        let services_revision = services.revision;
        // Shared by the tick's starts.
        let services: BTreeMap<String, Arc<Service>> = services
            .entries
            .values()
            .map(|s| (s.name.clone(), Arc::new(s.clone())))
            .collect();
        let rollouts: BTreeMap<String, Rollout> = rollouts
            .entries
            .values()
            .map(|r| (r.service.clone(), r.clone()))
            .collect();
        let gateways: Vec<GatewayInfo> = gateways.entries.values().cloned().collect();
        let policies_revision = policies.revision;
        let policies: Vec<ScalingPolicy> = policies.entries.values().cloned().collect();
        let mut services = services;
        if services_revision < policies_revision {
            self.catch_up_specs(&policies, &mut services).await;
        }

        let mut by_service: BTreeMap<String, BTreeMap<String, Instance>> = BTreeMap::new();
        for i in instances.entries.values() {
            by_service
                .entry(i.service.clone())
                .or_default()
                .insert(i.id.clone(), i.clone());
        }

        let http = &self.http;
        let loads = futures::future::join_all(policies.iter().map(|p| {
            let gateways = &gateways;
            async move { (p.service.clone(), collect(http, gateways, &p.service).await) }
        }))
        .await
        .into_iter()
        .collect();

        let cpu_targets: Vec<&Instance> = policies
            .iter()
            .filter(|p| p.metric == ScalingMetric::Cpu)
            .filter_map(|p| by_service.get(&p.service))
            .flat_map(|m| m.values())
            .collect();
        let samples = futures::future::join_all(cpu_targets.iter().map(|i| async move {
            (
                i.id.clone(),
                cpu_seconds(http, &i.addr).await,
                Instant::now(),
            )
        }))
        .await;
        let mut cpu = BTreeMap::new();
        let mut fresh = HashMap::new();
        for (id, seconds, at) in samples {
            let Some(seconds) = seconds else { continue };
            if let Some(cores) = self
                .cpu_samples
                .get(&id)
                .and_then(|&before| cores_busy(before, (seconds, at)))
            {
                cpu.insert(id.clone(), cores);
            }
            fresh.insert(id, (seconds, at));
        }
        // Instances that left are forgotten.
        self.cpu_samples = fresh;

        Observed {
            policies,
            services,
            rollouts,
            instances: by_service,
            loads,
            cpu,
            synced,
        }
    }
}

impl Observer {
    /// The two watchers follow etcd separately, so a spec and its policy
    /// written in one transaction (`autoscaler apply`) may reach the policy
    /// watcher first; read then, the service would look spec-less and be
    /// started with the driver's default program under its name. So when the
    /// specs' view is older than the policies', each policy without a spec
    /// is checked with a direct (linearizable) read, which sees at least
    /// what the policies' view saw. If etcd does not answer, the view stays
    /// as the watchers have it (nothing new can be written meanwhile).
    async fn catch_up_specs(
        &self,
        policies: &[ScalingPolicy],
        services: &mut BTreeMap<String, Arc<Service>>,
    ) {
        for policy in policies {
            if services.contains_key(&policy.service) {
                continue;
            }
            match self.store.service(&policy.service).await {
                Ok(Some(spec)) => {
                    debug!(service = %policy.service, "spec read ahead of its watcher");
                    services.insert(policy.service.clone(), Arc::new(spec.value));
                }
                Ok(None) => {}
                Err(e) => {
                    debug!(service = %policy.service, error = %e, "cannot read its spec; going by the watcher's view");
                }
            }
        }
    }
}

/// Cores busy between two `(cpu_seconds, when)` samples: CPU time per wall
/// second. `None` without wall time between them; a counter that went back
/// (a restarted process under the same id) reads as idle, not negative.
pub fn cores_busy(before: (f64, Instant), after: (f64, Instant)) -> Option<f64> {
    let wall = after.1.checked_duration_since(before.1)?.as_secs_f64();
    (wall > 0.0).then(|| ((after.0 - before.0) / wall).max(0.0))
}

async fn cpu_seconds(http: &reqwest::Client, addr: &str) -> Option<f64> {
    let url = format!("http://{addr}/load");
    let answer = async {
        let resp = http.get(&url).timeout(LOAD_TIMEOUT).send().await?;
        resp.error_for_status()?.json::<LoadReport>().await
    }
    .await;
    match answer {
        Ok(report) => report.cpu_seconds,
        Err(e) => {
            debug!(%url, error = %e, "no /load from instance; its cpu counts as missing");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use registry::Keys;
    use registry::store::memory::MemoryEtcd;

    use super::*;

    #[tokio::test]
    async fn a_spec_its_watcher_has_not_delivered_is_read_before_the_service_counts_as_spec_less() {
        let etcd = MemoryEtcd::default();
        let store = Store::memory(&etcd, Keys::default());
        let spec: Service = serde_json::from_value(serde_json::json!({
            "name": "web", "process": {"argv": ["node", "server.js"], "port_env": "PORT"}
        }))
        .unwrap();
        store.put_service(&spec).await.unwrap();
        let observer = Observer::start(&store);
        let policy = |service: &str| -> ScalingPolicy {
            serde_json::from_value(serde_json::json!({
                "service": service, "min": 1, "max": 2, "metric": "inflight", "target": 4
            }))
            .unwrap()
        };
        // As the tick would see it with the services watcher behind: web's
        // policy, no spec yet; app has neither spec nor a stored one.
        let mut services = BTreeMap::new();
        observer
            .catch_up_specs(&[policy("web"), policy("app")], &mut services)
            .await;
        assert_eq!(
            services.get("web").map(|s| s.version()),
            Some(spec.version())
        );
        assert!(
            !services.contains_key("app"),
            "app runs the default program"
        );
    }

    #[test]
    fn cpu_is_cpu_seconds_per_wall_second() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(cores_busy((10.0, t0), (10.75, t1)), Some(1.5));
        assert_eq!(cores_busy((10.0, t0), (3.0, t1)), Some(0.0));
        assert_eq!(cores_busy((10.0, t0), (11.0, t0)), None);
    }
}
