//! One suite of checks that the in-memory etcd behaves as a real one does,
//! for everything the store, the watcher and the lease keeper rely on. The
//! registry crate's unit tests run it on [`MemoryEtcd`](super::memory::MemoryEtcd);
//! the `tests` crate runs it on a real etcd (feature `conformance`). A
//! check that passes on one and fails on the other is a bug in the memory
//! model, or a use of etcd the memory model does not cover.
//!
//! Each check works under its own key prefix, so one etcd serves the suite.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::backend::{
    BackendError, Cmp, Compare, Op, OpResult, Range, Span, Target, Txn, WatchEvent, WatchMessage,
};
use super::{Action, Fence, KEEP_SERVICE_HISTORY, Kind, Store, StoreError, Write, Written};
use crate::keys::Keys;
use crate::manifest::Manifest;
use crate::model::{
    Instance, NamedRoute, RegistryValue, RetireRequest, Rollout, Route, ScalingEvent,
    ScalingMetric, ScalingPolicy,
};
use crate::registration::backend::{BackendError as LeaseError, LeaseBackend};
use crate::spec::Service;
use crate::tls_cert::{CertPem, fixture};
use crate::watcher::Watcher;

/// How long a check waits for a watch to deliver what it must.
const WATCH_WAIT: Duration = Duration::from_secs(5);

/// Run every check. `compact` compacts the backend's history at a revision.
pub async fn run(store: &Store, leases: impl LeaseBackend, compact: impl AsyncFn(i64)) {
    macro_rules! check {
        ($name:ident $(, $arg:expr)*) => {{
            println!("conformance: {}", stringify!($name));
            $name(&under(store, stringify!($name)) $(, $arg)*).await;
        }};
    }
    check!(revisions_and_versions);
    check!(compares);
    check!(writes_to_one_key_twice_are_refused);
    check!(ranges);
    check!(watches_replay_then_follow);
    check!(compacted_watches, compact);
    check!(lease_operations, leases);
    check!(routes);
    check!(certificates);
    check!(policies_and_pins);
    check!(rollout_requests);
    check!(retiring);
    check!(fenced_commits);
    check!(service_specs_and_their_history);
    check!(manifests_apply_whole_or_not_at_all);
    check!(watcher_over_the_store);
}

/// The store under `/conformance/{name}`.
fn under(store: &Store, name: &str) -> Store {
    let name = name.replace('_', "-");
    store.with_keys(Keys::new(&format!("/conformance/{name}")).expect("a valid prefix"))
}

async fn txn(store: &Store, txn: Txn) -> super::backend::TxnOutcome {
    store
        .backend()
        .txn(txn)
        .await
        .expect("the transaction runs")
}

async fn get(store: &Store, key: &str) -> Option<super::backend::Kv> {
    let listing = store
        .backend()
        .range(Range::key(key))
        .await
        .expect("the read runs");
    listing.kvs.into_iter().next()
}

fn put_result(outcome: &super::backend::TxnOutcome) -> Option<super::backend::Kv> {
    match outcome.results.first() {
        Some(OpResult::Put { prev }) => prev.clone(),
        other => panic!("expected a put result, got {other:?}"),
    }
}

