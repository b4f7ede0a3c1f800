//! The routing table: an immutable snapshot of routes and ready instances,
//! rebuilt whenever the registry changes and swapped in atomically
//! ([`TableHandle`]), so the request path reads it without a lock.
//!
//! Route matching: a route matches when its `host` (if any) equals the
//! request's host (case-insensitive, port removed) and its `path_prefix` is a
//! prefix of the path at a segment boundary (`/api` matches `/api` and
//! `/api/x`, not `/apix`). Host-specific routes win over host-less ones, then
//! the longest prefix wins, then the name (for determinism). No match: the
//! default route to `--default-service` with `--default-policy`. Matching
//! goes through a [`RouteIndex`], so it does not scan the routes.
//!
//! Instances that left the registry while ready may be added for a grace
//! period, marked unconfirmed ([`crate::grace`]); they are routed like ready ones.
//!
//! Live per-instance state (in-flight, latency, ejection) and per-service and
//! per-route counters are kept across rebuilds in [`LiveState`], keyed by
//! instance id, service and route name; so is what the policies derive from
//! a service's ready set (round-robin schedule, hash ring: `Prepared`), made
//! anew only when that set changes. Idle upstream connections are kept per
//! instance address, shared by every entry naming it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use arc_swap::ArcSwap;
use registry::model::{BalancePolicy, NamedRoute, Route, UpstreamProtocol};
use registry::{Instance, InstanceState};
use tokio::sync::watch;
use tracing::warn;

use crate::backend::{Backend, BackendState};
use crate::balance::{Balancer, Prepared};
use crate::grace::{Routable, Unconfirmed};
use crate::proxy::pool::ConnPool;
use crate::rate_limit::RouteLimiter;
use crate::route_index::RouteIndex;
use crate::stats::{RequestStats, ServiceCounters};

/// Name of the route used when no configured route matches. Not a valid
/// route key segment, so no configured route can share its statistics.
pub const DEFAULT_ROUTE: &str = "(default)";

/// One service's instances in this snapshot.
#[derive(Debug)]
pub struct ServicePool {
    pub service: String,
    /// `ready` instances: the only ones that get new requests.
    pub ready: Vec<Arc<Backend>>,
    /// Every registered instance, whatever its state (for stats and the admin API).
    pub all: Vec<Arc<Backend>>,
    pub counters: Arc<ServiceCounters>,
    /// What the policies derive from `ready` (schedule, ring), shared by the
    /// service's routes and kept across snapshots while `ready` is unchanged.
    pub prepared: Arc<Prepared>,
}

/// A route compiled against this snapshot's instances.
#[derive(Debug)]
pub struct RouteEntry {
    pub name: String,
    pub route: Route,
    pub pool: Arc<ServicePool>,
    pub balancer: Balancer,
    pub stats: Arc<RequestStats>,
    /// The route's `rate_limit`, if it has one.
    pub limiter: Option<Arc<RouteLimiter>>,
}

impl RouteEntry {
    /// The path to forward: with the prefix removed if the route says so.
    pub fn forward_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.route.strip_prefix || self.route.path_prefix == "/" {
            return path.into();
        }
        let rest = &path[self.route.path_prefix.trim_end_matches('/').len()..];
        if rest.starts_with('/') {
            rest.into()
        } else {
            format!("/{rest}").into()
        }
    }

    /// The path after the prefix, for policies that hash a path segment.
    pub fn path_after_prefix<'a>(&self, path: &'a str) -> &'a str {
        &path[self
            .route
            .path_prefix
            .trim_end_matches('/')
            .len()
            .min(path.len())..]
    }
}

/// `prefix` matches `path` at a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Defaults that apply when no route matches.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub service: String,
    pub policy: BalancePolicy,
}

