//! The autoscaler end to end: real etcd, a real gateway, `autoscaler run`
//! with the process driver starting real app servers.
//!
//! One scenario, in order: it starts the policy's minimum; a load step of 8
//! concurrent clients through the gateway takes it to at least 3 ready
//! instances; once the load drops to 2 clients it returns to 1 after the
//! scale-down window, with no failed request throughout; a kill -9 of a
//! managed instance is replaced. Then leader failover, and the event
//! history's sequence and bound on a real etcd. Last, the operator commands
//! (`policy set|get|delete`, `scale`, `status`, `events [--follow]`) run as
//! processes against a real etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use registry::model::ScalingEvent;
use registry::{Instance, InstanceState, Keys, RegistryValue};
use shoal_tests::autoscaler::election_candidates;
use shoal_tests::{Autoscaler, Etcd, Load, Platform, wait_for, wait_until, wait_until_async};

use crate::gateway::http;

const POLICY: &str = r#"{"service":"app","min":1,"max":4,"metric":"inflight","target":2,"scale_down_stabilization_secs":5}"#;

/// Every registered instance of `app`.
pub(crate) async fn instances(client: &etcd_client::Client) -> Vec<Instance> {
    shoal_tests::binaries::service_instances(client, "app").await
}

/// Every scaling event of `app`, by sequence number. The read is retried
/// for up to 10 s: through a cluster's endpoints one call may land on a
/// member that is down.
pub(crate) async fn events(client: &etcd_client::Client) -> Vec<(u64, ScalingEvent)> {
    events_under(client, &Keys::default(), "app").await
}