pub async fn revisions_and_versions(store: &Store) {
    let key = format!("{}/a", store.keys().prefix());
    let first = txn(store, Txn::ops(vec![Op::put(key.as_str(), "1")])).await;
    assert_eq!(put_result(&first), None, "a new key has no previous value");
    let kv = get(store, &key).await.expect("the key was put");
    assert_eq!(
        (kv.version, kv.create_revision, kv.mod_revision),
        (1, first.revision, first.revision)
    );

    let second = txn(store, Txn::ops(vec![Op::put(key.as_str(), "2")])).await;
    assert_eq!(
        second.revision,
        first.revision + 1,
        "each write takes the next revision"
    );
    assert_eq!(put_result(&second).map(|p| p.value), Some(b"1".to_vec()));
    let kv = get(store, &key).await.unwrap();
    assert_eq!(
        (kv.version, kv.create_revision, kv.mod_revision),
        (2, first.revision, second.revision)
    );

    let read_only = txn(store, Txn::ops(vec![Op::Get(key.clone())])).await;
    assert_eq!(
        read_only.revision, second.revision,
        "a read takes no revision"
    );
    let nothing = txn(store, Txn::ops(vec![Op::delete(format!("{key}-missing"))])).await;
    assert_eq!(nothing.results, vec![OpResult::Delete { deleted: 0 }]);
    assert_eq!(
        nothing.revision, second.revision,
        "deleting nothing takes no revision"
    );

    let deleted = txn(store, Txn::ops(vec![Op::delete(key.as_str())])).await;
    assert_eq!(deleted.results, vec![OpResult::Delete { deleted: 1 }]);
    assert_eq!(get(store, &key).await, None);
    let again = txn(store, Txn::ops(vec![Op::put(key.as_str(), "3")])).await;
    let kv = get(store, &key).await.unwrap();
    assert_eq!(
        (kv.version, kv.create_revision),
        (1, again.revision),
        "a key put after a delete starts over"
    );
}

pub async fn compares(store: &Store) {
    let key = format!("{}/k", store.keys().prefix());
    let missing = Txn {
        when: vec![Compare::exists(key.as_str())],
        then: vec![Op::put(key.as_str(), "then")],
        otherwise: vec![Op::Get(key.clone())],
    };
    let outcome = txn(store, missing).await;
    assert!(!outcome.succeeded, "a missing key does not exist");
    assert_eq!(outcome.results, vec![OpResult::Get(None)]);

    let create = Txn {
        when: vec![Compare::absent(key.as_str())],
        then: vec![Op::put(key.as_str(), "v")],
        otherwise: vec![],
    };
    let created = txn(store, create.clone()).await;
    assert!(created.succeeded);
    assert!(
        !txn(store, create).await.succeeded,
        "absent fails once the key exists"
    );

    let stale = Txn {
        when: vec![Compare::unchanged_since(key.as_str(), created.revision - 1)],
        then: vec![Op::put(key.as_str(), "w")],
        otherwise: vec![Op::Get(key.clone())],
    };
    let outcome = txn(store, stale).await;
    assert!(!outcome.succeeded);
    assert_eq!(
        outcome.first_get().map(|kv| kv.value.clone()),
        Some(b"v".to_vec())
    );
    let fresh = Txn {
        when: vec![
            Compare::unchanged_since(key.as_str(), created.revision),
            Compare::new(
                key.as_str(),
                Target::CreateRevision,
                Cmp::Equal,
                created.revision,
            ),
            Compare::new(key.as_str(), Target::Version, Cmp::Less, 2),
            Compare::new(format!("{key}-missing"), Target::ModRevision, Cmp::Equal, 0),
        ],
        then: vec![Op::put(key.as_str(), "w")],
        otherwise: vec![],
    };
    assert!(txn(store, fresh).await.succeeded);
}

pub async fn writes_to_one_key_twice_are_refused(store: &Store) {
    let key = format!("{}/k", store.keys().prefix());
    let twice = Txn::ops(vec![Op::put(key.as_str(), "a"), Op::put(key.as_str(), "b")]);
    assert!(matches!(
        store.backend().txn(twice).await,
        Err(BackendError::Refused(_))
    ));
    let put_and_delete = Txn::ops(vec![
        Op::put(key.as_str(), "a"),
        Op::Delete(Span::Prefix(store.keys().root())),
    ]);
    assert!(matches!(
        store.backend().txn(put_and_delete).await,
        Err(BackendError::Refused(_))
    ));
    assert_eq!(
        get(store, &key).await,
        None,
        "a refused transaction changes nothing"
    );
}