/// One immutable snapshot.
#[derive(Debug)]
pub struct RoutingTable {
    /// Sorted: host-specific first, then longest prefix, then name.
    pub routes: Vec<RouteEntry>,
    index: RouteIndex,
    pub default_route: RouteEntry,
    pub pools: BTreeMap<String, Arc<ServicePool>>,
    /// The idle connections of every address the table's backends name,
    /// one pool per address (what the idle sweeper walks: O(addresses),
    /// not O(instances), when many entries share an address).
    pub conn_pools: Vec<Arc<ConnPool>>,
    /// Whether the registry watch was connected when this snapshot was built.
    pub registry_connected: bool,
    /// Increases with every rebuild.
    pub generation: u64,
}

impl RoutingTable {
    /// The route for a request (the default route when none matches).
    pub fn resolve(&self, host: Option<&str>, path: &str) -> &RouteEntry {
        match self.index.find(host.map(strip_port), path) {
            Some(position) => &self.routes[position],
            None => &self.default_route,
        }
    }

    pub fn pool(&self, service: &str) -> Option<&Arc<ServicePool>> {
        self.pools.get(service)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// How long ago the instance says it started (zero if its clock is ahead of ours).
fn age_of(instance: &Instance) -> std::time::Duration {
    (chrono::Utc::now() - instance.started_at)
        .to_std()
        .unwrap_or_default()
}

/// State that outlives any one snapshot.
#[derive(Debug, Default)]
pub struct LiveState {
    /// Each instance's backend in the latest snapshot, by id: reused as it
    /// is while its entry is unchanged, so a rebuild allocates only for the
    /// instances that changed.
    backends: HashMap<String, KnownBackend>,
    services: HashMap<String, Arc<ServiceCounters>>,
    routes: HashMap<String, RouteLive>,
    prepared: HashMap<String, ServicePrepared>,
    /// Idle connections by instance address (`Instance::addr`).
    conn_pools: HashMap<String, AddressPool>,
    /// Builds so far: marks which backends the latest build saw.
    builds: u64,
}

/// An instance's backend, and the build that last saw it.
#[derive(Debug)]
struct KnownBackend {
    backend: Arc<Backend>,
    seen: u64,
}

/// The idle connections to one address, and how many known backends use it.
#[derive(Debug)]
struct AddressPool {
    conns: Arc<ConnPool>,
    users: usize,
}

/// What the policies derived from a service's ready set, and that set.
#[derive(Debug)]
struct ServicePrepared {
    ready: Vec<Arc<Backend>>,
    prepared: Arc<Prepared>,
}

/// Whether [`Prepared`] built for `before` holds for `now`: the same ids
/// and weights in the same order. Backends unchanged since the last build
/// are the same `Arc`s, so this is mostly pointer comparisons.
fn same_ready_set(before: &[Arc<Backend>], now: &[Arc<Backend>]) -> bool {
    before.len() == now.len()
        && before.iter().zip(now).all(|(a, b)| {
            Arc::ptr_eq(a, b)
                || (a.instance.id == b.instance.id && a.instance.weight == b.instance.weight)
        })
}

/// One known backend no longer uses `addr`'s idle connections; the pool goes
/// with its last user.
fn release(pools: &mut HashMap<String, AddressPool>, addr: &str) {
    if let Some(pool) = pools.get_mut(addr) {
        pool.users -= 1;
        if pool.users == 0 {
            pools.remove(addr);
        }
    }
}

/// What a route keeps across snapshots: its request stats, and where its
/// round-robin rotation stands, so that a rebuild (an instance's entry
/// rewritten, a route added elsewhere) does not send the rotation back to
/// the first backend.
#[derive(Debug, Default)]
struct RouteLive {
    stats: Arc<RequestStats>,
    rotation: Arc<AtomicUsize>,
    /// Its rate limit's buckets, kept while the limit is unchanged.
    limiter: Option<Arc<RouteLimiter>>,
}

impl LiveState {
    /// Build a snapshot from the registry's instances and routes.
    pub fn build(
        &mut self,
        instances: &BTreeMap<String, Instance>,
        routes: &BTreeMap<String, NamedRoute>,
        defaults: &Defaults,
        registry_connected: bool,
        generation: u64,
        now: Instant,
    ) -> RoutingTable {
        let routable = Routable {
            registered: Arc::new(instances.clone()),
            ..Routable::default()
        };
        self.build_routable(
            &routable,
            routes,
            defaults,
            registry_connected,
            generation,
            now,
        )
    }

    /// Build a snapshot from the registry's instances plus the unconfirmed
    /// ones ([`Grace`](crate::grace::Grace)), and the routes.
    pub fn build_routable(
        &mut self,
        routable: &Routable,
        routes: &BTreeMap<String, NamedRoute>,
        defaults: &Defaults,
        registry_connected: bool,
        generation: u64,
        now: Instant,
    ) -> RoutingTable {
        self.builds += 1;
        let build = self.builds;
        // Backends, grouped by service; sorted by id below, so balancer state
        // (e.g. the round-robin schedule) does not depend on etcd's key order.
        let mut by_service: BTreeMap<&str, Vec<Arc<Backend>>> = BTreeMap::new();
        for (instance, unconfirmed) in routable.instances() {
            if let Some(backend) = self.backend_for(instance, unconfirmed, build, now) {
                by_service
                    .entry(&instance.service)
                    .or_default()
                    .push(backend);
            }
        }
        let LiveState {
            backends,
            conn_pools,
            ..
        } = self;
        backends.retain(|_, known| {
            let present = known.seen == build;
            if !present {
                release(conn_pools, &known.backend.instance.addr);
            }
            present
        });

        let mut wanted: Vec<&str> = by_service.keys().copied().collect();
        wanted.push(&defaults.service);
        wanted.extend(routes.values().map(|r| r.route.service.as_str()));
        let mut pools = BTreeMap::new();
        for service in wanted {
            if pools.contains_key(service) {
                continue;
            }
            let mut all = by_service.remove(service).unwrap_or_default();
            all.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
            let ready: Vec<Arc<Backend>> = all
                .iter()
                .filter(|b| b.instance.state == InstanceState::Ready)
                .cloned()
                .collect();
            let counters = self.services.entry(service.to_owned()).or_default().clone();
            let prepared = self.prepared_for(service, &ready);
            pools.insert(
                service.to_owned(),
                Arc::new(ServicePool {
                    service: service.to_owned(),
                    ready,
                    all,
                    counters,
                    prepared,
                }),
            );
        }

        let mut entries: Vec<RouteEntry> = routes
            .values()
            .map(|named| self.entry(&named.name, named.route.clone(), &pools))
            .collect();
        entries.sort_by(|a, b| {
            (b.route.host.is_some(), b.route.path_prefix.len(), &a.name).cmp(&(
                a.route.host.is_some(),
                a.route.path_prefix.len(),
                &b.name,
            ))
        });
        let default_route = self.entry(
            DEFAULT_ROUTE,
            Route {
                host: None,
                path_prefix: "/".into(),
                service: defaults.service.clone(),
                policy: defaults.policy,
                hash_key: None,
                strip_prefix: false,
                timeout_ms: None,
                try_timeout_ms: None,
                retries: None,
                https_redirect: false,
                rate_limit: None,
                upstream_protocol: UpstreamProtocol::Http1,
                idempotent: false,
            },
            &pools,
        );
        let named: HashSet<&str> = routes.values().map(|r| r.name.as_str()).collect();
        self.routes
            .retain(|name, _| name == DEFAULT_ROUTE || named.contains(name.as_str()));
        self.prepared
            .retain(|service, _| pools.contains_key(service));
        RoutingTable {
            index: RouteIndex::new(&entries),
            routes: entries,
            default_route,
            pools,
            conn_pools: self.conn_pools.values().map(|p| p.conns.clone()).collect(),
            registry_connected,
            generation,
        }
    }

    /// `instance`'s backend, marked as seen by build `build`: the one from
    /// the last snapshot while its entry and mark are unchanged, else a new
    /// one keeping the instance's live state (and its address's idle
    /// connections). `None` (with a warning) when the address cannot be used.
    fn backend_for(
        &mut self,
        instance: &Instance,
        unconfirmed: Option<&Arc<Unconfirmed>>,
        build: u64,
        now: Instant,
    ) -> Option<Arc<Backend>> {
        let (state, old_addr) = match self.backends.get_mut(instance.id.as_str()) {
            Some(known) => {
                let old = &known.backend;
                let same_mark = match (&old.unconfirmed, unconfirmed) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                if old.instance == *instance && same_mark {
                    known.seen = build;
                    return Some(old.clone());
                }
                (old.state.clone(), Some(old.instance.addr.clone()))
            }
            None => (
                Arc::new(BackendState::with_age(now, age_of(instance))),
                None,
            ),
        };
        let Some(mut backend) = Backend::new(instance.clone(), state) else {
            warn!(
                id = %instance.id,
                addr = %instance.addr,
                "skipping instance: its address cannot be used in a request URI"
            );
            return None;
        };
        backend.unconfirmed = unconfirmed.cloned();
        if old_addr.as_deref() != Some(instance.addr.as_str()) {
            let pool = self
                .conn_pools
                .entry(instance.addr.clone())
                .or_insert_with(|| AddressPool {
                    conns: Arc::default(),
                    users: 0,
                });
            pool.users += 1;
            if let Some(old_addr) = old_addr {
                release(&mut self.conn_pools, &old_addr);
            }
        }
        backend.conns = self.conn_pools[instance.addr.as_str()].conns.clone();
        let backend = Arc::new(backend);
        self.backends.insert(
            instance.id.clone(),
            KnownBackend {
                backend: backend.clone(),
                seen: build,
            },
        );
        Some(backend)
    }

    /// `service`'s [`Prepared`]: the one kept from an earlier snapshot while
    /// its ready set is unchanged, else a new one.
    fn prepared_for(&mut self, service: &str, ready: &[Arc<Backend>]) -> Arc<Prepared> {
        match self.prepared.get_mut(service) {
            Some(kept) if same_ready_set(&kept.ready, ready) => {
                kept.ready = ready.to_vec();
                kept.prepared.clone()
            }
            kept => {
                let prepared = Arc::new(match kept {
                    Some(kept) => Prepared::following(&kept.prepared, &kept.ready, ready),
                    None => Prepared::default(),
                });
                self.prepared.insert(
                    service.to_owned(),
                    ServicePrepared {
                        ready: ready.to_vec(),
                        prepared: prepared.clone(),
                    },
                );
                prepared
            }
        }
    }

    fn entry(
        &mut self,
        name: &str,
        route: Route,
        pools: &BTreeMap<String, Arc<ServicePool>>,
    ) -> RouteEntry {
        let pool = pools
            .get(&route.service)
            .expect("every routed service has a pool")
            .clone();
        let live = self.routes.entry(name.to_owned()).or_default();
        let balancer = Balancer::new(
            route.policy,
            route.hash_key.as_ref(),
            &pool.ready,
            &pool.prepared,
            live.rotation.clone(),
        );
        let stats = live.stats.clone();
        live.limiter = match (&route.rate_limit, live.limiter.take()) {
            (None, _) => None,
            (Some(limit), Some(kept)) if kept.limit() == limit => Some(kept),
            (Some(limit), _) => Some(Arc::new(RouteLimiter::new(limit.clone()))),
        };
        RouteEntry {
            name: name.to_owned(),
            route,
            pool,
            balancer,
            stats,
            limiter: live.limiter.clone(),
        }
    }
}

/// The current table, readable without a lock, plus a way to wait for changes.
#[derive(Clone)]
pub struct TableHandle {
    current: Arc<ArcSwap<RoutingTable>>,
    generation: watch::Receiver<u64>,
}

/// The writing side of a [`TableHandle`].
pub struct TablePublisher {
    current: Arc<ArcSwap<RoutingTable>>,
    generation: watch::Sender<u64>,
}

impl TableHandle {
    pub fn new(initial: RoutingTable) -> (TableHandle, TablePublisher) {
        let (tx, rx) = watch::channel(initial.generation);
        let current = Arc::new(ArcSwap::from_pointee(initial));
        (
            TableHandle {
                current: current.clone(),
                generation: rx,
            },
            TablePublisher {
                current,
                generation: tx,
            },
        )
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// Wait until `service` has a ready instance, up to `timeout`; returns the
    /// snapshot that has one.
    pub async fn wait_for_ready(
        &self,
        service: &str,
        timeout: std::time::Duration,
    ) -> Option<Arc<RoutingTable>> {
        self.wait_for(service, timeout, |p| !p.ready.is_empty())
            .await
    }

    /// Wait until `service`'s pool satisfies `accept`, up to `timeout`;
    /// returns the snapshot where it does.
    pub async fn wait_for(
        &self,
        service: &str,
        timeout: std::time::Duration,
        accept: impl Fn(&ServicePool) -> bool,
    ) -> Option<Arc<RoutingTable>> {
        self.wait_until(timeout, |t| t.pool(service).is_some_and(|p| accept(p)))
            .await
    }

    /// Wait until a snapshot was built from a connected registry (both
    /// watchers listed), up to `timeout`; false if none was in time.
    pub async fn wait_for_registry(&self, timeout: std::time::Duration) -> bool {
        self.wait_until(timeout, |t| t.registry_connected)
            .await
            .is_some()
    }

    /// Wait until a snapshot satisfies `accept`, up to `timeout`; that snapshot.
    async fn wait_until(
        &self,
        timeout: std::time::Duration,
        accept: impl Fn(&RoutingTable) -> bool,
    ) -> Option<Arc<RoutingTable>> {
        let mut changes = self.generation.clone();
        let wait = async {
            loop {
                changes.borrow_and_update();
                let table = self.load();
                if accept(&table) {
                    return Some(table);
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// A receiver notified on every new snapshot.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }
}

impl TablePublisher {
    pub fn publish(&self, table: RoutingTable) {
        let generation = table.generation;
        self.current.store(Arc::new(table));
        self.generation.send_replace(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &str, id: &str, state: InstanceState) -> (String, Instance) {
        let mut i = Instance::new(service, "127.0.0.1:1000");
        i.id = id.into();
        i.state = state;
        (format!("/shoal/instances/{service}/{id}"), i)
    }

    fn route(name: &str, json: &str) -> (String, NamedRoute) {
        let route: Route = serde_json::from_str(json).unwrap();
        route.validate().unwrap();
        (
            format!("/shoal/routes/{name}"),
            NamedRoute {
                name: name.into(),
                route,
            },
        )
    }

    fn defaults() -> Defaults {
        Defaults {
            service: "app".into(),
            policy: BalancePolicy::LeastRequest,
        }
    }

    fn build(
        live: &mut LiveState,
        instances: &[(String, Instance)],
        routes: &[(String, NamedRoute)],
    ) -> RoutingTable {
        live.build(
            &instances.iter().cloned().collect(),
            &routes.iter().cloned().collect(),
            &defaults(),
            true,
            1,
            Instant::now(),
        )
    }

    #[test]
    fn only_ready_instances_get_requests() {
        let mut live = LiveState::default();
        let t = build(
            &mut live,
            &[
                instance("app", "a", InstanceState::Ready),
                instance("app", "b", InstanceState::Starting),
                instance("app", "c", InstanceState::Draining),
            ],
            &[],
        );
        let pool = t.pool("app").unwrap();
        assert_eq!(pool.all.len(), 3);
        assert_eq!(pool.ready.iter().map(|b| b.id()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(t.resolve(Some("x"), "/anything").name, DEFAULT_ROUTE);
        assert!(
            registry::keys::validate_segment("route", DEFAULT_ROUTE).is_err(),
            "no route can be called that"
        );
    }

    #[test]
    fn host_then_longest_prefix_wins_at_segment_boundaries() {
        let mut live = LiveState::default();
        let t = build(
            &mut live,
            &[],
            &[
                route("root", r#"{"service":"web","path_prefix":"/"}"#),
                route("api", r#"{"service":"api","path_prefix":"/api"}"#),
                route("api-v2", r#"{"service":"api2","path_prefix":"/api/v2/"}"#),
                route(
                    "admin-host",
                    r#"{"service":"admin","host":"Admin.Example.com","path_prefix":"/"}"#,
                ),
            ],
        );
        assert_eq!(t.resolve(Some("x.com"), "/api").name, "api");
        assert_eq!(t.resolve(Some("x.com"), "/api/users").name, "api");
        assert_eq!(t.resolve(Some("x.com"), "/apix").name, "root");
        assert_eq!(t.resolve(Some("x.com"), "/api/v2/items").name, "api-v2");
        assert_eq!(
            t.resolve(Some("admin.example.com:8080"), "/api").name,
            "admin-host"
        );
        assert_eq!(t.resolve(None, "/api").name, "api");
        // Every service a route names has a pool, even with no instances yet.
        assert!(t.pool("api2").is_some_and(|p| p.ready.is_empty()));
    }

    #[test]
    fn prefixes_can_be_stripped() {
        let mut live = LiveState::default();
        let t = build(
            &mut live,
            &[],
            &[route(
                "api",
                r#"{"service":"api","path_prefix":"/api","strip_prefix":true}"#,
            )],
        );
        let r = t.resolve(None, "/api/users/7");
        assert_eq!(r.forward_path("/api/users/7"), "/users/7");
        assert_eq!(r.forward_path("/api"), "/");
        assert_eq!(r.path_after_prefix("/api/users/7"), "/users/7");
    }

    #[test]
    fn slow_start_counts_from_the_instance_start_not_from_when_we_saw_it() {
        let mut live = LiveState::default();
        let (key, mut old) = instance("app", "old", InstanceState::Ready);
        old.started_at = chrono::Utc::now() - chrono::Duration::seconds(60);
        let fresh = instance("app", "fresh", InstanceState::Ready);
        let now = Instant::now();
        let t = build(&mut live, &[(key, old), fresh], &[]);
        let warmth = |id: &str| {
            let b = t
                .pool("app")
                .unwrap()
                .ready
                .iter()
                .find(|b| b.id() == id)
                .unwrap()
                .clone();
            b.state.warmth(now, std::time::Duration::from_secs(10))
        };
        assert_eq!(warmth("old"), 1.0);
        assert!(warmth("fresh") < 0.2, "{}", warmth("fresh"));
    }

    #[test]
    fn live_state_survives_rebuilds_and_is_dropped_with_the_instance() {
        let mut live = LiveState::default();
        let a = instance("app", "a", InstanceState::Ready);
        let t1 = build(&mut live, std::slice::from_ref(&a), &[]);
        t1.pool("app").unwrap().ready[0].state.stats.start();
        let t2 = build(
            &mut live,
            &[a.clone(), instance("app", "b", InstanceState::Ready)],
            &[],
        );
        let a2 = t2
            .pool("app")
            .unwrap()
            .ready
            .iter()
            .find(|b| b.id() == "a")
            .unwrap()
            .clone();
        assert_eq!(
            a2.state.in_flight(),
            1,
            "in-flight count kept across rebuilds"
        );
        build(&mut live, &[], &[]);
        let t4 = build(&mut live, &[a], &[]);
        assert_eq!(
            t4.pool("app").unwrap().ready[0].state.in_flight(),
            0,
            "a returning instance starts fresh"
        );
    }

    /// The connection pools hold connections to one address each (the
    /// pool does not check a parked connection's address): entries at one
    /// address share its pool, and an entry moved to another address gets
    /// that address's pool, not its old one.
    #[test]
    fn connection_pools_follow_the_instance_address() {
        let at = |id: &str, addr: &str| {
            let (key, mut i) = instance("app", id, InstanceState::Ready);
            i.addr = addr.into();
            (key, i)
        };
        let conns = |t: &RoutingTable, id: &str| {
            let pool = t.pool("app").unwrap();
            pool.all
                .iter()
                .find(|b| b.id() == id)
                .unwrap()
                .conns
                .clone()
        };
        let mut live = LiveState::default();
        let t1 = build(
            &mut live,
            &[
                at("a", "127.0.0.1:1000"),
                at("b", "127.0.0.1:1000"),
                at("c", "127.0.0.1:2000"),
            ],
            &[],
        );
        assert!(
            Arc::ptr_eq(&conns(&t1, "a"), &conns(&t1, "b")),
            "one address, one pool"
        );
        assert!(!Arc::ptr_eq(&conns(&t1, "a"), &conns(&t1, "c")));
        let listed = |t: &RoutingTable, id: &str| {
            t.conn_pools
                .iter()
                .filter(|p| Arc::ptr_eq(p, &conns(t, id)))
                .count()
        };
        assert_eq!(
            t1.conn_pools.len(),
            2,
            "the table lists each address's pool"
        );
        assert_eq!((listed(&t1, "a"), listed(&t1, "c")), (1, 1));
        let t2 = build(
            &mut live,
            &[
                at("a", "127.0.0.1:2000"),
                at("b", "127.0.0.1:1000"),
                at("c", "127.0.0.1:2000"),
            ],
            &[],
        );
        assert!(
            Arc::ptr_eq(&conns(&t2, "a"), &conns(&t1, "c")),
            "a moved to c's address"
        );
        assert!(
            Arc::ptr_eq(&conns(&t2, "b"), &conns(&t1, "b")),
            "b's pool kept"
        );
        assert_eq!(t2.conn_pools.len(), 2);
        assert_eq!((listed(&t2, "a"), listed(&t2, "b")), (1, 1));
        let t3 = build(&mut live, &[at("b", "127.0.0.1:1000")], &[]);
        assert_eq!(
            t3.conn_pools.len(),
            1,
            "an address no entry names is not swept"
        );
        assert_eq!(listed(&t3, "b"), 1);
    }

    /// What a scan in table order finds: the reference the index must agree with.
    fn scanned<'t>(t: &'t RoutingTable, host: Option<&str>, path: &str) -> &'t str {
        let host = host.map(strip_port);
        t.routes
            .iter()
            .find(|r| {
                let host_ok = match (&r.route.host, host) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (Some(_), None) => false,
                };
                host_ok && prefix_matches(&r.route.path_prefix, path)
            })
            .map_or(DEFAULT_ROUTE, |r| r.name.as_str())
    }

    #[test]
    fn the_route_index_finds_what_a_scan_finds() {
        // Routes on nested prefixes (with and without a trailing slash),
        // hosts in mixed case, and names that tie on the same prefix.
        let mut routes = Vec::new();
        for i in 0..60 {
            let prefix = match i % 6 {
                0 => format!("/s{}", i % 7),
                1 => format!("/s{}/", i % 7),
                2 => format!("/s{}/t{}", i % 7, i % 5),
                3 => format!("/s{}/t{}/", i % 7, i % 5),
                4 => "/".to_owned(),
                _ => format!("/s{}/t{}/u", i % 7, i % 5),
            };
            let host = match i % 4 {
                0 => format!(r#","host":"H{}.example""#, i % 3),
                _ => String::new(),
            };
            let json = format!(r#"{{"service":"app","path_prefix":"{prefix}"{host}}}"#);
            routes.push(route(&format!("r{:02}", i % 45), &json));
        }
        let mut live = LiveState::default();
        let t = build(&mut live, &[], &routes);
        let mut checked = 0;
        for host in [
            None,
            Some("h0.example"),
            Some("H1.EXAMPLE:80"),
            Some("other"),
        ] {
            for s in 0..8 {
                for path in [
                    format!("/s{s}"),
                    format!("/s{s}/"),
                    format!("/s{s}x"),
                    format!("/s{s}/t{}", s % 5),
                    format!("/s{s}/t{}/u/v", s % 5),
                    format!("/s{s}/t{}x/", s % 5),
                    "/".to_owned(),
                    "/é/s1".to_owned(),
                ] {
                    assert_eq!(
                        t.resolve(host, &path).name,
                        scanned(&t, host, &path),
                        "{host:?} {path}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 256);
    }

    #[test]
    fn a_service_ring_is_rebuilt_only_when_its_ready_set_changes() {
        let mut live = LiveState::default();
        let ch = route(
            "ch",
            r#"{"service":"app","path_prefix":"/","policy":"consistent-hash","hash_key":{"from":"header","name":"x-user"}}"#,
        );
        let ring = |t: &RoutingTable| match &t.resolve(None, "/").balancer {
            Balancer::ConsistentHash(_, ring) => ring.clone(),
            other => panic!("{other:?}"),
        };
        let (a, b) = (
            instance("app", "a", InstanceState::Ready),
            instance("app", "b", InstanceState::Ready),
        );
        let starting = instance("app", "c", InstanceState::Starting);
        let t1 = build(
            &mut live,
            std::slice::from_ref(&a),
            std::slice::from_ref(&ch),
        );
        let t2 = build(&mut live, &[a.clone(), starting], std::slice::from_ref(&ch));
        assert!(
            Arc::ptr_eq(&ring(&t1), &ring(&t2)),
            "only a starting instance came"
        );
        let t3 = build(&mut live, &[a, b], std::slice::from_ref(&ch));
        assert!(!Arc::ptr_eq(&ring(&t2), &ring(&t3)));
        assert_eq!(ring(&t3).len(), 2);
        assert_eq!(
            *ring(&t3),
            crate::balance::consistent_hash::ring_of(&t3.pool("app").unwrap().ready),
            "updated from t2's ring: the ring built anew"
        );
    }

    #[test]
    fn a_rebuild_does_not_restart_the_round_robin_rotation() {
        let mut live = LiveState::default();
        let apps = [
            instance("app", "a", InstanceState::Ready),
            instance("app", "b", InstanceState::Ready),
        ];
        let rr = route(
            "rr",
            r#"{"service":"app","path_prefix":"/","policy":"round-robin"}"#,
        );
        let pick = |t: &RoutingTable| {
            let entry = t.resolve(None, "/");
            let headers = http::HeaderMap::new();
            let request = crate::balance::RequestView {
                path: "/",
                query: None,
                headers: &headers,
            };
            let ctx = crate::balance::PickContext {
                now: Instant::now() + std::time::Duration::from_secs(60),
                slow_start: std::time::Duration::ZERO,
            };
            let pick = entry.balancer.pick(&entry.pool.ready, &request, &[], &ctx);
            entry.pool.ready[pick.unwrap().index].id().to_owned()
        };
        // The same instances and routes, rebuilt between every pick (as when an
        // instance rewrites its entry): the turns still alternate.
        let picks: Vec<String> = (0..6)
            .map(|_| pick(&build(&mut live, &apps, std::slice::from_ref(&rr))))
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b", "a", "b"]);
    }

    #[tokio::test]
    async fn waiting_for_a_ready_instance() {
        let mut live = LiveState::default();
        let (handle, publisher) = TableHandle::new(build(&mut live, &[], &[]));
        let waiter = {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle
                    .wait_for_ready("app", std::time::Duration::from_secs(5))
                    .await
            })
        };
        publisher.publish(build(
            &mut live,
            &[instance("app", "a", InstanceState::Starting)],
            &[],
        ));
        publisher.publish(build(
            &mut live,
            &[instance("app", "a", InstanceState::Ready)],
            &[],
        ));
        let table = waiter.await.unwrap().expect("woken by the ready instance");
        assert_eq!(table.pool("app").unwrap().ready.len(), 1);
        assert!(
            handle
                .wait_for_ready("other", std::time::Duration::from_millis(20))
                .await
                .is_none()
        );
    }
}
