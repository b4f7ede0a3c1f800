//! The platform on a 3-member etcd cluster (real etcd processes on
//! loopback, every binary given all three endpoints), each scenario under
//! steady load through the gateway, with two managed app servers and a
//! controller:
//!
//! - the etcd leader killed (SIGKILL): no failed request, no instance
//!   re-registers (same ids on the same leases), registry writes resume
//!   after an election (the time is printed), the controller keeps deciding;
//! - one member cut off (firewall, both ways; needs root): clients move to
//!   the majority (calls stop going to it: `registry::etcd_members`), and a
//!   write through the cut member alone is never accepted while writes
//!   through the others are; the controller keeps its leadership;
//! - two of three members killed: the gateway keeps serving on its last
//!   table, and registrations and decisions resume when quorum is back.
//!
//! Figures are printed with `measured:`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use registry::Keys;
use shoal_tests::autoscaler::election_leases;
use shoal_tests::platform::{APP, pinned_policy};
use shoal_tests::wait::hold_until;
use shoal_tests::{Load, Platform, wait_for, wait_until_async};

use crate::autoscaler::events;

/// The lease TTL of the managed instances and of the controller's
/// leadership: the platform's default. (At 3 s the controller lost its
/// leadership in a member cut under the full suite's load: etcd's own
/// election takes 1–2 s of it before any keep-alive can succeed, and the
/// clients need about a second more to leave the cut member.)
const TTL: Duration = Duration::from_secs(5);
/// A key outside Shoal's prefix that nothing watches, written to see when
/// the registry takes writes again.
const PROBE: &str = "etcd-cluster-test/probe";

/// Three etcd members, two managed instances of `app`, a gateway and a
/// controller, steady.
async fn platform() -> Platform {
    Platform::builder()
        .etcd_members(3)
        .pinned(2)
        .gateway(&[])
        .autoscalers(1)
        .autoscaler_flags(&["--interval", "500ms", "--lease-ttl", "5s"])
        .start()
        .await
}

