//! The distributed key-value store across real app-server processes: any
//! instance answers for any key, copies follow the membership, a scale-in
//! hands every key off (even with one copy), a crash is repaired, an
//! instance restarted with its `--data-dir` comes back with its data, an
//! instance whose view is behind the registry stops coordinating. (The
//! checker, scaling 2 → 5 → 2 with a kill -9 under load, is the
//! `shoal-bench` crate's test `kv_check`.)

use std::collections::BTreeSet;
use std::time::Duration;

use app_server::kv::LEASE_MARGIN;
use futures::StreamExt;
use nix::sys::signal::Signal;
use registry::ring::IdRing;
use shoal_tests::binaries::service_instances;
use shoal_tests::netns::NetNs;
use shoal_tests::{AppServer, AppServerOptions, Etcd, Platform, wait_for, wait_until_async};

fn http() -> reqwest::Client {
    shoal_tests::http_client(Duration::from_secs(10))
}

/// A platform of `n` app servers with `replicas` copies per key, each
/// registered and ready, and each one's view of the membership holding all
/// `n` (see [`wait_views`]). The servers are handed out to kill and stop.
async fn start(n: usize, replicas: u32) -> (Platform, Vec<AppServer>) {
    let options = AppServerOptions {
        lease_ttl: Duration::from_secs(2),
        drain_grace: Duration::ZERO,
        extra: vec!["--kv-replicas".into(), replicas.to_string()],
        ..AppServerOptions::default()
    };
    let mut platform = Platform::builder()
        .app_servers_with(n, options)
        .start()
        .await;
    let servers = std::mem::take(&mut platform.app_servers);
    wait_views(&http(), &servers.iter().collect::<Vec<_>>()).await;
    (platform, servers)
}

/// Wait until every one of `servers` sees all of them: each instance's view
/// is fed by its own registry watch, and this test counts copies, which
/// follow the view (reads are correct regardless). An instance names the
/// primary it forwards a key to (`x-shoal-kv-primary`), so it knows every
/// other instance once, over enough keys, it has forwarded to each.
async fn wait_views(http: &reqwest::Client, servers: &[&AppServer]) {
    let all: BTreeSet<&str> = servers.iter().map(|s| s.id.as_str()).collect();
    for server in servers {
        let seen = std::sync::Mutex::new(BTreeSet::from([server.id.clone()]));
        let complete = wait_until_async(
            Duration::from_secs(10),
            &format!("{} to see every instance", server.id),
            || async {
                for k in 0..40 {
                    let url = server.url(&format!("/kv/view-probe-{k}"));
                    let Ok(r) = http.get(url).send().await else {
                        continue;
                    };
                    if let Some(primary) = r.headers().get("x-shoal-kv-primary") {
                        let primary = primary.to_str().unwrap_or_default().to_owned();
                        seen.lock().unwrap().insert(primary);
                    }
                }
                let seen = seen.lock().unwrap();
                all.iter().all(|id| seen.contains(*id))
            },
        )
        .await;
        if let Err(e) = complete {
            panic!("{e}: it forwarded only to {:?}", seen.lock().unwrap());
        }
    }
}

