//! `registry::PeerBalancer`: calling instances directly, without a gateway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use registry::{Keys, PeerBalancer, Store};
use shoal_tests::{AppServer, AppServerOptions, Etcd};

/// Make `n` calls with `concurrency` callers; count answers per instance id.
async fn spread(
    balancer: &PeerBalancer,
    http: &reqwest::Client,
    n: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let counts = Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
    let per_worker = n / concurrency;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (balancer, http, counts) = (balancer.clone(), http.clone(), counts.clone());
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    let guard = balancer.pick().expect("a ready instance");
                    let resp = http
                        .get(format!(
                            "http://{}/work?iterations=20000",
                            guard.instance.addr
                        ))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    let served_by = resp.headers()["x-shoal-instance"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    assert_eq!(served_by, guard.instance.id, "the picked instance answered");
                    *counts.lock().unwrap().entry(served_by).or_default() += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    Arc::try_unwrap(counts).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_instances_and_stop_going_to_one_that_left() {
    let etcd = Etcd::start().await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(AppServer::start(&etcd, AppServerOptions::default()).await);
    }
    let balancer = PeerBalancer::new(&Store::etcd(etcd.client().await, Keys::default()), "app");
    assert!(
        balancer.wait_ready(3, Duration::from_secs(5)).await,
        "three ready instances"
    );
    let http = reqwest::Client::new();

    let counts = spread(&balancer, &http, 300, 6).await;
    println!("measured: 300 peer calls over 3 instances: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert!(*n >= 60, "instance {id} got {n} of 300 calls: {counts:?}");
    }

    let leaving = servers.remove(0);
    leaving.proc.signal(Signal::SIGTERM);
    // Draining is written before the instance stops serving; the balancer drops it then.
    shoal_tests::wait_until(
        Duration::from_secs(2),
        "the leaving instance out of the ready set",
        || {
            let ready = balancer.ready();
            ready.len() == 2 && ready.iter().all(|i| i.id != leaving.id)
        },
    )
    .await
    .unwrap();
    let counts = spread(&balancer, &http, 120, 4).await;
    assert!(
        !counts.contains_key(&leaving.id),
        "calls went to the instance that left: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 120);
}
