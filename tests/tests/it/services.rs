//! Services declared as workloads, end to end: real etcd, a gateway, and
//! `autoscaler run` (process driver) running the repository's examples,
//! stock Node.js and standard-library Python programs that know nothing of
//! Shoal, from their service files applied as is (`autoscaler apply -f`).
//!
//! - three services (`app` from the controller's default command, `node`
//!   and `py` from their specs) scale independently through one gateway;
//! - a managed Node.js instance killed with SIGKILL is replaced, and a
//!   controller leader killed leaves every managed instance serving, with
//!   no failed request under load;
//! - a changed spec rolls every instance onto the new version with no failed
//!   request, and `rollout undo` rolls it back;
//! - a spec naming a missing program gets events and back-off while another
//!   service scales; an invalid file writes nothing;
//! - `autoscaler get services` and `describe service` show what is
//!   declared, and name what is scaled with no spec.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use registry::election::Election;
use registry::{Instance, InstanceState, Keys};
use shoal_tests::autoscaler::{autoscaler_cli, election_candidates};
use shoal_tests::binaries::{service_instances, workspace_root};
use shoal_tests::wait::wait_for;
use shoal_tests::{Load, Platform, wait_until_async};

use crate::gateway::http;

/// `app` scales on in-flight requests between 1 and 3; held at 1 unless loaded.
const APP_POLICY: &str = r#"{"service":"app","min":1,"max":3,"metric":"inflight","target":4}"#;

fn example(name: &str) -> PathBuf {
    workspace_root()
        .join("examples")
        .join(name)
        .join("shoal.yaml")
}