/// How many of `servers` hold `key` (internal API: the local copy only).
async fn copies(http: &reqwest::Client, servers: &[&AppServer], key: &str) -> usize {
    let mut n = 0;
    for s in servers {
        let r = http.get(s.url(&format!("/_shoal/kv/{key}"))).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn any_instance_answers_for_any_key_and_each_key_has_two_copies() {
    let (mut platform, servers) = start(3, 2).await;
    let http = http();
    for i in 0..30 {
        let r = http
            .put(servers[i % 3].url(&format!("/kv/k{i}")))
            .body(format!("v{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
    }
    let mut forwarded = 0;
    for i in 0..30 {
        for s in &servers {
            let r = http.get(s.url(&format!("/kv/k{i}"))).send().await.unwrap();
            forwarded += r.headers().contains_key("x-shoal-kv-primary") as usize;
            assert_eq!(r.status(), 200);
            assert!(r.headers().contains_key("etag"));
            assert_eq!(r.text().await.unwrap(), format!("v{i}"));
        }
    }
    // Two of every three reads were sent to a non-primary and forwarded.
    assert!(
        (30..=60).contains(&forwarded),
        "{forwarded} forwarded of 90"
    );
    let all: Vec<&AppServer> = servers.iter().collect();
    for i in 0..30 {
        assert_eq!(copies(&http, &all, &format!("k{i}")).await, 2, "k{i}");
    }
    println!("measured: 90 reads through 3 instances, {forwarded} forwarded to the primary");

    // Through a gateway hashing on the key, every request lands on the
    // primary: nothing is forwarded.
    let route = r#"{"path_prefix":"/kv/","service":"app","policy":"consistent-hash","hash_key":{"from":"path-segment","name":0}}"#;
    platform
        .client
        .clone()
        .put(registry::Keys::default().route("kv"), route, None)
        .await
        .unwrap();
    let gateway = platform.start_gateway(&["--slow-start", "0s"]).await;
    wait_until_async(
        Duration::from_secs(10),
        "the gateway to route /kv/",
        || async {
            http.get(gateway.url("/kv/k0"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await
    .unwrap();
    for i in 0..30 {
        let r = http
            .get(gateway.url(&format!("/kv/k{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            !r.headers().contains_key("x-shoal-kv-primary"),
            "k{i} reached a non-primary through the gateway"
        );
    }
}

/// Every instance of the service stopping at once, as when a whole platform
/// stops: nobody is left to take the entries, so each instance gives up the
/// hand-off at once and says so, instead of waiting out its drain timeout
/// (a minute here; the platform's stop grace, 10 s, would kill it first).
#[tokio::test]
async fn instances_stopping_together_do_not_wait_out_the_drain_timeout_for_nobody() {
    let options = AppServerOptions {
        lease_ttl: Duration::from_secs(2),
        drain_grace: Duration::ZERO,
        extra: ["--kv-replicas", "2", "--drain-timeout", "60s"]
            .map(String::from)
            .to_vec(),
        ..AppServerOptions::default()
    };
    let mut platform = Platform::builder()
        .app_servers_with(2, options)
        .start()
        .await;
    let servers = std::mem::take(&mut platform.app_servers);
    let http = http();
    wait_views(&http, &servers.iter().collect::<Vec<_>>()).await;
    let put = http
        .put(servers[0].url("/kv/together"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT: {}", put.status());
    for server in &servers {
        server.proc.signal(Signal::SIGTERM);
    }
    for mut server in servers {
        // Far less than the drain timeout.
        let status = server.proc.wait_exit(Duration::from_secs(20)).await;
        let log = server.proc.stderr();
        let said = log
            .matches("no other instance of the service is left to take the key-value entries; they are lost with this instance")
            .count();
        assert_eq!(
            said, 1,
            "{} says once why it stops without handing its entries off:\n{log}",
            server.id
        );
        assert_eq!(
            status.code(),
            Some(1),
            "{}: entries not handed off are not a clean drain",
            server.id
        );
    }
}

#[tokio::test]
async fn a_scale_in_with_one_copy_hands_every_key_off() {
    let (_platform, mut servers) = start(3, 1).await;
    let http = http();
    // Enough data that the hand-off outlasts the rest of the drain: the
    // instance must wait for it, not just start it.
    const KEYS: usize = 1500;
    let value = |i: usize| format!("{i:>8}").repeat(512);
    let writes = futures::stream::iter(0..KEYS).map(|i| {
        let (http, url) = (&http, servers[i % 3].url(&format!("/kv/h{i}")));
        async move { http.put(url).body(value(i)).send().await.unwrap().status() }
    });
    let statuses: Vec<_> = writes.buffer_unordered(16).collect().await;
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
    // Two of three leave at once, cleanly (SIGTERM: drain and hand off).
    for leaving in &servers[1..] {
        leaving.proc.signal(Signal::SIGTERM);
    }
    for mut leaving in servers.drain(1..) {
        let status = leaving.proc.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "the drain with hand-off failed: {status:?}"
        );
    }
    let last = &servers[0];
    let mut missing = Vec::new();
    for i in 0..KEYS {
        let r = http
            .get(last.url(&format!("/kv/h{i}")))
            .send()
            .await
            .unwrap();
        if r.status() != 200 || r.text().await.unwrap() != value(i) {
            missing.push(i);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {KEYS} keys lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(copies(&http, &[last], "h0").await, 1);
}

#[tokio::test]
async fn after_a_crash_the_survivors_restore_two_copies() {
    let (platform, mut servers) = start(3, 2).await;
    let http = http();
    for i in 0..60 {
        let r = http
            .put(servers[0].url(&format!("/kv/c{i}")))
            .body(format!("v{i}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let mut dead = servers.remove(2);
    dead.proc.kill9().await;
    let client = &platform.client;
    wait_until_async(
        Duration::from_secs(10),
        "the dead instance's lease to expire",
        || async { service_instances(client, "app").await.len() == 2 },
    )
    .await
    .unwrap();
    let survivors: Vec<&AppServer> = servers.iter().collect();
    let took = wait_until_async(
        Duration::from_secs(15),
        "two copies of every key",
        || async {
            for i in 0..60 {
                if copies(&http, &survivors, &format!("c{i}")).await != 2 {
                    return false;
                }
            }
            true
        },
    )
    .await
    .unwrap();
    for i in 0..60 {
        let r = http
            .get(servers[i % 2].url(&format!("/kv/c{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
    println!(
        "measured: two copies of 60 keys restored {took:?} after the dead instance left the registry"
    );
}

/// GET `key` from `server`, retrying while it answers 503: right after a
/// restart the dead predecessor is still registered (until its lease
/// expires) and owns some keys until it is found refusing connections.
async fn get_after_restart(
    http: &reqwest::Client,
    server: &AppServer,
    key: &str,
) -> (u16, Option<String>, String) {
    let url = server.url(&format!("/kv/{key}"));
    let answer = wait_for(Duration::from_secs(10), "an answer but 503", || async {
        let r = http.get(&url).send().await.unwrap();
        (r.status() != 503).then_some(r)
    })
    .await;
    // Still 503 after 10 s: return that answer, for the caller to report.
    let r = match answer {
        Ok(r) => r,
        Err(_) => http.get(&url).send().await.unwrap(),
    };
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, etag, r.text().await.unwrap())
}

#[tokio::test]
async fn an_instance_restarted_with_its_data_dir_comes_back_with_its_data() {
    let etcd = Etcd::start().await;
    let data = tempfile::tempdir().unwrap();
    let options = AppServerOptions {
        lease_ttl: Duration::from_secs(2),
        drain_grace: Duration::ZERO,
        extra: vec![
            "--kv-replicas".into(),
            "1".into(),
            "--data-dir".into(),
            data.path().display().to_string(),
        ],
        ..AppServerOptions::default()
    };
    let mut first = AppServer::start(&etcd, options.clone()).await;
    let http = http();
    first.wait_ready(&http).await;
    const KEYS: usize = 200;
    let mut etags = Vec::new();
    for i in 0..KEYS {
        let url = first.url(&format!("/kv/d{i}"));
        let r = http.put(&url).body(format!("v{i}")).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        etags.push(r.headers()["etag"].to_str().unwrap().to_owned());
    }
    // Every tenth key deleted, and key 1 overwritten.
    for i in (0..KEYS).step_by(10) {
        let url = first.url(&format!("/kv/d{i}"));
        assert_eq!(http.delete(&url).send().await.unwrap().status(), 204);
    }
    let r = http
        .put(first.url("/kv/d1"))
        .body("v1 again")
        .send()
        .await
        .unwrap();
    etags[1] = r.headers()["etag"].to_str().unwrap().to_owned();

    // No drain, no hand-off: the process is gone at once.
    first.proc.kill9().await;
    let second = AppServer::start(&etcd, options).await;
    assert_ne!(second.id, first.id);
    // The data directory is one instance's: a second one at the same time is refused.
    let mut intruder = shoal_tests::Proc::spawn(
        "app-server",
        &shoal_tests::bin_path("app-server"),
        &[
            "--etcd".into(),
            etcd.endpoint(),
            "--data-dir".into(),
            data.path().display().to_string(),
        ],
        &[],
        &shoal_tests::binaries::logs_dir(),
    );
    let refused = intruder.wait_exit(Duration::from_secs(10)).await;
    assert!(!refused.success());
    assert!(
        intruder
            .stderr()
            .contains("in use by another running instance"),
        "{}",
        intruder.stderr()
    );

    let mut wrong = Vec::new();
    for (i, written_etag) in etags.iter().enumerate() {
        let (status, etag, body) = get_after_restart(&http, &second, &format!("d{i}")).await;
        let expected = match i {
            1 => Some("v1 again".to_owned()),
            _ if i % 10 == 0 => None,
            _ => Some(format!("v{i}")),
        };
        let ok = match &expected {
            Some(value) => status == 200 && body == *value && etag.as_ref() == Some(written_etag),
            None => status == 404,
        };
        if !ok {
            wrong.push(format!(
                "d{i}: {status} {etag:?} {body:?}, expected {expected:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {KEYS} keys differ after the restart: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // The versions came back too: a compare-and-set on the old ETag holds.
    let r = http
        .put(second.url("/kv/d2"))
        .header("if-match", &etags[2])
        .body("v2 after")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// The view-change window (docs/architecture.md, "Consistency model"): an
/// instance whose registry watch is behind still takes itself for the
/// primary of keys that instances it has not seen now own, and answered
/// them from copies those instances never wrote to. Here instance `a` is
/// cut off from etcd (not from its peers) on a lease long enough to hold
/// throughout; two new instances take one of its keys and a write goes to
/// them alone; a read at `a` must still find the write. It does once `a`'s
/// view is no longer confirmed: `a` hands the read over.
///
/// Needs root for `ip netns` and `iptables`: skipped with a note otherwise,
/// except under `CI=true`, where it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_view_is_behind_hands_over_keys_new_instances_took() {
    let Some(mut netns) = NetNs::create_or_skip("the view-fence test") else {
        return;
    };
    let http = http();
    let etcd = Etcd::start_also_on(netns.host_ip).await;
    // Every instance listens where the one in the namespace reaches it.
    let host_ip = netns.host_ip;
    let on_host = move |id: &str| AppServerOptions {
        extra: vec![
            "--id".into(),
            id.into(),
            "--listen".into(),
            format!("{host_ip}:0"),
        ],
        ..AppServerOptions::default()
    };
    let b = AppServer::start(&etcd, on_host("b")).await;
    let c = AppServer::start(&etcd, on_host("c")).await;
    let lease = Duration::from_secs(20);
    let a = AppServer::start_in_netns(
        &netns,
        etcd.endpoint_on(netns.host_ip),
        AppServerOptions {
            lease_ttl: lease,
            extra: vec!["--id".into(), "a".into()],
            ..AppServerOptions::default()
        },
    )
    .await;
    for s in [&a, &b, &c] {
        s.wait_ready(&http).await;
    }
    wait_views(&http, &[&a, &b, &c]).await;
    // A key `a` is primary of now, and whose owners will be n1 and n2 alone.
    let (before, after) = (
        IdRing::new(&["a", "b", "c"]),
        IdRing::new(&["a", "b", "c", "n1", "n2"]),
    );
    let key = (0..)
        .map(|i| format!("moved-{i}"))
        .find(|k| before.rank(k, 1) == ["a"] && after.rank(k, 2) == ["n1", "n2"])
        .unwrap();
    let put = |s: &AppServer, value: &'static str| {
        http.put(s.url(&format!("/kv/{key}"))).body(value).send()
    };
    let old = put(&a, "old").await.unwrap();
    assert_eq!(old.status(), 201, "{:?}", old.text().await);

    netns.cut_tcp_to(netns.host_ip, etcd.port()).unwrap();
    let cut = std::time::Instant::now();
    let n1 = AppServer::start(&etcd, on_host("n1")).await;
    let n2 = AppServer::start(&etcd, on_host("n2")).await;
    n1.wait_ready(&http).await;
    n2.wait_ready(&http).await;
    wait_views(&http, &[&n1, &n2]).await;
    let new = put(&n1, "new").await.unwrap();
    // Coordinated by n1 itself (a relayed answer would name its primary).
    assert!(!new.headers().contains_key("x-shoal-kv-primary"));
    assert_eq!(new.status(), 200, "{:?}", new.text().await);
    // The write reached the new owners only: `a`'s own copy is the old one.
    let local = |s: &AppServer| http.get(s.url(&format!("/_shoal/kv/{key}"))).send();
    assert_eq!(local(&n2).await.unwrap().text().await.unwrap(), "new");
    assert_eq!(local(&a).await.unwrap().text().await.unwrap(), "old");

    let read = http.get(a.url(&format!("/kv/{key}"))).send().await.unwrap();
    let answered = cut.elapsed();
    let status = read.status();
    let coordinator = read.headers().get("x-shoal-kv-primary").cloned();
    assert_eq!(
        (status, read.text().await.unwrap()),
        (reqwest::StatusCode::OK, "new".to_owned()),
        "a read at the instance cut off from etcd, {answered:?} after the cut, missed the write the new owners acknowledged (coordinated by {coordinator:?})"
    );
    // `a` handed it to its successor in its own view (`b` or `c`), whose
    // view names the key's primary: n1 coordinated it, not a second
    // coordinator beside n1.
    assert_eq!(
        coordinator.as_ref().and_then(|v| v.to_str().ok()),
        Some("n1")
    );
    // Its lease still lived: the view's fence stopped it, not the lease's.
    // The lease may have run down by a keep-alive period (a third of its
    // TTL) before the cut, and the lease fence stops LEASE_MARGIN early.
    assert!(
        answered + lease / 3 + LEASE_MARGIN < lease,
        "the test took {answered:?} from the cut to the read: too long to tell the view's fence from the lease's ({lease:?})"
    );
    netns.heal().unwrap();
}