/// Instance key → the lease it is on, for `app`; each read is bounded by
/// a second and retried for up to 10 s (through a cluster's endpoints one
/// call may land on a member that is down).
async fn registrations(client: &etcd_client::Client) -> BTreeMap<String, i64> {
    let prefix = Keys::default().service_instances(APP);
    let resp = wait_for(Duration::from_secs(10), "the instances read", || {
        let mut client = client.clone();
        let prefix = prefix.clone();
        async move {
            let options = etcd_client::GetOptions::new().with_prefix();
            let get = client.get(prefix, Some(options));
            tokio::time::timeout(Duration::from_secs(1), get)
                .await
                .ok()?
                .ok()
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    resp.kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
        .collect()
}

/// The controllers' election leases (the leader's first), retried for up
/// to 10 s like [`registrations`].
async fn leader_leases(client: &etcd_client::Client) -> Vec<i64> {
    wait_for(Duration::from_secs(10), "the election keys read", || {
        election_leases(client)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Put [`PROBE`] through `client` until one put succeeds (each try bounded
/// by a second); how long from `since`.
async fn first_write(client: &etcd_client::Client, since: Instant) -> Duration {
    wait_for(Duration::from_secs(30), "a registry write accepted", || {
        let mut client = client.clone();
        async move {
            let put = client.put(PROBE, "x", None);
            let done = tokio::time::timeout(Duration::from_secs(1), put).await;
            matches!(done, Ok(Ok(_))).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    since.elapsed()
}

/// Whether a put through `client` is accepted within `timeout`.
async fn put_accepted(client: &etcd_client::Client, key: &str, timeout: Duration) -> bool {
    let mut client = client.clone();
    let put = client.put(key, "from-the-minority", None);
    matches!(tokio::time::timeout(timeout, put).await, Ok(Ok(_)))
}

/// The controller still decides: pinned from 2 to 3, it writes a `start`
/// event after `since` and the third instance comes up ready and routed by
/// the gateway. How long that took.
async fn keeps_deciding(platform: &mut Platform, since: Instant) -> Duration {
    let started = Instant::now();
    let pinned = wait_for(Duration::from_secs(10), "app pinned at 3", || {
        let mut client = platform.client.clone();
        async move {
            let put = client.put(Keys::default().policy(APP), pinned_policy(APP, 3), None);
            put.await.ok()
        }
    })
    .await;
    pinned.unwrap_or_else(|e| panic!("{e}"));
    platform.expected = 3;
    if let Err(e) = platform.wait_steady(Duration::from_secs(30)).await {
        panic!("the controller did not bring a third instance up: {e:#}");
    }
    let since = chrono::Utc::now() - chrono::Duration::from_std(since.elapsed()).unwrap();
    let starts = events(&platform.client)
        .await
        .into_iter()
        .filter(|(_, e)| e.kind == "start" && e.at > since)
        .count();
    assert!(starts >= 1, "no start event written after the fault");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_leader_killed_under_load_loses_no_request_and_no_registration() {
    let mut platform = platform().await;
    let before = registrations(&platform.client).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let controller = leader_leases(&platform.client).await;
    let load = Load::start(&platform.http, &platform.gateway().url("/"), 4);
    load.wait_more_served(100, Duration::from_secs(10))
        .await
        .unwrap();

    let leader = platform.etcd.leader(Duration::from_secs(5)).await.unwrap();
    platform.etcd.stop_member(leader).await;
    let killed = Instant::now();
    let write = first_write(&platform.client, killed).await;
    let new_leader = platform.etcd.leader(Duration::from_secs(10)).await.unwrap();
    let elected = killed.elapsed();
    assert_ne!(new_leader, leader);
    // Past more than a lease TTL: a registration lost would show by now.
    load.wait_more_served(200, Duration::from_secs(10))
        .await
        .unwrap();
    hold_until(killed, TTL + Duration::from_secs(1)).await;
    let after = registrations(&platform.client).await;
    let controller_after = leader_leases(&platform.client).await;
    let decided = keeps_deciding(&mut platform, killed).await;
    let report = load.stop().await;
    println!(
        "measured: etcd leader killed: new leader named after {} ms, first registry write {} ms \
         after the kill; {} of {} requests failed; a new instance ready and routed {} ms after \
         the re-pin",
        elected.as_millis(),
        write.as_millis(),
        report.failures.len(),
        report.served + report.failures.len() as u64,
        decided.as_millis()
    );
    assert!(report.failures.is_empty(), "{}", report.failure_summary());
    assert_eq!(
        before, after,
        "an instance lost its registration (key → lease before and after the kill)"
    );
    assert_eq!(
        controller, controller_after,
        "the controller lost its leadership (election leases before and after the kill)"
    );
    // The killed member comes back with its data and catches up.
    platform.etcd.start_again().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_takes_no_write_and_clients_move_to_the_majority() {
    let mut platform = platform().await;
    let leader = platform.etcd.leader(Duration::from_secs(5)).await.unwrap();
    let before = registrations(&platform.client).await;
    let controller = leader_leases(&platform.client).await;
    let load = Load::start(&platform.http, &platform.gateway().url("/"), 4);
    load.wait_more_served(100, Duration::from_secs(10))
        .await
        .unwrap();

    // The leader is cut: the hardest member to lose.
    if let Err(e) = platform.etcd.cut_member(leader) {
        load.stop().await;
        let skipped: Option<()> =
            shoal_tests::skip_unless_ci(&format!("the etcd partition test: {e}"));
        return skipped.unwrap_or_default();
    }
    let cut = Instant::now();
    let write = first_write(&platform.client, cut).await;
    let new_leader = platform.etcd.leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(new_leader, leader, "the cut member is still the leader");
    // Clients of all three endpoints move to the majority: twenty calls in
    // a row each answer within a second (one in three would hang on the
    // cut member if it stayed in their balance).
    let moved = wait_until_async(
        Duration::from_secs(10),
        "20 calls in a row answered",
        || async {
            for _ in 0..20 {
                if !put_accepted(&platform.client, PROBE, Duration::from_secs(1)).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let moved_after = cut.elapsed();
    moved.unwrap_or_else(|e| panic!("the clients did not move to the majority: {e}"));

    // Through the cut member alone a write is never accepted; through the
    // others it is, at once.
    let minority = platform.etcd.member_client(leader).await;
    let minority_key = "etcd-cluster-test/minority";
    assert!(
        !put_accepted(&minority, minority_key, Duration::from_secs(3)).await,
        "a write through the cut-off member was accepted"
    );
    for i in (0..platform.etcd.size()).filter(|&i| i != leader) {
        let majority = platform.etcd.member_client(i).await;
        assert!(
            put_accepted(&majority, &format!("etcd-cluster-test/majority-{i}"), TTL).await,
            "a write through majority member {i} was not accepted"
        );
    }
    load.wait_more_served(200, Duration::from_secs(10))
        .await
        .unwrap();
    hold_until(cut, TTL + Duration::from_secs(1)).await;
    let during = registrations(&platform.client).await;
    let controller_during = leader_leases(&platform.client).await;
    let decided = keeps_deciding(&mut platform, cut).await;

    platform.etcd.heal_member(leader).unwrap();
    let healed = Instant::now();
    // The healed member catches up: it serves the majority's writes, and
    // never took the one sent to it while cut.
    let member = platform.etcd.member_client(leader).await;
    let rejoined = wait_for(
        Duration::from_secs(15),
        "the healed member caught up",
        || {
            let mut member = member.clone();
            async move {
                let options = etcd_client::GetOptions::new().with_prefix();
                let get = member.get("etcd-cluster-test/majority-", Some(options));
                let resp = tokio::time::timeout(Duration::from_secs(1), get)
                    .await
                    .ok()?
                    .ok()?;
                (resp.kvs().len() == 2).then_some(())
            }
        },
    )
    .await;
    let report = load.stop().await;
    println!(
        "measured: etcd leader cut off: first registry write {} ms after the cut, every call \
         answered {} ms after the cut; {} of {} requests failed; a new instance ready and \
         routed {} ms after the re-pin; caught up {} ms after the heal",
        write.as_millis(),
        moved_after.as_millis(),
        report.failures.len(),
        report.served + report.failures.len() as u64,
        decided.as_millis(),
        healed.elapsed().as_millis()
    );
    rejoined.unwrap();
    let mut client = platform.client.clone();
    let minority_write = client.get(minority_key, None).await.unwrap();
    assert!(
        minority_write.kvs().is_empty(),
        "the cut member's write was applied"
    );
    assert!(report.failures.is_empty(), "{}", report.failure_summary());
    let during: BTreeMap<_, _> = during
        .into_iter()
        .filter(|(k, _)| before.contains_key(k))
        .collect();
    assert_eq!(
        before, during,
        "an instance lost its registration during the cut"
    );
    assert_eq!(
        controller, controller_during,
        "the controller lost its leadership during the cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_members_lost_the_gateway_serves_on_and_all_resumes_with_quorum() {
    let mut platform = platform().await;
    let before = registrations(&platform.client).await;
    let load = Load::start(&platform.http, &platform.gateway().url("/"), 4);
    load.wait_more_served(100, Duration::from_secs(10))
        .await
        .unwrap();

    let leader = platform.etcd.leader(Duration::from_secs(5)).await.unwrap();
    let other = (leader + 1) % platform.etcd.size();
    platform.etcd.stop_member(leader).await;
    platform.etcd.stop_member(other).await;
    let lost = Instant::now();
    // Without quorum nothing is written.
    assert!(
        !put_accepted(&platform.client, PROBE, Duration::from_secs(2)).await,
        "a write was accepted by one member of three"
    );
    // The outage outlasts the instances' lease TTL twice over: its end is
    // a time, not a condition.
    hold_until(lost, 2 * TTL + Duration::from_secs(2)).await;
    let served_without_quorum = load.served();
    let failed_without_quorum = load.stop().await.failures;

    let load = Load::start(&platform.http, &platform.gateway().url("/"), 4);
    platform.etcd.start_again().await;
    let back = Instant::now();
    let write = first_write(&platform.client, back).await;
    let Some(recovered) = platform.wait_recovered(Duration::from_secs(30)).await else {
        panic!("not recovered: {}", platform.describe().await);
    };
    let after = registrations(&platform.client).await;
    let decided = keeps_deciding(&mut platform, back).await;
    let report = load.stop().await;
    println!(
        "measured: quorum lost for {} ms: {} of {} requests failed meanwhile; quorum back: first \
         write {} ms, steady and routing a new registration {} ms, a new instance ready and \
         routed {} ms after the re-pin; {} requests failed after",
        (back - lost).as_millis(),
        failed_without_quorum.len(),
        served_without_quorum + failed_without_quorum.len() as u64,
        write.as_millis(),
        recovered.as_millis(),
        decided.as_millis(),
        report.failures.len(),
    );
    assert!(
        failed_without_quorum.is_empty(),
        "requests failed while quorum was lost: {:?}",
        failed_without_quorum.first()
    );
    assert!(
        served_without_quorum > 0,
        "nothing was served without quorum"
    );
    assert!(report.failures.is_empty(), "{}", report.failure_summary());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "instances still registered once quorum is back"
    );
}
