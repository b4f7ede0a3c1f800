//! `kv-bench`: PUT and GET throughput and p99 of the distributed key-value
//! store through the gateway, for R = 1 and 2 at 1, 2 and 4 instances (and
//! R = 2 with `--durability fsync` at 2 and 4, a data directory each; and
//! R = 2 at 2 instances direct to each key's primary, no gateway), and
//! etcd's own put and get and Redis's SET and GET (memory only, `appendfsync
//! everysec`, and with a replica and `WAIT 1`; a connection per client) in
//! the same run, as one table. Run it through
//! `bench/kv.sh`, which builds the release binaries first.
//!
//! Each configuration gets a fresh etcd, gateway (route `/kv/` by consistent
//! hash on the key) and app servers; CLIENTS concurrent clients first PUT
//! random keys of KEYS for SECS seconds, then GET them for SECS seconds.
//! etcd is measured the same way with the Rust client (`etcd-client`), one
//! client connection shared by the CLIENTS tasks.
//!
//! `ROWS` (comma-separated) measures only the rows whose `store/instances`
//! label contains one of its parts, e.g. `ROWS="shoal R=2/2,direct,etcd,WAIT"`
//! for a quick look at the replicated rows; every row by default.
//!
//! Direct to the primary: the client places each key as the store does
//! (the placement ring, `registry::ring::Ring`, over the instances' ids in
//! id order, all of weight 1) and sends the request to that instance. An
//! instance that is not the key's primary relays the request and says so
//! in `x-shoal-kv-primary`; the run counts those and fails if more than 1 %
//! were relayed, so the row cannot silently measure the relay instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app_server::kv::membership::SETTLE;
use rand::Rng;
use registry::ring::IdRing;
use shoal_bench::redis::{Persistence, RedisServer};
use shoal_bench::settings::env_number;
use shoal_tests::platform::KV_ROUTE;
use shoal_tests::{AppServerOptions, Etcd, Platform};
use tokio::sync::Mutex;

#[derive(Clone, Copy)]
struct Settings {
    secs: u64,
    clients: usize,
    keys: usize,
    value_bytes: usize,
}

/// ops/s, p99 ms, errors.
type Figures = (f64, f64, u64);