pub async fn ranges(store: &Store) {
    let root = store.keys().root();
    for key in ["app/1", "app/2", "app/3", "app2/1"] {
        txn(store, Txn::ops(vec![Op::put(format!("{root}{key}"), key)])).await;
    }
    let keys = |listing: super::backend::Listing| -> Vec<String> {
        listing
            .kvs
            .into_iter()
            .map(|kv| kv.key.trim_start_matches(&root).to_owned())
            .collect()
    };
    let backend = store.backend();
    let app = backend
        .range(Range::prefix(format!("{root}app/")))
        .await
        .unwrap();
    assert_eq!(
        keys(app),
        ["app/1", "app/2", "app/3"],
        "a directory prefix leaves app2/ out"
    );

    let mut newest = Range::prefix(format!("{root}app/"));
    newest.descending = true;
    newest.limit = 2;
    newest.keys_only = true;
    let listing = backend.range(newest).await.unwrap();
    assert!(
        listing.kvs.iter().all(|kv| kv.value.is_empty()),
        "keys only"
    );
    assert_eq!(keys(listing), ["app/3", "app/2"]);

    let mut span = Range::key("");
    span.span = Span::Range {
        from: format!("{root}app/2"),
        to: format!("{root}app2/"),
    };
    assert_eq!(keys(backend.range(span).await.unwrap()), ["app/2", "app/3"]);

    let delete = Op::Delete(Span::Range {
        from: format!("{root}app/1"),
        to: format!("{root}app/3"),
    });
    assert_eq!(
        txn(store, Txn::ops(vec![delete])).await.results,
        vec![OpResult::Delete { deleted: 2 }]
    );
    let all = backend.range(Range::prefix(root.as_str())).await.unwrap();
    assert_eq!(keys(all), ["app/3", "app2/1"]);
}

/// The next message of a watch that must deliver one (progress skipped).
async fn next(stream: &mut BoxStream<'static, WatchMessage>) -> WatchMessage {
    let wait = async {
        loop {
            match stream.next().await {
                Some(WatchMessage::Progress(_)) => continue,
                Some(message) => return message,
                None => panic!("the watch stream ended"),
            }
        }
    };
    tokio::time::timeout(WATCH_WAIT, wait)
        .await
        .expect("the watch delivers within 5 s")
}

/// The next `n` events, however the backend batches them into messages
/// (etcd sends a replay in as few messages as it likes).
async fn next_events(stream: &mut BoxStream<'static, WatchMessage>, n: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        match next(stream).await {
            WatchMessage::Events(more) => events.extend(more),
            other => panic!("expected events, got {other:?}"),
        }
    }
    assert_eq!(events.len(), n, "more events than expected: {events:?}");
    events
}

pub async fn watches_replay_then_follow(store: &Store) {
    let root = store.keys().root();
    let dir = format!("{root}app/");
    let first = txn(store, Txn::ops(vec![Op::put(format!("{dir}a"), "1")])).await;
    txn(
        store,
        Txn::ops(vec![Op::put(format!("{root}app2/x"), "other")]),
    )
    .await;
    txn(store, Txn::ops(vec![Op::put(format!("{dir}b"), "2")])).await;

    let mut stream = store
        .backend()
        .watch(dir.clone(), first.revision)
        .await
        .unwrap();
    let replayed: Vec<String> = next_events(&mut stream, 2)
        .await
        .iter()
        .map(|e| e.key().trim_start_matches(&dir).to_owned())
        .collect();
    assert_eq!(
        replayed,
        ["a", "b"],
        "history from the start revision, app2/ left out"
    );

    let both = txn(
        store,
        Txn::ops(vec![
            Op::put(format!("{dir}c"), "3"),
            Op::delete(format!("{dir}a")),
        ]),
    )
    .await;
    let live = next_events(&mut stream, 2).await;
    assert!(live.iter().all(|e| e.revision() == both.revision));
    assert!(
        matches!(&live[0], WatchEvent::Put(kv) if kv.key == format!("{dir}c") && kv.value == b"3")
    );
    assert_eq!(
        live[1],
        WatchEvent::Delete {
            key: format!("{dir}a"),
            revision: both.revision
        }
    );
}

