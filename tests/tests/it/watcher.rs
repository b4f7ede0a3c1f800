//! The watcher against a real etcd: compaction, malformed entries, outages.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, WatchOptions};
use registry::{Instance, InstanceState, Keys, Store, Watcher};
use shoal_tests::Etcd;
use shoal_tests::binaries::registry_cli;

fn instance(id: &str) -> Instance {
    let mut i = Instance::new("app", "127.0.0.1:9");
    i.id = id.to_owned();
    i.state = InstanceState::Ready;
    i
}

async fn put(client: &Client, i: &Instance) {
    let mut client = client.clone();
    client
        .put(
            Keys::default().instance(&i.service, &i.id),
            i.to_json(),
            None,
        )
        .await
        .unwrap();
}

fn ids(w: &Watcher<Instance>) -> BTreeSet<String> {
    w.snapshot()
        .entries
        .values()
        .map(|i| i.id.clone())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumed_from_a_compacted_revision_lists_again() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let keys = Keys::default();
    put(&client, &instance("a")).await;
    put(&client, &instance("b")).await;

    let first =
        Watcher::<Instance>::start(&Store::etcd(client.clone(), keys.clone()), keys.instances());
    assert!(first.wait_synced(Duration::from_secs(5)).await);
    let saved = first.snapshot();
    drop(first);
    assert_eq!(saved.entries.len(), 2);

    client
        .delete(keys.instance("app", "a"), None)
        .await
        .unwrap();
    put(&client, &instance("c")).await;
    let head = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(head, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();

    // The saved revision really is gone: a raw watch from it is refused as compacted.
    let mut raw = client
        .watch(
            keys.instances(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(saved.revision + 1),
            ),
        )
        .await
        .unwrap();
    let mut compacted = 0;
    while compacted == 0 {
        let msg = tokio::time::timeout(Duration::from_secs(5), raw.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        compacted = msg.compact_revision();
        assert!(
            msg.created() || compacted > 0 || msg.canceled(),
            "unexpected watch message {msg:?}"
        );
    }

    let resumed = Watcher::resume(
        &Store::etcd(client.clone(), keys.clone()),
        keys.instances(),
        saved,
    );
    assert!(
        resumed
            .wait_for(Duration::from_secs(5), |s| s.connected
                && s.revision >= head)
            .await,
        "resumed watcher did not recover: {:?}",
        resumed.snapshot()
    );
    assert_eq!(ids(&resumed), set(&["b", "c"]));
    // And it keeps following changes after the relist.
    put(&client, &instance("d")).await;
    assert!(
        resumed
            .wait_for(Duration::from_secs(2), |s| s.entries.len() == 3)
            .await
    );
    assert_eq!(ids(&resumed), set(&["b", "c", "d"]));
}

/// Found by the property test (`watcher_props`, seed 3): compacting at R
/// drops the tombstone of a delete made at R, and etcd still accepts a watch
/// from R; a watcher resumed at R - 1 that watched from R never saw the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_at_the_compaction_revision_is_not_missed_on_resume() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let keys = Keys::default();
    put(&client, &instance("a")).await;
    put(&client, &instance("b")).await;
    let first =
        Watcher::<Instance>::start(&Store::etcd(client.clone(), keys.clone()), keys.instances());
    assert!(first.wait_synced(Duration::from_secs(5)).await);
    let saved = first.snapshot();
    drop(first);

    let deleted = client
        .delete(keys.instance("app", "a"), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        deleted,
        saved.revision + 1,
        "the delete is the next revision"
    );
    client
        .compact(deleted, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();

    let resumed = Watcher::resume(
        &Store::etcd(client.clone(), keys.clone()),
        keys.instances(),
        saved,
    );
    assert!(
        resumed
            .wait_for(Duration::from_secs(5), |s| s.connected
                && s.entries.len() == 1)
            .await,
        "the resumed watcher still has the deleted entry: {:?}",
        resumed.snapshot()
    );
    assert_eq!(ids(&resumed), set(&["b"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_skipped_with_a_warning_and_the_rest_still_list() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let keys = Keys::default();
    put(&client, &instance("good")).await;
    client
        .put(keys.instance("app", "bad"), "{nope", None)
        .await
        .unwrap();
    let mut mislabelled = instance("other");
    mislabelled.service = "web".into();
    client
        .put(keys.instance("app", "other"), mislabelled.to_json(), None)
        .await
        .unwrap();

    let out = registry_cli(&etcd, &["list"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("good"), "{stdout}");
    assert!(
        !stdout.contains("bad") && !stdout.contains("other"),
        "{stdout}"
    );
    assert!(
        stderr.contains("/shoal/instances/app/bad") && stderr.contains("not valid JSON"),
        "{stderr}"
    );
    assert!(stderr.contains("/shoal/instances/app/other"), "{stderr}");

    let watcher =
        Watcher::<Instance>::start(&Store::etcd(client.clone(), keys.clone()), keys.instances());
    assert!(watcher.wait_synced(Duration::from_secs(5)).await);
    assert_eq!(ids(&watcher), set(&["good"]));

    // A good entry overwritten with garbage leaves the set; fixed, it comes back.
    client
        .put(keys.instance("app", "good"), "[]", None)
        .await
        .unwrap();
    assert!(
        watcher
            .wait_for(Duration::from_secs(2), |s| s.entries.is_empty())
            .await
    );
    put(&client, &instance("good")).await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(2), |s| s.entries.len() == 1)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_snapshot_is_kept_while_etcd_is_away_and_updated_when_it_returns() {
    let mut etcd = Etcd::start().await;
    let client = etcd.client().await;
    let keys = Keys::default();
    put(&client, &instance("a")).await;
    put(&client, &instance("b")).await;
    let watcher =
        Watcher::<Instance>::start(&Store::etcd(client.clone(), keys.clone()), keys.instances());
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |s| s.entries.len() == 2)
            .await
    );

    etcd.stop().await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |s| !s.connected)
            .await,
        "disconnection not noticed"
    );
    assert_eq!(
        ids(&watcher),
        set(&["a", "b"]),
        "the last good snapshot must survive an outage"
    );

    etcd.start_again().await;
    put(&client, &instance("c")).await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |s| s.connected
                && s.entries.len() == 3)
            .await,
        "{:?}",
        watcher.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_is_noticed_and_the_snapshot_kept() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let keys = Keys::default();
    let watcher =
        Watcher::<Instance>::start(&Store::etcd(client.clone(), keys.clone()), keys.instances());
    assert!(watcher.wait_synced(Duration::from_secs(5)).await);
    // A change that arrives through the watch stream: the stream is established
    // (freezing etcd while the watch is being created would test something else).
    put(&client, &instance("a")).await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |s| s.entries.len() == 1)
            .await
    );

    // SIGSTOP: the TCP connection stays open, nothing answers.
    etcd.signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen = std::time::Instant::now();
    let noticed = watcher
        .wait_for(Duration::from_secs(15), |s| !s.connected)
        .await;
    let took = frozen.elapsed();
    etcd.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(noticed, "a frozen etcd was not noticed within 15 s");
    println!(
        "measured: frozen etcd noticed by the watcher after {} ms",
        took.as_millis()
    );
    assert_eq!(ids(&watcher), set(&["a"]), "the last snapshot is kept");

    put(&client, &instance("b")).await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(10), |s| s.connected
                && s.entries.len() == 2)
            .await
    );
}

