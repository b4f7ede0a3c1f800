//! `table_rebuild`: what one registry change costs the gateway's discovery
//! task, at 2 to 10,000 instances and 10 to 10,000 routes, in process (no
//! etcd, no sockets): the gateway's own `Grace` and `LiveState` fed the maps
//! its watchers would hold, one instance put and then deleted per sample.
//!
//! Columns (medians of SAMPLES changes, in ms):
//! - `map copy`: a deep copy of the instances map, what the registry
//!   watcher pays when it applies a change while a reader still holds the
//!   previous snapshot;
//! - `rebuild`: `Grace::apply` + `LiveState::build_routable`, what the
//!   discovery task runs per change before it publishes the table (the
//!   round-robin schedule and the consistent-hash ring of a changed
//!   service included: the routes' balancers are built with the table).
//!
//! Usage: `table_rebuild [SAMPLES [INSTANCES ROUTES]]` (default 11 samples,
//! every configuration; INSTANCES ROUTES: that one alone, e.g. to profile it).
//! Run the release build:
//! `cargo run --release -p shoal-bench --bin table_rebuild`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::grace::Grace;
use gateway::table::{Defaults, LiveState};
use registry::model::{BalancePolicy, NamedRoute, Route};
use registry::{Instance, InstanceState};

const SERVICE: &str = "app";
const CONFIGURATIONS: [(usize, usize); 6] = [
    (2, 10),
    (100, 10),
    (1_000, 10),
    (10_000, 10),
    (2, 10_000),
    (10_000, 10_000),
];

fn main() -> anyhow::Result<()> {
    let samples: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|e| anyhow::anyhow!("SAMPLES must be a positive number, not {n:?}: {e}"))?,
        None => 11,
    };
    anyhow::ensure!(samples > 0, "SAMPLES must be at least 1");
    let count = |n: usize, what: &str| -> anyhow::Result<Option<usize>> {
        std::env::args()
            .nth(n)
            .map(|v| {
                v.parse()
                    .map_err(|e| anyhow::anyhow!("{what} must be a number, not {v:?}: {e}"))
            })
            .transpose()
    };
    let configurations = match (count(2, "INSTANCES")?, count(3, "ROUTES")?) {
        (Some(instances), Some(routes)) => vec![(instances, routes)],
        (None, None) => CONFIGURATIONS.to_vec(),
        _ => anyhow::bail!("give both INSTANCES and ROUTES, or neither"),
    };
    println!("one registry change (put, then delete, of one instance), median of {samples}, ms");
    println!();
    println!("| instances | routes | map copy | rebuild |");
    println!("|-----------|--------|----------|---------|");
    for (instances, routes) in configurations {
        let row = measure(instances, routes, samples);
        println!(
            "| {instances:>9} | {routes:>6} | {:>8.2} | {:>7.2} |",
            ms(row.copy),
            ms(row.rebuild),
        );
    }
    Ok(())
}

struct Row {
    copy: Duration,
    rebuild: Duration,
}

fn measure(instance_count: usize, route_count: usize, samples: usize) -> Row {
    let mut instances: BTreeMap<String, Instance> = (0..instance_count)
        .map(|n| ready(&format!("fake-{n:05}"), n))
        .collect();
    let routes = routes(route_count);
    let defaults = Defaults {
        service: SERVICE.into(),
        policy: BalancePolicy::LeastRequest,
    };
    let mut grace = Grace::new(Duration::from_secs(10));
    let mut live = LiveState::default();
    let (mut copy, mut rebuild) = (vec![], vec![]);
    let mut generation = 0;
    for sample in 0..samples * 2 {
        // Even samples put a probe instance, odd ones delete it again.
        let probe = ready(&format!("probe-{}", sample / 2), sample);
        if sample % 2 == 0 {
            instances.insert(probe.0, probe.1);
        } else {
            instances.remove(&probe.0);
        }
        let started = Instant::now();
        let current = Arc::new(instances.clone());
        copy.push(started.elapsed());

        generation += 1;
        let started = Instant::now();
        let routable = grace.apply(&current, started);
        let table = live.build_routable(&routable, &routes, &defaults, true, generation, started);
        rebuild.push(started.elapsed());
        std::hint::black_box(table);
    }
    Row {
        copy: median(copy),
        rebuild: median(rebuild),
    }
}

/// A ready instance of [`SERVICE`] and its registry key.
fn ready(id: &str, n: usize) -> (String, Instance) {
    let mut instance = Instance::new(SERVICE, format!("127.0.0.1:{}", 20_000 + n % 2));
    instance.id = id.to_owned();
    instance.state = InstanceState::Ready;
    (format!("/shoal/instances/{SERVICE}/{id}"), instance)
}

/// The measured routes (one per policy) behind `count - 4` filler routes.
fn routes(count: usize) -> BTreeMap<String, NamedRoute> {
    let measured = ["round-robin", "least-request", "consistent-hash", "sticky"];
    let mut routes = BTreeMap::new();
    for (n, name) in measured.iter().enumerate() {
        let policy = match n {
            0 => r#""round-robin""#,
            1 => r#""least-request""#,
            2 => r#""consistent-hash", "hash_key": {"from": "header", "name": "x-user"}"#,
            _ => r#""sticky""#,
        };
        routes.insert(
            format!("/shoal/routes/{name}"),
            route(
                name,
                &format!(
                    r#"{{"path_prefix": "/{name}/", "service": "{SERVICE}", "policy": {policy}}}"#
                ),
            ),
        );
    }
    for n in 0..count.saturating_sub(measured.len()) {
        let name = format!("filler-{n:05}");
        routes.insert(
            format!("/shoal/routes/{name}"),
            route(
                &name,
                &format!(r#"{{"path_prefix": "/round-robin/{name}/", "service": "{SERVICE}"}}"#),
            ),
        );
    }
    routes
}

fn route(name: &str, json: &str) -> NamedRoute {
    let route: Route = serde_json::from_str(json).expect("a valid route");
    NamedRoute {
        name: name.to_owned(),
        route,
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