pub async fn compacted_watches(store: &Store, compact: impl AsyncFn(i64)) {
    let root = store.keys().root();
    let before = txn(store, Txn::ops(vec![Op::put(format!("{root}a"), "1")])).await;
    let at = txn(store, Txn::ops(vec![Op::put(format!("{root}b"), "2")])).await;
    compact(at.revision).await;
    let mut refused = store
        .backend()
        .watch(root.clone(), before.revision)
        .await
        .unwrap();
    assert_eq!(
        next(&mut refused).await,
        WatchMessage::Compacted(at.revision)
    );
    let mut from_compaction = store
        .backend()
        .watch(root.clone(), at.revision)
        .await
        .unwrap();
    let replayed = next_events(&mut from_compaction, 1).await;
    assert_eq!(
        replayed[0].key(),
        format!("{root}b"),
        "a watch may start at the compaction revision"
    );
}

pub async fn lease_operations(store: &Store, mut leases: impl LeaseBackend) {
    let key = format!("{}/on-lease", store.keys().prefix());
    let lease = leases.grant(Duration::from_secs(5)).await.unwrap();
    leases.put(&key, "v".into(), lease).await.unwrap();
    assert!(leases.holds(&key, lease).await.unwrap());
    assert_eq!(get(store, &key).await.map(|kv| kv.lease), Some(lease));
    assert_eq!(leases.keep_alive(lease).await.unwrap(), 5);
    leases.revoke(lease).await.unwrap();
    assert_eq!(
        get(store, &key).await,
        None,
        "a revoked lease takes its keys"
    );
    assert!(!leases.holds(&key, lease).await.unwrap());
    assert_eq!(
        leases.keep_alive(lease).await.unwrap(),
        0,
        "a gone lease keeps nothing alive"
    );
    assert!(matches!(
        leases.put(&key, "v".into(), lease).await,
        Err(LeaseError::LeaseNotFound(l)) if l == lease
    ));
}

fn route(service: &str) -> Route {
    serde_json::from_value(serde_json::json!({ "service": service, "path_prefix": "/api" }))
        .expect("a valid route")
}

pub async fn routes(store: &Store) {
    assert_eq!(
        store.put_route("api", &route("app")).await.unwrap(),
        Written::Created
    );
    assert_eq!(
        store.put_route("api", &route("other")).await.unwrap(),
        Written::Replaced
    );
    let names: Vec<(String, String)> = store
        .routes()
        .await
        .unwrap()
        .into_iter()
        .map(|NamedRoute { name, route }| (name, route.service))
        .collect();
    assert_eq!(names, [("api".to_owned(), "other".to_owned())]);
    assert!(
        matches!(store.put_route("a/b", &route("app")).await, Err(StoreError::Invalid(e)) if e.field == "route name")
    );
    assert!(matches!(
        store.put_route("x", &route("no/slash")).await,
        Err(StoreError::Invalid(_))
    ));

    // A malformed route next to good ones is skipped in a listing.
    let bad = format!("{}bad", store.keys().routes());
    txn(store, Txn::ops(vec![Op::put(bad, "{nope")])).await;
    assert_eq!(store.routes().await.unwrap().len(), 1);

    assert!(store.delete_route("api").await.unwrap());
    assert!(
        !store.delete_route("api").await.unwrap(),
        "nothing left to delete"
    );
}