/// Wait until `watcher`'s snapshot reflects `revision`, which `what` brought.
/// Polled: a revision alone wakes no reader, so `wait_for` would not see it.
async fn reaches(watcher: &Watcher<Instance>, revision: i64, what: &str) {
    shoal_tests::wait_until(
        Duration::from_secs(5),
        &format!("{what} to reach the watcher"),
        || watcher.snapshot().revision >= revision,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e} (revision {} of {revision})",
            watcher.snapshot().revision
        )
    });
}

/// A quiet watch hears etcd's progress answers every second: they move the
/// snapshot's revision on but wake nobody and copy nothing. Before, each
/// woke every reader, and a gateway rebuilt its routing table once a second
/// (20 ms at 10,000 routes, doubling its p99 in `bench/gateway-scale.sh`);
/// and later the first one after a reader took its share of the set still
/// copied the whole set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_progress_moves_the_revision_on_but_wakes_no_reader_and_copies_nothing() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let keys = Keys::default();
    put(&client, &instance("a")).await;
    let watcher =
        Watcher::<Instance>::start(&Store::etcd(client.clone(), keys.clone()), keys.instances());
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |s| s.connected
                && s.entries.len() == 1)
            .await
    );
    let mut readers = watcher.snapshots();
    readers.borrow_and_update();
    // A reader's share of the set, as a gateway's routing table keeps one.
    let held = watcher.snapshot().entries;
    // A change elsewhere: etcd's revision moves, this prefix stays quiet.
    let elsewhere = client.put("/elsewhere/key", "x", None).await.unwrap();
    let revision = elsewhere.header().unwrap().revision();
    reaches(&watcher, revision, "progress").await;
    assert!(
        !readers.has_changed().unwrap(),
        "a progress notification woke the snapshot's readers"
    );
    assert!(
        std::sync::Arc::ptr_eq(&held, &watcher.snapshot().entries),
        "a progress notification copied the set"
    );
    // Nor does a malformed entry under the prefix, which the set skips
    // (a delete of a key it does not hold).
    let malformed = client
        .put(Keys::default().instance("app", "broken"), "{not json", None)
        .await
        .unwrap();
    let revision = malformed.header().unwrap().revision();
    reaches(&watcher, revision, "the malformed entry").await;
    assert!(
        std::sync::Arc::ptr_eq(&held, &watcher.snapshot().entries),
        "a malformed entry the set skips copied the set"
    );
    // A real change still wakes them.
    put(&client, &instance("b")).await;
    tokio::time::timeout(Duration::from_secs(5), readers.changed())
        .await
        .expect("a put under the prefix wakes the readers")
        .unwrap();
    assert_eq!(ids(&watcher), set(&["a", "b"]));
}
