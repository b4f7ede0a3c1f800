//! The gateway following the registry: how soon a new instance or route gets
//! traffic, serving through an etcd outage and catching up after it, and
//! malformed entries skipped without harm.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use registry::{Instance, InstanceState, Keys};
use shoal_tests::{AppServerOptions, Gateway, Platform, wait_until, wait_until_async};

use super::{gateway_log, get_json, http, put_route, served_by, wait_known, wait_routed};

/// One client sending a GET every few milliseconds, recording when each answer came and who served it.
struct Load {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(http: &reqwest::Client, url: String) -> Load {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (http, seen, stop) = (http.clone(), seen.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(resp) = http.get(&url).send().await {
                        let id = served_by(&resp);
                        seen.lock().unwrap().push((Instant::now(), id));
                    }
                    // A client's pace, not a wait: a request every few ms
                    // is resolution enough.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Load { seen, stop, task }
    }

    /// When `id` first served a request, if it has.
    fn first_from(&self, id: &str) -> Option<Instant> {
        let seen = self.seen.lock().unwrap();
        seen.iter().find(|(_, who)| who == id).map(|(at, _)| *at)
    }

    /// Wait until `id` has served; panics after `timeout`.
    async fn wait_first_from(&self, id: &str, timeout: Duration, gateway: &Gateway) -> Instant {
        wait_until(timeout, &format!("a request served by {id}"), || {
            self.first_from(id).is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", gateway_log(gateway)));
        self.first_from(id).unwrap()
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.seen.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_and_a_new_route_get_traffic_soon_after_their_etcd_write() {
    // Round-robin without slow start: once the new instance is in the table,
    // the next request or the one after goes to it. Slow start would give it
    // only a 10% share at first, which measures the ramp, not the routing.
    let platform = Platform::builder()
        .app_servers(1)
        .app_servers_with(1, AppServerOptions::for_service("svc2"))
        .gateway(&["--default-policy", "round-robin", "--slow-start", "0s"])
        .start()
        .await;
    let (etcd, gateway) = (&platform.etcd, platform.gateway());
    let (first, svc2) = (&platform.app_servers[0], &platform.app_servers[1]);
    let http = http();
    wait_routed(&http, gateway, "/", &[&first.id], Duration::from_secs(5)).await;

    // When each instance key was first seen `ready`, by a watch of our own.
    let ready_at = Arc::new(Mutex::new(BTreeMap::<String, Instant>::new()));
    let mut watch = etcd
        .client()
        .await
        .watch(
            Keys::default().service_instances("app"),
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let watching = tokio::spawn({
        let ready_at = ready_at.clone();
        async move {
            while let Ok(Some(msg)) = watch.message().await {
                let now = Instant::now();
                for event in msg.events() {
                    let Some(kv) = event.kv() else { continue };
                    let ready = event.event_type() == EventType::Put
                        && serde_json::from_slice::<Instance>(kv.value())
                            .is_ok_and(|i| i.state == InstanceState::Ready);
                    if ready {
                        let key = kv.key_str().unwrap_or_default().to_owned();
                        ready_at.lock().unwrap().entry(key).or_insert(now);
                    }
                }
            }
        }
    });

    let load = Load::start(&http, gateway.url("/"));
    let new = platform.start_app_servers(1, "app").await.remove(0);
    wait_until(Duration::from_secs(2), "our watch to see it ready", || {
        ready_at.lock().unwrap().contains_key(&new.key())
    })
    .await
    .unwrap();
    let registered = ready_at.lock().unwrap()[&new.key()];
    let routed = load
        .wait_first_from(&new.id, Duration::from_secs(5), gateway)
        .await;
    let instance_took = routed.saturating_duration_since(registered);
    println!(
        "measured: registry→routing {} ms (new instance `ready` in etcd to its first response through the gateway)",
        instance_took.as_millis()
    );
    let sent = load.stop().await;
    watching.abort();

    let load = Load::start(&http, gateway.url("/r"));
    // Before the route, /r goes to the default service.
    wait_until(Duration::from_secs(2), "a request to /r", || {
        load.first_from(&first.id).is_some() || load.first_from(&new.id).is_some()
    })
    .await
    .unwrap();
    let written = Instant::now();
    put_route(
        etcd,
        "r",
        r#"{"path_prefix":"/r","service":"svc2","policy":"round-robin","strip_prefix":true}"#,
    )
    .await;
    let routed = load
        .wait_first_from(&svc2.id, Duration::from_secs(5), gateway)
        .await;
    let route_took = routed.saturating_duration_since(written);
    println!(
        "measured: registry→routing {} ms (route put to its first request served by svc2)",
        route_took.as_millis()
    );
    load.stop().await;
    // The goal is 100 ms; this shared 2-core machine gets a looser bound.
    assert!(
        instance_took < Duration::from_millis(500),
        "new instance routed after {instance_took:?} ({sent} requests sent)"
    );
    assert!(
        route_took < Duration::from_millis(500),
        "new route in force after {route_took:?}"
    );
    let resp = http.get(gateway.url("/r")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "/r with its prefix stripped is svc2's /"
    );
    assert_eq!(served_by(&resp), svc2.id);
}

/// The gateway's `/healthz` view of the registry: `connected` or `unreachable`.
async fn registry_health(http: &reqwest::Client, gateway: &Gateway) -> String {
    let health = get_json(http, &gateway.admin_url("/healthz")).await;
    health["registry"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_for_ten_seconds_the_gateway_keeps_serving_and_catches_up_after() {
    // Round-robin without slow start, so that "the instance started after the
    // outage gets traffic" is certain once the gateway knows it.
    let mut platform = Platform::builder()
        .app_servers(2)
        .gateway(&["--default-policy", "round-robin", "--slow-start", "0s"])
        .start()
        .await;
    let (apps, gateway) = (&platform.app_servers, &platform.gateways[0]);
    let http = http();
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    wait_routed(&http, gateway, "/", &ids, Duration::from_secs(5)).await;
    wait_until_async(Duration::from_secs(5), "healthz: connected", || async {
        registry_health(&http, gateway).await == "connected"
    })
    .await
    .unwrap();

    platform.etcd.stop().await;
    let down = Instant::now();
    let mut served = 0;
    let mut failures = Vec::new();
    let mut noticed = None;
    while down.elapsed() < Duration::from_secs(10) {
        match http.get(gateway.url("/")).send().await {
            Ok(resp) if resp.status() == 200 => served += 1,
            Ok(resp) => failures.push(format!(
                "{}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            )),
            Err(e) => failures.push(e.to_string()),
        }
        if noticed.is_none() && registry_health(&http, gateway).await == "unreachable" {
            noticed = Some(down.elapsed());
        }
        // A client's pace through the outage, whose 10 s are the scenario.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "measured: etcd down 10 s: {served} requests served, {} failed; /healthz said unreachable after {:?}",
        failures.len(),
        noticed
    );
    assert!(
        failures.is_empty(),
        "{} requests failed during the outage, first {:?}; {}",
        failures.len(),
        &failures[..failures.len().min(5)],
        gateway_log(gateway)
    );
    assert!(served > 100, "only {served} requests in 10 s");
    assert!(noticed.is_some(), "/healthz never said unreachable");

    platform.etcd.start_again().await;
    let back = Instant::now();
    let late = platform.start_app_servers(1, "app").await.remove(0);
    let ready = back.elapsed();
    wait_routed(&http, gateway, "/", &[&late.id], Duration::from_secs(5)).await;
    println!(
        "measured: after the outage, an instance started then is ready {} ms and routed {} ms after etcd answered",
        ready.as_millis(),
        back.elapsed().as_millis()
    );
    wait_until_async(
        Duration::from_secs(5),
        "healthz: connected again",
        || async { registry_health(&http, gateway).await == "connected" },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_instances_and_routes_are_skipped_and_named_in_the_log() {
    let mut platform = Platform::builder()
        .app_servers(2)
        .app_servers_with(1, AppServerOptions::for_service("svc2"))
        .start()
        .await;
    let keys = Keys::default();
    let mut client = platform.client.clone();
    let svc2 = platform.app_servers[2].addr.clone();
    let svc2_id = platform.app_servers[2].id.clone();
    let ids: Vec<String> = platform.app_servers[..2]
        .iter()
        .map(|a| a.id.clone())
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();

    // Listed at start: garbage, and an entry under `app` that says it is svc2
    // and points at svc2's server (taken, it would serve `/` from svc2).
    let mut mislabelled = Instance::new("svc2", svc2);
    mislabelled.state = InstanceState::Ready;
    let mislabelled_key = keys.instance("app", &mislabelled.id);
    let garbage_key = keys.instance("app", "garbage");
    client
        .put(garbage_key.as_str(), "{nope", None)
        .await
        .unwrap();
    client
        .put(mislabelled_key.as_str(), mislabelled.to_json(), None)
        .await
        .unwrap();
    client
        .put(keys.route("broken"), "{nope", None)
        .await
        .unwrap();
    // Valid JSON, invalid route: it would send /svc2 to svc2 if taken.
    client
        .put(
            keys.route("no-slash"),
            r#"{"path_prefix":"svc2","service":"svc2"}"#,
            None,
        )
        .await
        .unwrap();
    put_route(
        &platform.etcd,
        "good",
        r#"{"path_prefix":"/good","service":"svc2","strip_prefix":true}"#,
    )
    .await;

    let gateway = platform.start_gateway(&[]).await;
    let http = http();
    wait_known(&http, gateway, "app", &ids, Duration::from_secs(5)).await;
    wait_routed(&http, gateway, "/good", &[&svc2_id], Duration::from_secs(5)).await;

    // And while it runs: more garbage, watched rather than listed.
    let late_instance = keys.instance("app", "late");
    client
        .put(late_instance.as_str(), "[]", None)
        .await
        .unwrap();
    client
        .put(
            keys.route("late"),
            r#"{"service":"svc2","policy":"nope"}"#,
            None,
        )
        .await
        .unwrap();

    let bad_keys = [
        garbage_key,
        mislabelled_key,
        keys.route("broken"),
        keys.route("no-slash"),
        late_instance,
        keys.route("late"),
    ];
    let named = wait_until(Duration::from_secs(3), "every bad key in the log", || {
        let log = gateway.proc.stderr();
        bad_keys.iter().all(|k| log.contains(k.as_str()))
    })
    .await;
    if let Err(e) = named {
        let log = gateway.proc.stderr();
        let missing: Vec<_> = bad_keys
            .iter()
            .filter(|k| !log.contains(k.as_str()))
            .collect();
        panic!("{e}: not named: {missing:?}; {}", gateway_log(gateway));
    }

    for i in 0..60 {
        let resp = http.get(gateway.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "/ request {i}");
        let id = served_by(&resp);
        assert!(ids.contains(&id.as_str()), "/ request {i} served by {id}");
    }
    for path in ["/good", "/good/"] {
        let resp = http.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), served_by(&resp)),
            (200, svc2_id.clone()),
            "{path}"
        );
    }
    let resp = http.get(gateway.url("/svc2")).send().await.unwrap();
    let id = served_by(&resp);
    assert!(
        ids.contains(&id.as_str()),
        "/svc2 must go to the default service (the route without a slash is invalid); served by {id}"
    );
}