pub async fn certificates(store: &Store) {
    assert_eq!(
        store.put_cert("shop", &fixture::pem()).await.unwrap(),
        Written::Created
    );
    assert_eq!(
        store.put_cert("shop", &fixture::pem()).await.unwrap(),
        Written::Replaced
    );
    let listed: Vec<(String, Vec<String>, i64)> = store
        .certs()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.cert.dns_names, c.cert.not_after))
        .collect();
    assert_eq!(
        listed,
        [(
            "shop".to_owned(),
            vec!["a.test".to_owned(), "*.b.test".to_owned()],
            fixture::NOT_AFTER
        )]
    );
    assert!(store.cert("shop").await.unwrap().is_some());
    assert!(store.cert("other").await.unwrap().is_none());

    // A pair that does not check out is refused and nothing is written.
    let crossed = CertPem {
        key_pem: fixture::OTHER_KEY_PEM.to_owned(),
        ..fixture::pem()
    };
    assert!(
        matches!(store.put_cert("crossed", &crossed).await, Err(StoreError::Invalid(e)) if e.field == "cert.key_pem")
    );
    assert!(
        matches!(store.put_cert("a/b", &fixture::pem()).await, Err(StoreError::Invalid(e)) if e.field == "certificate name")
    );
    assert!(get(store, &store.keys().cert("crossed")).await.is_none());

    // One written around the store is skipped in a listing, and an error
    // naming its key when read alone.
    let bad = store.keys().cert("bad");
    txn(
        store,
        Txn::ops(vec![Op::put(bad.as_str(), crossed.to_json())]),
    )
    .await;
    assert_eq!(store.certs().await.unwrap().len(), 1);
    let err = store.cert("bad").await.unwrap_err().to_string();
    assert!(err.contains(&bad) && err.contains("cert.key_pem"), "{err}");

    assert!(store.delete_cert("shop").await.unwrap());
    assert!(
        !store.delete_cert("shop").await.unwrap(),
        "nothing left to delete"
    );
}

fn policy(service: &str) -> ScalingPolicy {
    serde_json::from_value(serde_json::json!({
        "service": service, "min": 1, "max": 5, "metric": "inflight", "target": 4.0
    }))
    .expect("a valid policy")
}

pub async fn policies_and_pins(store: &Store) {
    assert!(matches!(
        store.set_pin("app", Some(3)).await,
        Err(StoreError::NoPolicy { service }) if service == "app"
    ));
    assert_eq!(
        store.put_policy(&policy("app")).await.unwrap(),
        Written::Created
    );
    let pinned = store.set_pin("app", Some(3)).await.unwrap();
    assert_eq!((pinned.was, pinned.policy.pinned), (None, Some(3)));
    let stored = store.policy("app").await.unwrap().expect("a policy");
    assert_eq!(stored.value.pinned, Some(3));
    assert_eq!(stored.value.metric, ScalingMetric::Inflight);

    // Someone writes the policy between this read and the pin: refused.
    store.put_policy(&policy("app")).await.unwrap();
    assert!(matches!(
        store.repin(stored, None).await,
        Err(StoreError::Conflict { .. })
    ));
    let unchanged = store.set_pin("app", None).await.unwrap();
    assert_eq!(
        (unchanged.was, unchanged.policy.pinned),
        (None, None),
        "unpinning an unpinned policy writes nothing"
    );
    assert!(matches!(
        store.set_pin("app", Some(5000)).await,
        Err(StoreError::Invalid(_))
    ));

    assert_eq!(store.policies().await.unwrap().len(), 1);
    assert!(store.delete_policy("app").await.unwrap());
    assert_eq!(store.policy("app").await.unwrap(), None);
}