/// Every scaling event of `service` under the prefix of `keys`, by
/// sequence number (see [`events`]).
pub(crate) async fn events_under(
    client: &etcd_client::Client,
    keys: &Keys,
    service: &str,
) -> Vec<(u64, ScalingEvent)> {
    let resp = wait_for(Duration::from_secs(10), "the events read", || {
        let mut client = client.clone();
        let prefix = keys.service_events(service);
        async move {
            let options = etcd_client::GetOptions::new().with_prefix();
            client.get(prefix, Some(options)).await.ok()
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    resp.kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Ok(registry::Key::Event { seq, .. }) = keys.parse(&key) else {
                panic!("{key} is not an event key");
            };
            (seq, ScalingEvent::decode(keys, &key, kv.value()).unwrap())
        })
        .collect()
}

pub(crate) fn ready(instances: &[Instance]) -> Vec<&Instance> {
    instances
        .iter()
        .filter(|i| i.state == InstanceState::Ready)
        .collect()
}

#[derive(serde::Deserialize)]
struct Work {
    pid: u32,
    elapsed_ms: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_out_under_load_back_in_after_the_window_and_replaces_a_killed_instance() {
    let mut platform = Platform::builder()
        .policy("app", POLICY)
        .gateway(&[])
        .autoscalers(1)
        .start()
        .await;
    let client = platform.client.clone();
    let gateway = &platform.gateways[0];
    let scaler = &mut platform.autoscalers[0];
    let http = http();

    // The minimum: one ready instance, reachable through the gateway.
    wait_until_async(Duration::from_secs(15), "1 ready instance", || async {
        ready(&instances(&client).await).len() == 1
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    let calibrate = gateway.url("/work?iterations=1000000");
    wait_until_async(
        Duration::from_secs(5),
        "routed through the gateway",
        || async {
            http.get(&calibrate)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await
    .unwrap();
    // About 50 ms of work per request on this machine.
    let work: Work = http
        .get(&calibrate)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let iterations = ((1_000_000.0 * 50.0 / work.elapsed_ms.max(0.1)) as u64).max(1000);

    // The load step: 8 clients; 2 of them stay on through the scale-in, so
    // retiring instances is checked to lose no request either.
    let url = gateway.url(&format!("/work?iterations={iterations}"));
    let step = Instant::now();
    let base = Load::start(&http, &url, 2);
    let extra = Load::start(&http, &url, 6);
    let ready_count = |n: usize| {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move { ready(&instances(&client).await).len() >= n }
        }
    };
    wait_until_async(Duration::from_secs(20), "2 ready instances", ready_count(2))
        .await
        .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    let second = step.elapsed();
    wait_until_async(Duration::from_secs(20), "3 ready instances", ready_count(3))
        .await
        .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    let third = step.elapsed();
    println!(
        "measured: load step ({iterations} iterations ≈ 50 ms, 8 clients): 2nd instance ready after {:.2} s, 3rd after {:.2} s",
        second.as_secs_f64(),
        third.as_secs_f64()
    );
    assert!(
        second < Duration::from_secs(5),
        "the 2nd instance serves within 5 s of the step"
    );
    // Keep the load on until every ready instance has served some of it.
    let serving: Vec<String> = ready(&instances(&client).await)
        .iter()
        .map(|i| i.id.clone())
        .collect();
    wait_until(Duration::from_secs(10), "every instance serving", || {
        serving
            .iter()
            .all(|id| base.served_by(id) + extra.served_by(id) > 0)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {serving:?}; autoscaler log:\n{}",
            scaler.proc.stderr()
        )
    });
    let extra = extra.stop().await;

    // Down to 2 clients (≈ 2 in flight, the target for one instance): back to
    // the minimum once the scale-down window has passed, under that load.
    let lighter = Instant::now();
    let back = wait_until_async(Duration::from_secs(30), "back to 1 instance", || async {
        let all = instances(&client).await;
        all.len() == 1 && ready(&all).len() == 1
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    println!(
        "measured: back to 1 instance {:.2} s after the load dropped to 2 clients (scale-down window 5 s)",
        back.as_secs_f64()
    );
    assert!(
        lighter.elapsed() >= Duration::from_secs(4),
        "not before the window"
    );
    // The one that is left serves the load, then stop.
    let left = instances(&client).await.remove(0);
    base.wait_served_by(&left.id, Instant::now(), Duration::from_secs(10))
        .await
        .unwrap();
    let base = base.stop().await;
    let failures: Vec<String> = base.failures.into_iter().chain(extra.failures).collect();
    println!(
        "measured: {} requests served through scale-out and scale-in, {} failed",
        base.served + extra.served,
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");

    // kill -9 of the managed instance: replaced.
    let survivor = instances(&client).await.remove(0);
    let work: Work = http
        .get(gateway.url("/work?iterations=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Under load: requests in flight to it are retried, new ones held until
    // the replacement is ready.
    let during_kill = Load::start(&http, &gateway.url("/"), 4);
    during_kill
        .wait_served_by(&survivor.id, Instant::now(), Duration::from_secs(10))
        .await
        .unwrap();
    let killed = Instant::now();
    kill(Pid::from_raw(work.pid as i32), Signal::SIGKILL).unwrap();
    let replaced = wait_until_async(Duration::from_secs(15), "a replacement", || async {
        ready(&instances(&client).await)
            .iter()
            .any(|i| i.id != survivor.id)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", scaler.proc.stderr()));
    // Until the replacement serves the load.
    let replacement = ready(&instances(&client).await)
        .into_iter()
        .find(|i| i.id != survivor.id)
        .map(|i| i.id.clone())
        .expect("the replacement is ready");
    during_kill
        .wait_served_by(&replacement, killed, Duration::from_secs(10))
        .await
        .unwrap();
    let during_kill = during_kill.stop().await;
    println!(
        "measured: kill -9 of {}: replacement ready after {:.2} s; {} requests, {} failed",
        survivor.id,
        replaced.as_secs_f64(),
        during_kill.served,
        during_kill.failures.len()
    );
    assert!(
        during_kill.failures.is_empty(),
        "failed requests through the kill: {:?}",
        during_kill.failures
    );

    // Every decision and action is an event, in sequence.
    let events = events(&client).await;
    let seqs: Vec<u64> = events.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "contiguous from 1"
    );
    let kinds: Vec<&str> = events.iter().map(|(_, e)| e.kind.as_str()).collect();
    for kind in ["decision", "start", "retire", "replace"] {
        assert!(kinds.contains(&kind), "no `{kind}` event in {kinds:?}");
    }
    let replace = &events
        .iter()
        .rev()
        .find(|(_, e)| e.kind == "replace")
        .unwrap()
        .1;
    assert_eq!(replace.instance.as_deref(), Some(survivor.id.as_str()));
    assert_eq!(replace.inputs.get("exit_code"), Some(&137.0), "{replace:?}");

    let status = scaler.stop(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    // The killed instance's entry lingers until its lease expires; the
    // others deregister as they stop.
    let running = instances(&client).await;
    assert!(
        running.iter().all(|i| i.id == survivor.id),
        "--stop-on-exit stops its instances: {running:?}"
    );
    wait_until_async(
        Duration::from_secs(10),
        "the killed instance's lease to expire",
        || async { instances(&client).await.is_empty() },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_is_killed_the_standby_acts_within_one_ttl() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut c = client.clone();
    c.put(Keys::default().policy("app"), POLICY, None)
        .await
        .unwrap();
    let ttl = Duration::from_secs(2);
    let flags = ["--lease-ttl", "2s", "--interval", "200ms"];
    let mut leader = Autoscaler::start(&etcd, &[&flags[..], &["--id", "first"]].concat());
    wait_until_async(Duration::from_secs(15), "1 ready instance", || async {
        ready(&instances(&client).await).len() == 1
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; autoscaler log:\n{}", leader.proc.stderr()));
    let mut standby = Autoscaler::start(&etcd, &[&flags[..], &["--id", "second"]].concat());
    let orphan = instances(&client).await.remove(0);
    let work: Work = http()
        .get(format!("http://{}/work?iterations=1", orphan.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Once the standby campaigns, kill the leader without a chance to resign.
    wait_until_async(
        Duration::from_secs(10),
        "the standby to campaign",
        || async { election_candidates(&client).await == 2 },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; standby log:\n{}", standby.proc.stderr()));
    leader.proc.kill9().await;
    let killed = Instant::now();
    let elected = wait_until_async(Duration::from_secs(10), "the standby to lead", || {
        let log = standby.proc.stderr();
        async move { log.contains("leading: acting") }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; standby log:\n{}", standby.proc.stderr()));
    // The standby has an instance directory of its own (another machine, as
    // far as it can tell), so it cannot adopt the first controller's
    // instance: it starts its own, which shows it leads and acts.
    wait_until_async(Duration::from_secs(10), "the standby to act", || async {
        instances(&client).await.iter().any(|i| i.id != orphan.id)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; standby log:\n{}", standby.proc.stderr()));
    let acted = killed.elapsed();
    println!(
        "measured: leader killed; the standby led after {:.2} s and had started an instance after {:.2} s (lease TTL {} s)",
        elected.as_secs_f64(),
        acted.as_secs_f64(),
        ttl.as_secs()
    );
    kill(Pid::from_raw(work.pid as i32), Signal::SIGKILL).unwrap();
    assert!(
        elected <= ttl + Duration::from_millis(500),
        "elected within one TTL"
    );
    let status = standby.stop(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_continue_their_sequence_across_leaders_and_keep_the_last_200() {
    use autoscaler::controller::event;
    use autoscaler::controller::journal::{Journal, JournalError, KEEP_EVENTS, Write, sequence};
    use registry::Store;
    use registry::election::Election;

    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let keys = Keys::default();
    let ttl = Duration::from_secs(2);
    let commit = |journal: Journal, n: usize| async move {
        let last = journal.last_event_seq("app").await.unwrap();
        let (seqs, below) = sequence(last, n, KEEP_EVENTS);
        let mut writes: Vec<Write> = below
            .map(|below| Write::TrimEvents {
                service: "app".into(),
                below,
            })
            .into_iter()
            .collect();
        for seq in seqs {
            writes.push(Write::Event {
                seq,
                event: event::new("app", "decision", (1, 2), format!("#{seq}"), None),
            });
        }
        journal.commit(writes).await
    };

    let first = Arc::new(
        Election::new(client.clone(), &keys)
            .campaign("first", ttl)
            .await
            .unwrap(),
    );
    let store = Store::etcd(client.clone(), keys.clone());
    let journal = Journal::new(store.clone(), first.fence(), first.lost());
    for _ in 0..15 {
        commit(journal.clone(), 10).await.unwrap();
    }
    journal
        .commit(vec![Write::Retire {
            service: "app".into(),
            id: "i-1".into(),
            reason: "scale down".into(),
        }])
        .await
        .unwrap();
    let mut c = client.clone();
    let retire = c.get(keys.retire("app", "i-1"), None).await.unwrap();
    assert_eq!(retire.kvs().len(), 1, "retire key written");

    // The next leader continues the sequence; the history stays bounded.
    let mut c = client.clone();
    c.lease_revoke(first.lease()).await.unwrap();
    let second = Arc::new(
        Election::new(client.clone(), &keys)
            .campaign("second", ttl)
            .await
            .unwrap(),
    );
    let next = Journal::new(store.clone(), second.fence(), second.lost());
    for _ in 0..6 {
        commit(next.clone(), 10).await.unwrap();
    }
    let stored = events(&client).await;
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (11..=210).collect::<Vec<_>>());
    assert_eq!(stored.last().unwrap().1.reason, "#210");

    // The deposed leader writes nothing, and its term ends.
    assert!(matches!(commit(journal, 1).await, Err(JournalError::Lost)));
    assert!(first.lost().is_cancelled());
    assert_eq!(events(&client).await.len(), 200);
}

/// Run `autoscaler ARGS --etcd ENDPOINT`; its exit code, stdout and stderr.
pub(crate) async fn autoscaler_cli(etcd: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(shoal_tests::bin_path("autoscaler"))
        .args(args)
        .args(["--etcd", etcd])
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_commands_set_show_pin_and_delete_policies_and_list_events() {
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let mut client = etcd.client().await;
    let keys = Keys::default();

    // policy set: written to etcd and printed as JSON.
    let (code, stdout, stderr) = autoscaler_cli(
        &endpoint,
        &[
            "policy",
            "set",
            "app",
            "--min",
            "1",
            "--max",
            "4",
            "--metric",
            "inflight",
            "--target",
            "8",
            "--scale-down-window",
            "10s",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let stored = client.get(keys.policy("app"), None).await.unwrap();
    let stored: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    assert_eq!(printed, stored);
    let stored_before_pin = stored.clone();
    assert_eq!(
        stored,
        serde_json::json!({
            "service": "app", "min": 1, "max": 4, "metric": "inflight", "target": 8.0,
            "tolerance": 0.1, "scale_up_stabilization_secs": 0,
            "scale_down_stabilization_secs": 10, "max_scale_up_step": null,
            "max_scale_down_step": null, "step_period_secs": 15, "warmup_secs": 0,
        })
    );

    // An invalid policy: exit 2, the reason, nothing written.
    let (code, _, stderr) = autoscaler_cli(
        &endpoint,
        &[
            "policy", "set", "web", "--min", "5", "--max", "3", "--metric", "rps", "--target",
            "100",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("policy.min: min 5 is above max 3"),
        "{stderr}"
    );
    let web = client.get(keys.policy("web"), None).await.unwrap();
    assert!(web.kvs().is_empty());

    // policy get: a table of all, one as JSON.
    let (code, stdout, stderr) = autoscaler_cli(&endpoint, &["policy", "get"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("SERVICE  MIN  MAX  METRIC"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("app      1    4    inflight"),
        "{stdout}"
    );
    let (code, stdout, _) =
        autoscaler_cli(&endpoint, &["policy", "get", "app", "--output", "json"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap(),
        printed
    );

    // scale: pinned at 6 (beyond max: an operator's order), the rest untouched.
    let (code, stdout, stderr) = autoscaler_cli(&endpoint, &["scale", "app", "6"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("pinned app at 6"), "{stdout}");
    let stored = client.get(keys.policy("app"), None).await.unwrap();
    let stored: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    assert_eq!(
        (
            stored["min"].clone(),
            stored["max"].clone(),
            stored["pinned"].clone()
        ),
        (1.into(), 4.into(), 6.into())
    );
    assert_eq!(stored["scale_down_stabilization_secs"], 10);
    // --unpin removes only the pin.
    let (code, stdout, stderr) = autoscaler_cli(&endpoint, &["scale", "app", "--unpin"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("unpinned app (was 6)"), "{stdout}");
    let stored = client.get(keys.policy("app"), None).await.unwrap();
    let unpinned: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    let mut expected = stored_before_pin.clone();
    expected["scale_down_stabilization_secs"] = 10.into();
    assert_eq!(unpinned, expected);
    autoscaler_cli(&endpoint, &["scale", "app", "3"]).await;
    let (code, _, stderr) = autoscaler_cli(&endpoint, &["scale", "nothing", "3"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no policy for nothing; create one with autoscaler policy set"),
        "{stderr}"
    );

    // Two events, a malformed one skipped, and a registered instance.
    for (seq, current, desired, bounded_by) in [(1, 1, 2, None::<&str>), (2, 2, 3, Some("max"))] {
        let event = serde_json::json!({
            "service": "app", "at": "2026-11-22T06:30:05Z", "kind": "decision",
            "current": current, "desired": desired, "bounded_by": bounded_by,
            "reason": format!("{current} → {desired}: in-flight over target"),
        });
        client
            .put(
                keys.event("app", seq),
                serde_json::to_string(&event).unwrap(),
                None,
            )
            .await
            .unwrap();
    }
    client
        .put(keys.event("app", 3), "{oops", None)
        .await
        .unwrap();
    let mut instance = Instance::new("app", "127.0.0.1:18080");
    instance.state = InstanceState::Ready;
    client
        .put(keys.instance("app", &instance.id), instance.to_json(), None)
        .await
        .unwrap();

    // status: the instance, the bounds, the last decision.
    let (code, stdout, stderr) = autoscaler_cli(&endpoint, &["status"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..8],
        ["app", "1", "0", "0", "3", "pinned=3", "inflight", "8"],
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("2 → 3: in-flight over target"),
        "{stdout}"
    );
    assert!(
        stderr.contains("/shoal/events/app/00000000000000000003"),
        "{stderr}"
    );
    let (code, stdout, _) = autoscaler_cli(&endpoint, &["status", "app", "-o", "json"]).await;
    assert_eq!(code, Some(0));
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status[0]["instances"]["ready"], 1);
    assert_eq!(status[0]["last_event"]["desired"], 3);

    // events: oldest first, one line each.
    let (code, stdout, stderr) = autoscaler_cli(&endpoint, &["events", "app"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains("  decision  1 → 2  1 → 2: in-flight over target"),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("2 → 3: in-flight over target  (bounded by max)"),
        "{stdout}"
    );
    let (_, stdout, _) = autoscaler_cli(&endpoint, &["events", "app", "--limit", "2"]).await;
    assert_eq!(
        stdout.lines().count(),
        1,
        "the newest two keys, one malformed: {stdout}"
    );

    // events --follow: the history, then new events, until SIGTERM (exit 0).
    let mut follow = tokio::process::Command::new(shoal_tests::bin_path("autoscaler"))
        .args(["events", "app", "--follow", "--etcd", &endpoint])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("stdout still open")
    };
    assert!(next_line().await.contains("1 → 2"));
    assert!(next_line().await.contains("2 → 3"));
    let event = serde_json::json!({
        "service": "app", "at": "2026-11-22T06:31:00Z", "kind": "start",
        "current": 3, "desired": 4, "reason": "replacing", "instance": "i-9",
    });
    client
        .put(keys.event("app", 4), event.to_string(), None)
        .await
        .unwrap();
    let line = next_line().await;
    assert!(
        line.contains("  start  3 → 4  replacing  [instance i-9]"),
        "{line}"
    );
    kill(Pid::from_raw(follow.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), follow.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));

    // policy delete: says whether there was one.
    let (code, stdout, _) = autoscaler_cli(&endpoint, &["policy", "delete", "app"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("deleted the policy for app"), "{stdout}");
    assert!(
        client
            .get(keys.policy("app"), None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
    let (code, stdout, _) = autoscaler_cli(&endpoint, &["policy", "delete", "app"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("there was no policy for app"), "{stdout}");

    // An etcd that is not there: exit 2 and what to do.
    let dead = format!("http://127.0.0.1:{}", shoal_tests::free_port());
    let (code, _, stderr) = autoscaler_cli(&dead, &["status"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach etcd at {dead}")),
        "{stderr}"
    );
}
