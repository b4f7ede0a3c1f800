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
//! random keys of KEYS for SECS seconds, then GET them for SECS seconds,
//! each over its own keep-alive HTTP/1.1 connection (hyper's bare client
//! connection; one per instance when sending to the primaries).
//! etcd is measured the same way with the Rust client (`etcd-client`), one
//! client connection shared by the CLIENTS tasks.
//!
//! Beside each rate: the CPU an operation cost, the servers' (the gateway
//! and instances, etcd, Redis and its replica) and this load generator's,
//! from `/proc/{pid}/stat` over the measurement. Servers and load share the
//! machine, so a client that costs more leaves the servers less.
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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use app_server::kv::membership::SETTLE;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use rand::Rng;
use registry::ring::IdRing;
use shoal_bench::cpu::CpuMeter;
use shoal_bench::redis::{Persistence, RedisServer};
use shoal_bench::settings::env_number;
use shoal_tests::platform::KV_ROUTE;
use shoal_tests::{AppServerOptions, Etcd, Platform};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Clone, Copy)]
struct Settings {
    secs: u64,
    clients: usize,
    keys: usize,
    value_bytes: usize,
}

/// One measurement: ops/s, p99, errors, and the CPU it cost.
#[derive(Clone, Copy)]
struct Figures {
    ops_per_second: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU µs an operation: the servers' (gateway, instances, etcd, Redis).
    server_cpu_us: f64,
    /// CPU µs an operation: this load generator's.
    client_cpu_us: f64,
}

/// Why an operation failed, in a few words (counted by kind in [`drive`]).
type Failed = String;

/// Run `op(client, key)` from `s.clients` tasks for `s.secs` seconds;
/// `servers`: the pids whose CPU the operations cost. Failures are
/// counted, and their reasons printed to stderr by kind, so that a row's
/// `errors` column can be read.
async fn drive<F, Fut>(s: Settings, servers: &[u32], op: F) -> Figures
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Failed>> + Send,
{
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::Mutex::new(BTreeMap::<Failed, u64>::new()));
    let cpu = CpuMeter::start(servers);
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
                match op(client, key).await {
                    Ok(()) => mine.push(t.elapsed()),
                    Err(why) => *errors.lock().expect("errors").entry(why).or_default() += 1,
                }
            }
            latencies.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let spent = cpu.stop();
    let mut l = latencies.lock().await.clone();
    l.sort();
    let p99 = l
        .get(l.len() * 99 / 100)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let errors = {
        let by_reason = errors.lock().expect("errors");
        for (why, n) in by_reason.iter() {
            eprintln!("    {n} failed: {why}");
        }
        by_reason.values().sum::<u64>()
    };
    let operations = (l.len() as u64 + errors).max(1) as f64;
    Figures {
        ops_per_second: l.len() as f64 / elapsed,
        p99_ms: p99,
        errors,
        server_cpu_us: spent.servers * 1e6 / operations,
        client_cpu_us: spent.client * 1e6 / operations,
    }
}

/// A Shoal row's client: keep-alive HTTP/1.1 connections, one per address
/// it sends to, opened on first use and again after an error. hyper's bare
/// client connection (as `fixed_rate` uses), so that the load generator
/// costs about what the Redis rows' client (`redis`, a connection per
/// client) does: through reqwest's pool and URL parsing it cost about twice
/// that, on the same two cores as the servers it measured.
#[derive(Default)]
struct HttpClient {
    connections: HashMap<Arc<str>, http1::SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    /// `method {path}` with `body` to `authority`; the response, or `None`
    /// when the connection failed (it is dropped, and the next request opens
    /// a new one).
    async fn send(
        &mut self,
        authority: &Arc<str>,
        method: Method,
        path: String,
        body: Bytes,
    ) -> Result<hyper::Response<Incoming>, Failed> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &**authority)
            .body(Full::new(body))
            .expect("a valid request");
        let sender = match self.connections.entry(authority.clone()) {
            std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                let connect = async {
                    let stream = TcpStream::connect(&**authority).await?;
                    stream.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(stream)
                };
                let stream = connect.await.map_err(|e| format!("connect: {e}"))?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(connection);
                new.insert(sender)
            }
        };
        let response = match sender.ready().await {
            Ok(()) => sender.send_request(request).await,
            Err(e) => Err(e),
        };
        response.map_err(|e| {
            self.connections.remove(authority);
            format!("no response: {e}")
        })
    }
}

/// Where the key-value clients send their requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The gateway's `/kv/` route (consistent hash on the key).
    Gateway,
    /// Each key's primary instance, placed by the client.
    Primary,
}

/// Where the request for key `k{k}` goes: `/kv/k{k}` at an authority
/// (`127.0.0.1:port`).
struct Bases {
    /// By key index, when the target is the primary; else one for all.
    per_key: Vec<Arc<str>>,
}

impl Bases {
    fn of(&self, k: usize) -> &Arc<str> {
        &self.per_key[k % self.per_key.len()]
    }
}

