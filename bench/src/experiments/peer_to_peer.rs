//! Experiment 6, `peer-to-peer`: the same clients for the same time calling
//! three instances two ways: each call picks an instance itself with
//! `registry::PeerBalancer` (power of two choices on its own in-flight
//! counts, from a registry watch) and goes straight to it; or every call
//! goes through the gateway. Requests/s and the spread over instances
//! (largest share / smallest) for each.
//!
//! Goal: peer-to-peer serves at least as many requests/s as the gateway
//! (one hop less, no central balancer), with a spread of at most 1.5, and
//! no failed request either way. The gateway's spread is reported, not
//! judged: its default policy (least-request, P2C on peak-EWMA latency)
//! sends more to whichever instance answers faster on purpose, and on a
//! shared machine instances do not answer equally fast.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use registry::{Keys, PeerBalancer, Store};

use shoal_tests::platform::APP;

use super::{Config, Row, measure_for, platform, spread, verdict};

pub const NAME: &str = "peer-to-peer";
pub const SOURCE: &str = "clients pick a server themselves, no central balancer (no figure)";
const INSTANCES: usize = 3;
/// A little work per call, so that the instances, not the client, are measured.
const PATH: &str = "/work?iterations=100000";
const MAX_SPREAD: f64 = 1.5;

/// What one way of calling saw.
struct Measured {
    per_second: f64,
    by_instance: BTreeMap<String, u64>,
    failed: u64,
}

pub async fn run(config: &Config) -> anyhow::Result<Row> {
    let platform = platform().pinned(INSTANCES).try_start().await?;
    let balancer = PeerBalancer::new(&Store::etcd(platform.client.clone(), Keys::default()), APP);
    if !balancer
        .wait_ready(INSTANCES, Duration::from_secs(10))
        .await
    {
        anyhow::bail!("the peer balancer did not list {INSTANCES} ready instances in 10 s");
    }
    let http = platform.http.clone();
    let peer = {
        let balancer = balancer.clone();
        measure(&http, config, move || {
            balancer
                .pick()
                .map(|guard| (format!("http://{}{PATH}", guard.instance.addr), Some(guard)))
        })
        .await?
    };
    let through = platform.gateway().url(PATH);
    let gateway = measure(&http, config, move || Some((through.clone(), None::<()>))).await?;

    let (peer_spread, gateway_spread) = (
        spread(&peer.by_instance, INSTANCES),
        spread(&gateway.by_instance, INSTANCES),
    );
    let met = peer.per_second >= gateway.per_second
        && peer_spread <= MAX_SPREAD
        && peer.failed == 0
        && gateway.failed == 0;
    Ok(Row {
        experiment: NAME,
        shoal: format!(
            "peer {:.0}/s, spread {peer_spread:.2}; gateway {:.0}/s, spread {gateway_spread:.2}; peer/gateway {:.2}x; failed: peer {}, gateway {}",
            peer.per_second,
            gateway.per_second,
            peer.per_second / gateway.per_second,
            peer.failed,
            gateway.failed
        ),
        source: SOURCE,
        goal: format!("peer ≥ gateway req/s, peer spread ≤ {MAX_SPREAD}, 0 failed"),
        verdict: verdict(met),
        details: vec![
            format!(
                "{} clients, {:?} each way, GET {PATH}",
                config.clients, config.phase
            ),
            format!("peer by instance: {:?}", peer.by_instance),
            format!("gateway by instance: {:?}", gateway.by_instance),
        ],
    })
}

/// `config.clients` clients calling the URL `target` gives (holding the
/// guard it gives until the answer) for `config.phase`.
async fn measure<G: Send + 'static>(
    http: &reqwest::Client,
    config: &Config,
    target: impl Fn() -> Option<(String, Option<G>)> + Clone + Send + Sync + 'static,
) -> anyhow::Result<Measured> {
    let running = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..config.clients)
        .map(|_| {
            let (http, running, target) = (http.clone(), running.clone(), target.clone());
            tokio::spawn(async move {
                let mut by_instance = BTreeMap::<String, u64>::new();
                let mut failed = 0;
                while running.load(Ordering::Acquire) {
                    let Some((url, guard)) = target() else {
                        failed += 1;
                        // The balancer lists no instance: a retry's pace.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let id = r
                                .headers()
                                .get("x-shoal-instance")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned();
                            if r.bytes().await.is_ok() {
                                *by_instance.entry(id).or_default() += 1;
                            } else {
                                failed += 1;
                            }
                        }
                        _ => failed += 1,
                    }
                    drop(guard);
                }
                (by_instance, failed)
            })
        })
        .collect();
    let started = Instant::now();
    measure_for(config.phase).await;
    running.store(false, Ordering::Release);
    let mut measured = Measured {
        per_second: 0.0,
        by_instance: BTreeMap::new(),
        failed: 0,
    };
    for c in clients {
        let (by_instance, failed) = c.await?;
        for (id, n) in by_instance {
            *measured.by_instance.entry(id).or_default() += n;
        }
        measured.failed += failed;
    }
    let served: u64 = measured.by_instance.values().sum();
    measured.per_second = served as f64 / started.elapsed().as_secs_f64();
    Ok(measured)
}