/// `autoscaler apply -f FILE`; panics with the CLI's output on failure.
async fn apply(platform: &Platform, file: &std::path::Path) -> String {
    let path = file.display().to_string();
    let out = autoscaler_cli(&platform.etcd, &["apply", "-f", &path]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "apply -f {path} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The ready instances of `service`.
async fn ready(platform: &Platform, service: &str) -> Vec<Instance> {
    service_instances(&platform.client, service)
        .await
        .into_iter()
        .filter(|i| i.state == InstanceState::Ready)
        .collect()
}

async fn ready_ids(platform: &Platform, service: &str) -> BTreeSet<String> {
    ready(platform, service)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// Wait until `service` has at least `n` ready instances.
async fn wait_ready_at_least(platform: &Platform, service: &str, n: usize, timeout: Duration) {
    wait_until_async(
        timeout,
        &format!("{n} ready instances of {service}"),
        || async { ready(platform, service).await.len() >= n },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; controller log:\n{}", controller_logs(platform)));
}

/// Wait until a GET of `path` through the gateway answers 200.
async fn wait_routed(platform: &Platform, path: &str) {
    let url = platform.gateway().url(path);
    wait_until_async(
        Duration::from_secs(15),
        &format!("{path} routed"),
        || async {
            platform
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await
    .unwrap();
}

/// GET `url`; the body.
async fn text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

fn controller_logs(platform: &Platform) -> String {
    platform
        .autoscalers
        .iter()
        .map(|a| a.proc.stderr())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A platform with one gateway and `controllers` controllers, `app`'s
/// policy written, and the examples' service files applied as is.
async fn platform_with_examples(controllers: usize) -> Platform {
    let platform = Platform::builder()
        .policy("app", APP_POLICY)
        .gateway(&[])
        .autoscalers(controllers)
        .autoscaler_flags(&["--interval", "500ms", "--lease-ttl", "2s"])
        .start()
        .await;
    let diff = apply(&platform, &example("node-hello")).await;
    assert!(diff.contains("+ service node"), "the diff names it: {diff}");
    apply(&platform, &example("python-api")).await;
    for service in ["app", "node", "py"] {
        wait_ready_at_least(&platform, service, 1, Duration::from_secs(30)).await;
    }
    wait_routed(&platform, "/node/").await;
    wait_routed(&platform, "/py/").await;
    platform
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_scale_independently_through_one_gateway() {
    let platform = platform_with_examples(1).await;
    let http = http();
    let hello = text(&http, &platform.gateway().url("/node/")).await;
    assert!(hello.starts_with("Hello from node process"), "{hello}");

    // In flight: 12 clients on node (target 4: 3 instances), 8 on py (2).
    let started = Instant::now();
    let node = Load::start(
        &http,
        &platform.gateway().url("/node/work?iterations=2000000"),
        12,
    );
    let py = Load::start(
        &http,
        &platform.gateway().url("/py/work?iterations=20000"),
        8,
    );
    wait_ready_at_least(&platform, "node", 3, Duration::from_secs(60)).await;
    let node_at_3 = started.elapsed();
    wait_ready_at_least(&platform, "py", 2, Duration::from_secs(60)).await;
    // Both have been served by their new instances, and app was left alone.
    node.wait_more_served(50, Duration::from_secs(30))
        .await
        .unwrap();
    let second_serving = node
        .first_served()
        .get(1)
        .map(|(_, at)| at.duration_since(started));
    assert_eq!(
        ready(&platform, "app").await.len(),
        1,
        "app had no load and stays at its minimum"
    );
    let (node, py) = (node.stop().await, py.stop().await);
    println!(
        "measured: node load step → 3 ready after {:.2} s, its 2nd instance serving after {:.2} s; {} node and {} py requests served",
        node_at_3.as_secs_f64(),
        second_serving.map_or(f64::NAN, |d| d.as_secs_f64()),
        node.served,
        py.served
    );
    assert!(node.failures.is_empty(), "node: {}", node.failure_summary());
    assert!(py.failures.is_empty(), "py: {}", py.failure_summary());
    assert!(
        ready(&platform, "node").await.len() <= 6 && ready(&platform, "py").await.len() <= 4,
        "each stays within its own maximum"
    );
}

/// The pid of the Node.js process behind `instance` (it says so in its hello).
async fn node_pid(instance: &Instance) -> u32 {
    let body = text(&http(), &format!("http://{}/", instance.addr)).await;
    body.trim()
        .rsplit(' ')
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the hello: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_instance_and_a_killed_leader_lose_no_request() {
    let mut platform = platform_with_examples(2).await;
    let scaled = autoscaler_cli(&platform.etcd, &["scale", "node", "2"]).await;
    assert!(scaled.status.success(), "{scaled:?}");
    wait_ready_at_least(&platform, "node", 2, Duration::from_secs(30)).await;
    let http = http();
    let load = Load::start(&http, &platform.gateway().url("/node/"), 4);
    load.wait_more_served(100, Duration::from_secs(10))
        .await
        .unwrap();

    // 1. kill -9 of the Node.js process of a managed instance: its wrapper
    //    deregisters it, the controller replaces it.
    let before = ready_ids(&platform, "node").await;
    let victim = ready(&platform, "node").await.remove(0);
    let pid = node_pid(&victim).await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    wait_until_async(Duration::from_secs(30), "a replacement ready", || async {
        let now = ready_ids(&platform, "node").await;
        now.len() == 2 && !now.contains(&victim.id)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; controller log:\n{}", controller_logs(&platform)));
    let replaced = killed.elapsed();
    let replacement = ready_ids(&platform, "node")
        .await
        .difference(&before)
        .next()
        .cloned()
        .expect("a new instance");
    load.wait_served_by(&replacement, killed, Duration::from_secs(10))
        .await
        .unwrap();

    // 2. The leader killed without a chance to resign: the standby adopts
    //    the managed instances, which never leave routing.
    wait_until_async(
        Duration::from_secs(10),
        "both controllers campaign",
        || async { election_candidates(&platform.client).await == 2 },
    )
    .await
    .unwrap();
    let election = Election::new(platform.client.clone(), &Keys::default());
    let leader = election.leader().await.unwrap().expect("a leader");
    let (index, standby) = match leader.as_str() {
        "controller-0" => (0, "controller-1"),
        "controller-1" => (1, "controller-0"),
        other => panic!("unexpected leader {other}"),
    };
    let serving = ready_ids(&platform, "node").await;
    let mut watch = registry_changes(&platform, "node").await;
    platform.autoscalers[index].proc.kill9().await;
    let failover = Instant::now();
    wait_until_async(Duration::from_secs(10), "the standby to lead", || async {
        election.leader().await.ok().flatten().as_deref() == Some(standby)
    })
    .await
    .unwrap();
    let standby_proc = &platform.autoscalers[1 - index].proc;
    // It has acted on what it adopted: a full tick after taking over.
    wait_until_async(Duration::from_secs(10), "the standby to adopt", || {
        let log = standby_proc.stderr();
        async move { log.contains("leading: acting") && log.contains("adopted") }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; standby log:\n{}", standby_proc.stderr()));
    load.wait_more_served(200, Duration::from_secs(10))
        .await
        .unwrap();
    let took = failover.elapsed();
    assert_eq!(
        ready_ids(&platform, "node").await,
        serving,
        "the same instances serve after the failover"
    );
    let changes = watch.drain();
    assert!(
        changes.is_empty(),
        "no node instance changed state across the failover: {changes:?}"
    );
    let report = load.stop().await;
    println!(
        "measured: node instance killed → replacement ready after {:.2} s; leader killed → standby acting on adopted instances after {:.2} s; {} requests served",
        replaced.as_secs_f64(),
        took.as_secs_f64(),
        report.served
    );
    assert!(report.failures.is_empty(), "{}", report.failure_summary());
}

/// Every change to `service`'s instances in the registry from now on.
struct Changes {
    changes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Changes {
    fn drain(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.changes.lock().unwrap())
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn registry_changes(platform: &Platform, service: &str) -> Changes {
    let mut client = platform.client.clone();
    let prefix = Keys::default().service_instances(service);
    let mut stream = client
        .watch(
            prefix.as_str(),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let changes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = changes.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            for event in resp.events() {
                let key = event
                    .kv()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned());
                seen.lock()
                    .unwrap()
                    .push(format!("{:?} {key:?}", event.event_type()));
            }
        }
    });
    Changes { changes, task }
}

/// The versions `service`'s ready instances run.
async fn versions(platform: &Platform, service: &str) -> BTreeSet<String> {
    ready(platform, service)
        .await
        .into_iter()
        .map(|i| i.version)
        .collect()
}

/// The node example's service file with `GREETING` set in its environment.
fn node_with_greeting(dir: &std::path::Path, greeting: &str) -> PathBuf {
    let text = std::fs::read_to_string(example("node-hello")).unwrap();
    let changed = text.replacen(
        "      port_env: PORT\n",
        &format!("      port_env: PORT\n      env:\n        GREETING: {greeting}\n"),
        1,
    );
    assert_ne!(
        changed, text,
        "the example's layout changed; update this test"
    );
    let path = dir.join("node.yaml");
    std::fs::write(&path, changed).unwrap();
    path
}

/// Wait until every one of `n` ready node instances runs a version other
/// than `old` (or exactly `new`), and the gateway answers with `greeting`.
async fn wait_rolled(
    platform: &Platform,
    n: usize,
    done: impl Fn(&BTreeSet<String>) -> bool,
    greeting: &str,
) {
    wait_until_async(
        Duration::from_secs(90),
        "every instance on the new version",
        || async {
            let all = service_instances(&platform.client, "node").await;
            let versions = versions(platform, "node").await;
            all.len() == n && all.iter().all(|i| i.state == InstanceState::Ready) && done(&versions)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; controller log:\n{}", controller_logs(platform)));
    let body = text(&http(), &platform.gateway().url("/node/")).await;
    assert!(body.starts_with(&format!("{greeting} from node")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_spec_rolls_every_instance_and_undo_rolls_back_with_no_failed_request() {
    let platform = platform_with_examples(1).await;
    let scaled = autoscaler_cli(&platform.etcd, &["scale", "node", "2"]).await;
    assert!(scaled.status.success(), "{scaled:?}");
    wait_ready_at_least(&platform, "node", 2, Duration::from_secs(30)).await;
    let original = versions(&platform, "node").await;
    assert_eq!(original.len(), 1, "one version to start with: {original:?}");
    let http = http();
    let load = Load::start(&http, &platform.gateway().url("/node/"), 4);
    load.wait_more_served(100, Duration::from_secs(10))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let changed = node_with_greeting(dir.path(), "Bonjour");
    let started = Instant::now();
    let diff = apply(&platform, &changed).await;
    assert!(
        diff.contains("~ service node"),
        "the diff shows the change: {diff}"
    );
    wait_rolled(
        &platform,
        2,
        |v| v.len() == 1 && v.is_disjoint(&original),
        "Bonjour",
    )
    .await;
    let rolled = started.elapsed();
    let status = autoscaler_cli(&platform.etcd, &["rollout", "status", "node"]).await;
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{status:?}");
    assert!(
        status_text.contains(": 2 of 2 instance(s) run it"),
        "rollout status shows every instance on the spec's version: {status_text}"
    );

    let started = Instant::now();
    let undo = autoscaler_cli(&platform.etcd, &["rollout", "undo", "node"]).await;
    assert!(undo.status.success(), "{undo:?}");
    wait_rolled(&platform, 2, |v| *v == original, "Hello").await;
    let undone = started.elapsed();
    load.wait_more_served(100, Duration::from_secs(10))
        .await
        .unwrap();
    let report = load.stop().await;
    println!(
        "measured: spec change → 2 node instances on the new version after {:.2} s, undo → back after {:.2} s; {} requests served\nrollout status:\n{status_text}",
        rolled.as_secs_f64(),
        undone.as_secs_f64(),
        report.served
    );
    assert!(report.failures.is_empty(), "{}", report.failure_summary());
}

/// The keys and values under the operator's part of the registry: services,
/// policies and routes.
async fn operator_config(platform: &Platform) -> Vec<(String, String)> {
    let keys = Keys::default();
    let mut client = platform.client.clone();
    let mut all = Vec::new();
    for prefix in [keys.services(), keys.policies(), keys.routes()] {
        let resp = client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        all.extend(resp.kvs().iter().map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        }));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_backs_off_with_events_while_others_scale_and_a_bad_file_writes_nothing()
{
    let platform = platform_with_examples(1).await;
    let dir = tempfile::tempdir().unwrap();
    let ghost = dir.path().join("ghost.yaml");
    std::fs::write(
        &ghost,
        "services:\n  ghost:\n    process:\n      argv: [no-such-program-here, --port, '{port}']\npolicies:\n  ghost:\n    min: 1\n    max: 2\n    metric: inflight\n    target: 4\n",
    )
    .unwrap();
    apply(&platform, &ghost).await;

    // node scales out under load meanwhile.
    let http = http();
    let load = Load::start(
        &http,
        &platform.gateway().url("/node/work?iterations=2000000"),
        12,
    );
    let store = registry::Store::etcd(platform.client.clone(), Keys::default());
    let failed_starts = || async {
        store
            .events("ghost", 50)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, e)| e.kind == "start-failed")
            .map(|(_, e)| e)
            .collect::<Vec<_>>()
    };
    // Two failed starts are retried at once, then 1 s, 2 s (backoff.rs).
    wait_until_async(
        Duration::from_secs(30),
        "five failed starts of ghost",
        || async { failed_starts().await.len() >= 5 },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; controller log:\n{}", controller_logs(&platform)));
    wait_ready_at_least(&platform, "node", 3, Duration::from_secs(60)).await;
    let report = load.stop().await;
    assert!(report.failures.is_empty(), "{}", report.failure_summary());
    let mut failed = failed_starts().await;
    failed.reverse();
    let reason = &failed[0].reason;
    assert!(
        reason.contains("`no-such-program-here`") && reason.contains("PATH"),
        "the event names the program and where it was looked for: {reason}"
    );
    assert!(
        failed[3].reason.ends_with("retrying in 2 s"),
        "{}",
        failed[3].reason
    );
    let gap = (failed[4].at - failed[3].at).to_std().unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(1900),
        "the 5th start waited out the 2 s back-off: {gap:?} after the 4th"
    );
    assert!(ready(&platform, "ghost").await.is_empty());

    // An invalid file: one good service and one with a misspelt field.
    let before = operator_config(&platform).await;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "services:\n  fine:\n    process:\n      argv: [node, server.js]\n      port_env: PORT\n  broken:\n    process:\n      argv: [node, server.js]\n      prot_env: PORT\n",
    )
    .unwrap();
    let path = bad.display().to_string();
    let out = autoscaler_cli(&platform.etcd, &["apply", "-f", &path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "an invalid file is refused");
    assert!(
        stderr.contains(&format!(
            "{path}:9: services.broken.process.prot_env: unknown field"
        )),
        "the error names the file, line and field: {stderr}"
    );
    assert_eq!(
        operator_config(&platform).await,
        before,
        "nothing was written"
    );
}

/// A key-value service whose spec asks for data directories, run with
/// `--durability fsync`: every instance killed with SIGKILL at once, the
/// controller replaces each on the directory of one that died, and every
/// write acknowledged before the kill is read back. Nothing else held the
/// data: the replacements can only have it from the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_value_instance_killed_at_once_loses_no_acknowledged_write() {
    let data_root = tempfile::tempdir().unwrap();
    let root = data_root.path().display().to_string();
    let platform = Platform::builder()
        .route("kv", r#"{"path_prefix":"/kv/","service":"kv"}"#)
        .gateway(&[])
        .autoscalers(1)
        .autoscaler_flags(&[
            "--interval",
            "500ms",
            "--lease-ttl",
            "2s",
            "--data-root",
            &root,
        ])
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv.yaml");
    let app_server = shoal_tests::bin_path("app-server");
    std::fs::write(
        &file,
        format!(
            "services:\n  kv:\n    process:\n      argv: ['{}', --listen, '127.0.0.1:{{port}}', --durability, fsync, --drain-grace, 0s]\n    registration: self\n    data_dir: true\npolicies:\n  kv:\n    min: 3\n    max: 3\n    metric: inflight\n    target: 100\n",
            app_server.display()
        ),
    )
    .unwrap();
    apply(&platform, &file).await;
    wait_ready_at_least(&platform, "kv", 3, Duration::from_secs(30)).await;
    let first = ready_ids(&platform, "kv").await;
    let http = http();
    let probe = platform.gateway().url("/kv/probe");
    wait_until_async(Duration::from_secs(15), "a write routed", || async {
        let put = http.put(&probe).body("x").send().await;
        put.is_ok_and(|r| r.status().is_success())
    })
    .await
    .unwrap();

    // 8 writers, 50 keys each, every key written twice (the second value
    // is the one to find). Only acknowledged writes are counted. A write
    // answered 503 `too_few_owners` is sent again, as the answer says to:
    // the three instances have just started, and a write coordinated while
    // an instance's view of its peers changes can end with its owners
    // moved (seen once in CI: "only 0 of the 1 owners needed stored the
    // write"). What this test is about starts at the kill, with every
    // write acknowledged.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let http = http.clone();
            let url = platform.gateway().url("/kv/");
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut failed = Vec::new();
                for k in 0..50 {
                    let key = format!("w{w}-k{k}");
                    for round in 0..2 {
                        let value = format!("{key}-v{round}");
                        match put_acknowledged(&http, &format!("{url}{key}"), &value).await {
                            Ok(()) if round == 1 => acknowledged.push((key.clone(), value)),
                            Ok(()) => {}
                            Err(e) => failed.push(format!("{key}: {e}")),
                        }
                    }
                }
                (acknowledged, failed)
            })
        })
        .collect();
    let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
    for writer in writers {
        let (ok, not) = writer.await.unwrap();
        acknowledged.extend(ok);
        failed.extend(not);
    }
    assert_eq!(
        acknowledged.len(),
        400,
        "every write acknowledged before the kill; failed: {failed:?}"
    );

    // SIGKILL to every instance at once (their pid files say which processes).
    let pids: Vec<_> =
        autoscaler::driver::pidfile::PidFile::scan(platform.autoscalers[0].instance_logs.path())
            .into_iter()
            .filter(|f| f.service == "kv" && first.contains(&f.id))
            .collect();
    assert_eq!(pids.len(), 3, "a pid file per instance: {pids:?}");
    for file in &pids {
        kill(Pid::from_raw(file.pid as i32), Signal::SIGKILL).unwrap();
    }
    let killed = Instant::now();
    wait_until_async(Duration::from_secs(60), "3 replacements ready", || async {
        let now = ready_ids(&platform, "kv").await;
        now.len() == 3 && now.is_disjoint(&first)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; controller log:\n{}", controller_logs(&platform)));
    let replaced = killed.elapsed();

    let mut lost = Vec::new();
    for (key, value) in &acknowledged {
        let url = platform.gateway().url(&format!("/kv/{key}"));
        // A read that gets an answer from the store (a value or its absence).
        let (status, body) = wait_for(
            Duration::from_secs(10),
            &format!("a read of {key}"),
            || async {
                let got = http.get(&url).send().await.ok()?;
                let status = got.status();
                if status != 200 && status != 404 {
                    return None;
                }
                Some((status, got.text().await.ok()?))
            },
        )
        .await
        .unwrap();
        if status != 200 || &body != value {
            lost.push(format!("{key}: {status} {body:?}, expected {value:?}"));
        }
    }
    println!(
        "measured: {} acknowledged writes (--durability fsync, R = 2), every instance killed at once, 3 replacements ready after {:.2} s, {} lost",
        acknowledged.len(),
        replaced.as_secs_f64(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// PUT `value` at `url` until it is acknowledged, sending it again for up
/// to a second while the store answers 503 `too_few_owners`; any other
/// answer is the error at once.
async fn put_acknowledged(http: &reqwest::Client, url: &str, value: &str) -> Result<(), String> {
    let what = format!("PUT {url} acknowledged (503 too_few_owners meanwhile)");
    wait_for(Duration::from_secs(1), &what, || async {
        let response = match http.put(url).body(value.to_owned()).send().await {
            Ok(r) if r.status().is_success() => return Some(Ok(())),
            Ok(r) => r,
            Err(e) => return Some(Err(e.to_string())),
        };
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let retry =
            status == reqwest::StatusCode::SERVICE_UNAVAILABLE && body.contains("too_few_owners");
        (!retry).then(|| Err(format!("{status} {body}")))
    })
    .await?
}

/// `autoscaler get services` and `describe service`: what is declared, as
/// a table and as JSON, and what is scaled without a spec is named (on
/// stderr) rather than left out silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_describe_show_declared_services_and_name_the_ones_without_a_spec() {
    let etcd = shoal_tests::Etcd::start().await;
    let cli = |args: &'static [&'static str]| {
        let etcd = &etcd;
        async move {
            let out = autoscaler_cli(etcd, args).await;
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    // Nothing yet: an empty table and how to declare one.
    let (code, stdout, stderr) = cli(&["get", "services"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("no services declared"), "{stderr}");
    assert!(stdout.starts_with("SERVICE"), "{stdout}");

    // node declared from its file; app only scaled (a policy, no spec).
    let path = example("node-hello").display().to_string();
    let out = autoscaler_cli(&etcd, &["apply", "-f", &path]).await;
    assert!(out.status.success(), "{out:?}");
    let out = autoscaler_cli(
        &etcd,
        &[
            "policy", "set", "app", "--min", "1", "--max", "3", "--metric", "inflight", "--target",
            "4",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");

    let (code, stdout, stderr) = cli(&["get", "services", "-o", "json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let views: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let views = views.as_array().expect("a JSON array");
    assert_eq!(views.len(), 1, "only node is declared: {stdout}");
    assert_eq!(views[0]["spec"]["name"], "node");
    assert_eq!(views[0]["policy"]["max"], 6);
    let version = views[0]["version"].as_str().unwrap().to_owned();

    let (code, stdout, stderr) = cli(&["get", "services"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    for column in [
        "node",
        &version[..8],
        "managed",
        "node examples/node-hello/server.js",
    ] {
        assert!(rows[0].contains(column), "{column} in {stdout}");
    }
    assert!(
        rows[0].contains("1..6 inflight 4") && rows[0].contains("0/0 ready"),
        "{stdout}"
    );
    assert!(
        stderr.contains("also scaled, with no spec") && stderr.contains(": app;"),
        "{stderr}"
    );

    let (code, stdout, stderr) = cli(&["describe", "service", "node"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("version:       {version}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("history:       no earlier versions"),
        "{stdout}"
    );

    // app has no spec to describe: said, with where it is shown instead.
    let (code, _, stderr) = cli(&["describe", "service", "app"]).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("no service spec for app")
            && stderr.contains("autoscaler status app shows it"),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&["describe", "service", "nothing"]).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("no service spec for nothing;") && !stderr.contains("status"),
        "{stderr}"
    );
}