pub async fn rollout_requests(store: &Store) {
    let request = Rollout::request("app", "cli");
    assert!(
        matches!(
            store.request_rollout(&request).await,
            Err(StoreError::NoPolicy { .. })
        ),
        "no policy: nobody would carry it out"
    );
    store.put_policy(&policy("app")).await.unwrap();
    store.request_rollout(&request).await.unwrap();
    let second = Rollout::request("app", "api");
    match store.request_rollout(&second).await {
        Err(StoreError::RolloutInProgress(existing)) => assert_eq!(existing.requested_by, "cli"),
        other => panic!("expected the first request to be in the way, got {other:?}"),
    }
    let mut invalid = Rollout::request("app", "cli");
    invalid.max_surge = 0;
    assert!(matches!(
        store.request_rollout(&invalid).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn retiring(store: &Store) {
    let request = RetireRequest::new("scale down", Some("api"));
    assert!(matches!(
        store.retire("app", "i1", &request).await,
        Err(StoreError::NotRegistered { .. })
    ));
    let instance = Instance {
        id: "i1".into(),
        ..Instance::new("app", "127.0.0.1:1")
    };
    let key = store.keys().instance("app", "i1");
    txn(store, Txn::ops(vec![Op::put(key, instance.to_json())])).await;
    store.retire("app", "i1", &request).await.unwrap();
    let written = store
        .get::<RetireRequest>(&store.keys().retire("app", "i1"))
        .await
        .unwrap();
    assert_eq!(written.map(|s| s.value), Some(request));
    assert!(store.clear_retire("app", "i1").await.unwrap());
    assert!(!store.clear_retire("app", "i1").await.unwrap());
    let control = RetireRequest::new("a\u{7}", None);
    assert!(matches!(
        store.retire("app", "i1", &control).await,
        Err(StoreError::Invalid(_))
    ));
}

fn event(seq: u64) -> Write {
    Write::Event {
        seq,
        event: ScalingEvent {
            service: "app".into(),
            at: Utc::now(),
            kind: "decision".into(),
            current: 1,
            desired: 2,
            reason: format!("event {seq}"),
            bounded_by: None,
            inputs: Default::default(),
            instance: None,
        },
    }
}

pub async fn fenced_commits(store: &Store) {
    let leader = store.keys().leader();
    let elected = txn(store, Txn::ops(vec![Op::put(format!("{leader}/1"), "me")])).await;
    let fence = Fence {
        key: format!("{leader}/1"),
        create_revision: elected.revision,
    };
    assert_eq!(store.last_event_seq("app").await.unwrap(), None);
    store
        .commit(&fence, (1..=3).map(event).collect())
        .await
        .unwrap();
    store
        .commit(
            &fence,
            vec![
                event(4),
                Write::TrimEvents {
                    service: "app".into(),
                    below: 3,
                },
                Write::Retire {
                    service: "app".into(),
                    id: "i1".into(),
                    reason: "scale down".into(),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.last_event_seq("app").await.unwrap(), Some(4));
    let newest: Vec<String> = store
        .events("app", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.reason)
        .collect();
    assert_eq!(
        newest,
        ["event 4", "event 3"],
        "newest first, below 3 trimmed"
    );
    assert_eq!(store.events("app", 1).await.unwrap().len(), 1);
    let retire = store
        .get::<RetireRequest>(&store.keys().retire("app", "i1"))
        .await
        .unwrap();
    assert_eq!(
        retire.map(|r| r.value.reason),
        Some("scale down".to_owned())
    );

    // A value its readers would refuse is refused before anything is written.
    let mut unreadable = event(5);
    if let Write::Event { event, .. } = &mut unreadable {
        event.reason = "crashed: \u{1b}[31mERROR\u{1b}[0m".into();
    }
    assert!(matches!(
        store.commit(&fence, vec![event(5), unreadable]).await,
        Err(StoreError::Invalid(e)) if e.field == "event.reason"
    ));
    assert_eq!(
        store.last_event_seq("app").await.unwrap(),
        Some(4),
        "nothing of a refused commit was written"
    );

    // Another term: the key was deleted and created again.
    txn(store, Txn::ops(vec![Op::delete(format!("{leader}/1"))])).await;
    txn(
        store,
        Txn::ops(vec![Op::put(format!("{leader}/1"), "someone else")]),
    )
    .await;
    assert!(matches!(
        store.commit(&fence, vec![event(5)]).await,
        Err(StoreError::Deposed)
    ));
    assert_eq!(
        store.last_event_seq("app").await.unwrap(),
        Some(4),
        "a deposed leader wrote nothing"
    );
}

pub async fn watcher_over_the_store(store: &Store) {
    let instance = |id: &str| Instance {
        id: id.into(),
        ..Instance::new("app", "127.0.0.1:1")
    };
    let keys = store.keys().clone();
    txn(
        store,
        Txn::ops(vec![Op::put(
            keys.instance("app", "a"),
            instance("a").to_json(),
        )]),
    )
    .await;
    txn(
        store,
        Txn::ops(vec![Op::put(keys.instance("app", "bad"), "{nope")]),
    )
    .await;
    let watcher: Watcher<Instance> = Watcher::start(store, keys.instances());
    assert!(
        watcher.wait_synced(WATCH_WAIT).await,
        "the first list succeeds"
    );
    let ids = |w: &Watcher<Instance>| -> Vec<String> {
        w.snapshot()
            .entries
            .values()
            .map(|i| i.id.clone())
            .collect()
    };
    assert_eq!(ids(&watcher), ["a"], "the malformed entry is skipped");

    txn(
        store,
        Txn::ops(vec![Op::put(
            keys.instance("app", "b"),
            instance("b").to_json(),
        )]),
    )
    .await;
    txn(store, Txn::ops(vec![Op::delete(keys.instance("app", "a"))])).await;
    let seen = watcher
        .wait_for(WATCH_WAIT, |s| {
            s.entries.len() == 1 && s.entries.contains_key(&keys.instance("app", "b"))
        })
        .await;
    assert!(
        seen,
        "the watcher follows a put and a delete: {:?}",
        ids(&watcher)
    );
    let decoded = Instance::decode(
        &keys,
        &keys.instance("app", "b"),
        instance("b").to_json().as_bytes(),
    );
    assert!(decoded.is_ok());
}

fn spec(greeting: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "name": "web",
        "process": {"argv": ["node", "server.js"], "port_env": "PORT", "env": {"GREETING": greeting}},
    }))
    .expect("a valid spec")
}

pub async fn service_specs_and_their_history(store: &Store) {
    let first = store.put_service(&spec("a")).await.unwrap();
    assert_eq!(
        (first.written, first.previous.clone()),
        (Written::Created, None)
    );
    let again = store.put_service(&spec("a")).await.unwrap();
    assert!(again.unchanged(), "the same spec writes nothing");
    assert!(store.service_history("web").await.unwrap().is_empty());

    let second = store.put_service(&spec("b")).await.unwrap();
    assert_eq!(second.previous.as_deref(), Some(first.version.as_str()));
    let history = store.service_history("web").await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].1, spec("a"), "the replaced spec is kept");

    let undone = store.undo_service("web").await.unwrap();
    assert_eq!(undone.version, first.version);
    let current = store.service("web").await.unwrap().unwrap().value;
    assert_eq!(current, spec("a"));
    let history: Vec<Service> = store
        .service_history("web")
        .await
        .unwrap()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(history, [spec("b")], "undo swaps the two");
    store.undo_service("web").await.unwrap();
    assert_eq!(
        store.service("web").await.unwrap().unwrap().value,
        spec("b")
    );

    for n in 0..12 {
        store.put_service(&spec(&format!("v{n}"))).await.unwrap();
    }
    let history = store.service_history("web").await.unwrap();
    assert_eq!(
        history.len() as u64,
        KEEP_SERVICE_HISTORY,
        "the history is bounded"
    );
    assert_eq!(history[0].1, spec("v10"), "newest first");
    assert!(history.windows(2).all(|w| w[0].0 > w[1].0));

    let mut invalid = spec("x");
    invalid.process.as_mut().unwrap().argv.clear();
    assert!(matches!(
        store.put_service(&invalid).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.undo_service("nothing").await,
        Err(StoreError::NoService { .. })
    ));
    assert!(store.delete_service("web").await.unwrap());
    assert!(
        store.service_history("web").await.unwrap().is_empty(),
        "the history goes with it"
    );
    store.put_service(&spec("only")).await.unwrap();
    assert!(matches!(
        store.undo_service("web").await,
        Err(StoreError::NothingToUndo { .. })
    ));
}