/// Run `op(client, key)` from `s.clients` tasks for `s.secs` seconds.
async fn drive<F, Fut>(s: Settings, op: F) -> Figures
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(s.secs);
    let mut tasks = Vec::new();
    for client in 0..s.clients {
        let (op, latencies, errors) = (op.clone(), latencies.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < end {
                let key = rand::rng().random_range(0..s.keys);
                let t = Instant::now();
                if op(client, key).await {
                    mine.push(t.elapsed());
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            latencies.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().await.clone();
    l.sort();
    let p99 = l
        .get(l.len() * 99 / 100)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    (
        l.len() as f64 / elapsed,
        p99,
        errors.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Where the key-value clients send their requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The gateway's `/kv/` route (consistent hash on the key).
    Gateway,
    /// Each key's primary instance, placed by the client.
    Primary,
}

/// Where the request for key `k{k}` goes: `{base}k{k}`.
struct Bases {
    /// By key index, when the target is the primary; else one base for all.
    per_key: Vec<Arc<str>>,
}

impl Bases {
    fn of(&self, k: usize) -> &str {
        &self.per_key[k % self.per_key.len()]
    }
}

/// The primary of every key `k0..k{keys}` as the store places it.
fn primaries(platform: &Platform, keys: usize) -> Bases {
    let urls: HashMap<&str, Arc<str>> = platform
        .app_servers
        .iter()
        .map(|a| (a.id.as_str(), Arc::from(a.url("/kv/").as_str())))
        .collect();
    let ids: Vec<&str> = urls.keys().copied().collect();
    let ring = IdRing::new(&ids);
    let per_key = (0..keys)
        .map(|k| {
            let primary = ring.rank(&format!("k{k}"), 1)[0];
            urls[primary].clone()
        })
        .collect();
    Bases { per_key }
}

/// Responses an instance relayed to the key's primary (`x-shoal-kv-primary`).
type Relayed = Arc<std::sync::atomic::AtomicU64>;

fn count_relayed(relayed: &Relayed, response: &reqwest::Response) {
    if response.headers().contains_key("x-shoal-kv-primary") {
        relayed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn shoal(
    s: Settings,
    replicas: usize,
    instances: usize,
    fsync: bool,
    target: Target,
) -> anyhow::Result<(Figures, Figures)> {
    // With `fsync`, each instance has its own data directory.
    let data = tempfile::tempdir()?;
    let mut builder = Platform::builder().route("kv", KV_ROUTE).gateway(&[]);
    for i in 0..instances {
        let mut extra = vec!["--kv-replicas".into(), replicas.to_string()];
        if fsync {
            let dir = data.path().join(i.to_string());
            extra.extend(["--durability".into(), "fsync".into(), "--data-dir".into()]);
            extra.push(dir.display().to_string());
        }
        let options = AppServerOptions {
            extra,
            ..AppServerOptions::default()
        };
        builder = builder.app_servers_with(1, options);
    }
    // Returns once every instance is ready and the gateway lists each.
    let platform = builder.try_start().await?;
    // The store's membership settles SETTLE after its last change (reads
    // ask previous owners until then), and that is not visible from outside:
    // measure the settled store, a second after it must have settled.
    tokio::time::sleep(SETTLE + Duration::from_secs(1)).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(s.clients)
        .build()?;
    let bases = Arc::new(match target {
        Target::Gateway => Bases {
            per_key: vec![Arc::from(platform.gateway().url("/kv/").as_str())],
        },
        Target::Primary => primaries(&platform, s.keys),
    });
    let relayed = Relayed::default();
    let value = bytes::Bytes::from(vec![b'v'; s.value_bytes]);
    let put = {
        let (http, bases, value, relayed) =
            (http.clone(), bases.clone(), value.clone(), relayed.clone());
        move |_, k: usize| {
            let (http, bases, value, relayed) =
                (http.clone(), bases.clone(), value.clone(), relayed.clone());
            async move {
                match http
                    .put(format!("{}k{k}", bases.of(k)))
                    .body(value)
                    .send()
                    .await
                {
                    Ok(r) => {
                        count_relayed(&relayed, &r);
                        r.status().is_success()
                    }
                    Err(_) => false,
                }
            }
        }
    };
    let get = {
        let (http, bases, relayed) = (http.clone(), bases.clone(), relayed.clone());
        move |_, k: usize| {
            let (http, bases, relayed) = (http.clone(), bases.clone(), relayed.clone());
            async move {
                match http.get(format!("{}k{k}", bases.of(k))).send().await {
                    Ok(r) if r.status() == 200 || r.status() == 404 => {
                        count_relayed(&relayed, &r);
                        r.bytes().await.is_ok()
                    }
                    _ => false,
                }
            }
        }
    };
    let puts = drive(s, put).await;
    let gets = drive(s, get).await;
    drop(platform);
    if target == Target::Primary {
        let relayed = relayed.load(std::sync::atomic::Ordering::Relaxed);
        let total = (puts.0 + gets.0) * s.secs as f64;
        anyhow::ensure!(
            (relayed as f64) <= total / 100.0,
            "{relayed} of about {total:.0} requests sent to the key's primary were relayed by another instance: \
             the client's placement does not match the store's"
        );
    }
    Ok((puts, gets))
}

async fn etcd_own(s: Settings) -> anyhow::Result<(Figures, Figures)> {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let value = vec![b'v'; s.value_bytes];
    let put = {
        let (client, value) = (client.clone(), value.clone());
        move |_, k: usize| {
            let (mut client, value) = (client.clone(), value.clone());
            async move { client.put(format!("bench/k{k}"), value, None).await.is_ok() }
        }
    };
    let get = {
        let client = client.clone();
        move |_, k: usize| {
            let mut client = client.clone();
            async move { client.get(format!("bench/k{k}"), None).await.is_ok() }
        }
    };
    let puts = drive(s, put).await;
    let gets = drive(s, get).await;
    Ok((puts, gets))
}

/// Redis with a connection per client (as Shoal's clients each have their
/// own): with `replicated`, a replica, and each SET followed by `WAIT 1` on
/// the same connection (acknowledged once the replica has it, as Shoal's
/// R = 2 acknowledges once both owners have it).
async fn redis_own(
    s: Settings,
    persistence: Persistence,
    replicated: bool,
) -> anyhow::Result<(Figures, Figures)> {
    let (primary, _replica) = if replicated {
        let (primary, replica) = RedisServer::start_replicated(persistence).await?;
        (primary, Some(replica))
    } else {
        (RedisServer::start(persistence, None).await?, None)
    };
    let mut connections = Vec::with_capacity(s.clients);
    for _ in 0..s.clients {
        connections.push(primary.connect().await?);
    }
    let connections = Arc::new(connections);
    let value = bytes::Bytes::from(vec![b'v'; s.value_bytes]);
    let put = {
        let (connections, value) = (connections.clone(), value.clone());
        move |client: usize, k: usize| {
            let (mut c, value) = (connections[client].clone(), value.clone());
            async move {
                let key = format!("bench/k{k}");
                if !replicated {
                    return redis::cmd("SET")
                        .arg(key)
                        .arg(&value[..])
                        .exec_async(&mut c)
                        .await
                        .is_ok();
                }
                let acked: Result<(String, i64), _> = redis::pipe()
                    .cmd("SET")
                    .arg(key)
                    .arg(&value[..])
                    .cmd("WAIT")
                    .arg(1)
                    .arg(1000)
                    .query_async(&mut c)
                    .await;
                acked.is_ok_and(|(_, replicas)| replicas >= 1)
            }
        }
    };
    let get = move |client: usize, k: usize| {
        let mut c = connections[client].clone();
        async move {
            redis::cmd("GET")
                .arg(format!("bench/k{k}"))
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
                .is_ok()
        }
    };
    let puts = drive(s, put).await;
    let gets = drive(s, get).await;
    Ok((puts, gets))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_tests::init_logging();
    let s = Settings {
        secs: env_number("SECS", 5, 1).map_err(anyhow::Error::msg)?,
        clients: env_number("CLIENTS", 32, 1).map_err(anyhow::Error::msg)? as usize,
        keys: env_number("KEYS", 1000, 1).map_err(anyhow::Error::msg)? as usize,
        value_bytes: env_number("VALUE_BYTES", 100, 1).map_err(anyhow::Error::msg)? as usize,
    };
    eprintln!(
        "kv-bench: {} s per measurement, {} clients, {} keys, {}-byte values",
        s.secs, s.clients, s.keys, s.value_bytes
    );
    let only = std::env::var("ROWS").unwrap_or_default();
    let wanted = |store: &str, instances: &str| {
        let label = format!("{store}/{instances}");
        only.is_empty() || only.split(',').any(|part| label.contains(part.trim()))
    };
    let mut rows = Vec::new();
    for (replicas, fsync) in [(1, false), (2, false), (2, true)] {
        for instances in [1, 2, 4] {
            let durability = if fsync { " --durability fsync" } else { "" };
            if fsync && instances == 1
                || !wanted(
                    &format!("shoal R={replicas}{durability}"),
                    &instances.to_string(),
                )
            {
                continue;
            }
            eprintln!("  measuring R = {replicas}{durability}, {instances} instance(s)…");
            let (puts, gets) = shoal(s, replicas, instances, fsync, Target::Gateway).await?;
            rows.push((
                format!("shoal R={replicas}{durability}"),
                instances.to_string(),
                puts,
                gets,
            ));
        }
    }
    let direct = "shoal R=2, direct to the primary";
    if wanted(direct, "2") {
        eprintln!("  measuring R = 2, 2 instances, direct to each key's primary…");
        let (puts, gets) = shoal(s, 2, 2, false, Target::Primary).await?;
        rows.push((direct.into(), "2".into(), puts, gets));
    }
    if wanted("etcd (1 member)", "-") {
        eprintln!("  measuring etcd…");
        let (puts, gets) = etcd_own(s).await?;
        rows.push(("etcd (1 member)".into(), "-".into(), puts, gets));
    }
    for (name, persistence, replicated) in [
        ("redis (appendonly no)", Persistence::Memory, false),
        (
            "redis (appendfsync everysec)",
            Persistence::EverySecond,
            false,
        ),
        ("redis + 1 replica, WAIT 1", Persistence::Memory, true),
    ] {
        if !wanted(name, "-") {
            continue;
        }
        eprintln!("  measuring {name}…");
        let (puts, gets) = redis_own(s, persistence, replicated).await?;
        rows.push((name.into(), "-".into(), puts, gets));
    }

    println!("| store | instances | PUT ops/s | PUT p99 ms | GET ops/s | GET p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    for (store, n, p, g) in rows {
        println!(
            "| {store} | {n} | {:.0} | {:.2} | {:.0} | {:.2} | {} |",
            p.0,
            p.1,
            g.0,
            g.1,
            p.2 + g.2
        );
    }
    Ok(())
}