/// The primary of every key `k0..k{keys}` as the store places it.
fn primaries(platform: &Platform, keys: usize) -> Bases {
    let urls: HashMap<&str, Arc<str>> = platform
        .app_servers
        .iter()
        .map(|a| (a.id.as_str(), Arc::from(a.addr.as_str())))
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

fn count_relayed(relayed: &Relayed, response: &hyper::Response<Incoming>) {
    if response.headers().contains_key("x-shoal-kv-primary") {
        relayed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Read `response` whole, counting it if it was relayed; a failure unless
/// `ok` accepts its status, named by the status and Shoal's error code
/// (its errors are JSON with an `error` field).
async fn read_answer(
    relayed: &Relayed,
    response: hyper::Response<Incoming>,
    ok: fn(hyper::StatusCode) -> bool,
) -> Result<(), Failed> {
    count_relayed(relayed, &response);
    let status = response.status();
    let body = response.into_body().collect().await;
    let body = body.map_err(|e| format!("body: {e}"))?.to_bytes();
    if ok(status) {
        return Ok(());
    }
    let error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    Err(format!(
        "HTTP {status}: {}",
        error.as_deref().unwrap_or("(no error code)")
    ))
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
    let bases = Arc::new(match target {
        Target::Gateway => Bases {
            per_key: vec![Arc::from(platform.gateway().addr.as_str())],
        },
        Target::Primary => primaries(&platform, s.keys),
    });
    let clients: Arc<Vec<Mutex<HttpClient>>> =
        Arc::new((0..s.clients).map(|_| Mutex::default()).collect());
    let relayed = Relayed::default();
    let value = Bytes::from(vec![b'v'; s.value_bytes]);
    let put = {
        let (clients, bases, relayed) = (clients.clone(), bases.clone(), relayed.clone());
        move |client: usize, k: usize| {
            let (clients, bases, value, relayed) = (
                clients.clone(),
                bases.clone(),
                value.clone(),
                relayed.clone(),
            );
            async move {
                let mut http = clients[client].lock().await;
                let path = format!("/kv/k{k}");
                let r = http.send(bases.of(k), Method::PUT, path, value).await?;
                read_answer(&relayed, r, |status| status.is_success()).await
            }
        }
    };
    let get = {
        let (clients, bases, relayed) = (clients.clone(), bases.clone(), relayed.clone());
        move |client: usize, k: usize| {
            let (clients, bases, relayed) = (clients.clone(), bases.clone(), relayed.clone());
            async move {
                let mut http = clients[client].lock().await;
                let path = format!("/kv/k{k}");
                let r = http
                    .send(bases.of(k), Method::GET, path, Bytes::new())
                    .await?;
                read_answer(&relayed, r, |status| status == 200 || status == 404).await
            }
        }
    };
    let servers: Vec<u32> = (platform.gateways.iter().map(|g| g.proc.pid()))
        .chain(platform.app_servers.iter().map(|a| a.proc.pid()))
        .collect();
    let puts = drive(s, &servers, put).await;
    let gets = drive(s, &servers, get).await;
    drop(platform);
    if target == Target::Primary {
        let relayed = relayed.load(std::sync::atomic::Ordering::Relaxed);
        let total = (puts.ops_per_second + gets.ops_per_second) * s.secs as f64;
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
            async move {
                let put = client.put(format!("bench/k{k}"), value, None).await;
                put.map(drop).map_err(|e| e.to_string())
            }
        }
    };
    let get = {
        let client = client.clone();
        move |_, k: usize| {
            let mut client = client.clone();
            async move {
                let get = client.get(format!("bench/k{k}"), None).await;
                get.map(drop).map_err(|e| e.to_string())
            }
        }
    };
    let servers = etcd.pids();
    let puts = drive(s, &servers, put).await;
    let gets = drive(s, &servers, get).await;
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
    let (primary, replica) = if replicated {
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
                    let mut set = redis::cmd("SET");
                    set.arg(key).arg(&value[..]);
                    return set.exec_async(&mut c).await.map_err(|e| e.to_string());
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
                match acked.map_err(|e| e.to_string())? {
                    (_, 0) => Err("WAIT 1: no replica acknowledged within 1 s".into()),
                    _ => Ok(()),
                }
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
                .map(drop)
                .map_err(|e| e.to_string())
        }
    };
    let servers: Vec<u32> = std::iter::once(primary.pid())
        .chain(replica.as_ref().map(RedisServer::pid))
        .collect();
    let puts = drive(s, &servers, put).await;
    let gets = drive(s, &servers, get).await;
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

    println!(
        "| store | instances | PUT ops/s | PUT p99 ms | PUT CPU µs/op (servers + client) \
         | GET ops/s | GET p99 ms | GET CPU µs/op (servers + client) | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let cpu = |f: &Figures| format!("{:.1} + {:.1}", f.server_cpu_us, f.client_cpu_us);
    for (store, n, p, g) in rows {
        println!(
            "| {store} | {n} | {:.0} | {:.2} | {} | {:.0} | {:.2} | {} | {} |",
            p.ops_per_second,
            p.p99_ms,
            cpu(&p),
            g.ops_per_second,
            g.p99_ms,
            cpu(&g),
            p.errors + g.errors
        );
    }
    Ok(())
}