fn manifest(greeting: &str, max: u32) -> Manifest {
    Manifest::from_value(serde_json::json!({
        "services": {"web": {"process": {"argv": ["node", "server.js"], "port_env": "PORT", "env": {"GREETING": greeting}}}},
        "policies": {"web": {"min": 1, "max": max, "metric": "inflight", "target": 4.0}},
        "routes": {"web": {"path_prefix": "/node/", "service": "web"}},
    }))
    .expect("a valid manifest")
}

fn actions(plan: &super::ApplyPlan) -> Vec<(Kind, Action)> {
    plan.changes.iter().map(|c| (c.kind, c.action)).collect()
}

pub async fn manifests_apply_whole_or_not_at_all(store: &Store) {
    let plan = store.plan_apply(&manifest("a", 4), false).await.unwrap();
    assert_eq!(
        actions(&plan),
        [
            (Kind::Service, Action::Create),
            (Kind::Policy, Action::Create),
            (Kind::Route, Action::Create)
        ]
    );
    store.apply(&plan).await.unwrap();
    let again = store.plan_apply(&manifest("a", 4), false).await.unwrap();
    assert!(!again.changes_anything(), "{:?}", again.changes);

    // The pin is the operator's: a file without one keeps it.
    store.set_pin("web", Some(3)).await.unwrap();
    let edit = store.plan_apply(&manifest("b", 6), false).await.unwrap();
    assert_eq!(
        actions(&edit),
        [
            (Kind::Service, Action::Update),
            (Kind::Policy, Action::Update),
            (Kind::Route, Action::Unchanged)
        ]
    );
    let policy_change = edit
        .changes
        .iter()
        .find(|c| c.kind == Kind::Policy)
        .unwrap();
    assert_eq!(policy_change.detail, "max 4 → 6", "{policy_change}");

    // Someone changes the route between the plan and the apply: nothing is written.
    let mut route = store.routes().await.unwrap().remove(0).route;
    route.strip_prefix = true;
    store.put_route("web", &route).await.unwrap();
    let stale = store.plan_apply(&manifest("c", 5), false).await.unwrap();
    store
        .put_route("web", &route_with_prefix("/other/"))
        .await
        .unwrap();
    assert!(matches!(
        store.apply(&stale).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store.policy("web").await.unwrap().unwrap().value.max,
        4,
        "nothing of the stale plan was written"
    );

    store.apply(&edit).await.unwrap();
    let stored = store.policy("web").await.unwrap().unwrap().value;
    assert_eq!((stored.max, stored.pinned), (6, Some(3)));
    assert_eq!(
        store.service_history("web").await.unwrap().len(),
        1,
        "the replaced spec is kept"
    );

    // Prune: what the file no longer lists goes.
    store
        .put_route("extra", &route_with_prefix("/extra/"))
        .await
        .unwrap();
    let only_service = Manifest::from_value(serde_json::json!({
        "services": {"web": {"process": {"argv": ["node", "server.js"], "port_env": "PORT", "env": {"GREETING": "b"}}}}
    }))
    .unwrap();
    let without = store.plan_apply(&only_service, false).await.unwrap();
    assert!(
        !without.changes_anything(),
        "without --prune nothing is deleted"
    );
    let pruned = store.plan_apply(&only_service, true).await.unwrap();
    let deletes: Vec<(Kind, String)> = pruned
        .changes
        .iter()
        .filter(|c| c.action == Action::Delete)
        .map(|c| (c.kind, c.name.clone()))
        .collect();
    assert_eq!(
        deletes,
        [
            (Kind::Policy, "web".to_owned()),
            (Kind::Route, "extra".to_owned()),
            (Kind::Route, "web".to_owned())
        ]
    );
    store.apply(&pruned).await.unwrap();
    assert!(store.routes().await.unwrap().is_empty());
    assert!(store.policies().await.unwrap().is_empty());
    assert_eq!(store.services().await.unwrap().len(), 1);
}

fn route_with_prefix(prefix: &str) -> Route {
    serde_json::from_value(serde_json::json!({ "service": "web", "path_prefix": prefix }))
        .expect("a valid route")
}
