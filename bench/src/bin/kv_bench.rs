//! `kv-bench`: PUT and GET throughput and p99 of the distributed key-value
//! store through the gateway, for R = 1 and 2 at 1, 2 and 4 instances (and
//! R = 2 with `--durability fsync` at 2 and 4, a data directory each), and
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use app_server::kv::membership::SETTLE;
use rand::Rng;
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

async fn shoal(
    s: Settings,
    replicas: usize,
    instances: usize,
    fsync: bool,
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
    let base = Arc::new(platform.gateway().url("/kv/"));
    let value = bytes::Bytes::from(vec![b'v'; s.value_bytes]);
    let put = {
        let (http, base, value) = (http.clone(), base.clone(), value.clone());
        move |_, k: usize| {
            let (http, base, value) = (http.clone(), base.clone(), value.clone());
            async move {
                http.put(format!("{base}k{k}"))
                    .body(value)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        }
    };
    let get = {
        let (http, base) = (http.clone(), base.clone());
        move |_, k: usize| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                match http.get(format!("{base}k{k}")).send().await {
                    Ok(r) if r.status() == 200 || r.status() == 404 => r.bytes().await.is_ok(),
                    _ => false,
                }
            }
        }
    };
    let puts = drive(s, put).await;
    let gets = drive(s, get).await;
    drop(platform);
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
    let mut rows = Vec::new();
    for (replicas, fsync) in [(1, false), (2, false), (2, true)] {
        for instances in [1, 2, 4] {
            if fsync && instances == 1 {
                continue;
            }
            let durability = if fsync { " --durability fsync" } else { "" };
            eprintln!("  measuring R = {replicas}{durability}, {instances} instance(s)…");
            let (puts, gets) = shoal(s, replicas, instances, fsync).await?;
            rows.push((
                format!("shoal R={replicas}{durability}"),
                instances.to_string(),
                puts,
                gets,
            ));
        }
    }
    eprintln!("  measuring etcd…");
    let (puts, gets) = etcd_own(s).await?;
    rows.push(("etcd (1 member)".into(), "-".into(), puts, gets));
    for (name, persistence, replicated) in [
        ("redis (appendonly no)", Persistence::Memory, false),
        (
            "redis (appendfsync everysec)",
            Persistence::EverySecond,
            false,
        ),
        ("redis + 1 replica, WAIT 1", Persistence::Memory, true),
    ] {
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
