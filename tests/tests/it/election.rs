//! Leader election: one leader at a time, fenced transactions, takeover.

use std::time::{Duration, Instant};

use registry::election::Election;
use registry::store::Write;
use registry::{Keys, Store, StoreError};
use shoal_tests::autoscaler::election_candidates;
use shoal_tests::{Etcd, wait_until_async};

/// A fenced write of `who` as the retire reason of test/owner.
fn owner(who: &str) -> Vec<Write> {
    vec![Write::Retire {
        service: "test".into(),
        id: "owner".into(),
        reason: who.into(),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_acts_and_a_deposed_one_cannot() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let keys = Keys::default();
    let ttl = Duration::from_secs(2);
    let a = Election::new(client.clone(), &keys);
    let b = Election::new(etcd.client().await, &keys);

    let store = Store::etcd(client.clone(), keys.clone());
    let leader_a = a.campaign("controller-a", ttl).await.unwrap();
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("controller-a"));
    store.commit(&leader_a.fence(), owner("a")).await.unwrap();

    // b campaigns in the background and must not win while a holds the lease.
    let campaign_b = tokio::spawn(async move { b.campaign("controller-b", ttl).await });
    wait_until_async(Duration::from_secs(5), "b to campaign", || async {
        election_candidates(&client).await == 2
    })
    .await
    .unwrap();
    // No condition marks "b has not won": the claim is that a's keep-alive
    // holds its lease past a whole TTL, which only time shows on a real
    // etcd, so b is watched for a TTL and a half second. (The keep-alive
    // loop, `registry::election::keep_lease`, talks to etcd directly and has
    // no paused-time test yet.)
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert!(
        !campaign_b.is_finished(),
        "b was elected while a still held leadership"
    );

    // a loses its lease (as if its process froze past the TTL): b takes over, a is fenced.
    client.lease_revoke(leader_a.lease()).await.unwrap();
    let revoked = Instant::now();
    let leader_b = tokio::time::timeout(Duration::from_secs(3), campaign_b)
        .await
        .expect("b elected")
        .unwrap()
        .unwrap();
    println!(
        "measured: takeover after the leader's lease was revoked: {} ms",
        revoked.elapsed().as_millis()
    );
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("controller-b"));

    let refused = store.commit(&leader_a.fence(), owner("a-again")).await;
    assert!(matches!(refused, Err(StoreError::Deposed)), "{refused:?}");
    // Its keeper finds the lease gone within a third of the TTL.
    tokio::time::timeout(ttl, leader_a.lost().cancelled())
        .await
        .expect("the deposed leader learns it lost");
    store.commit(&leader_b.fence(), owner("b")).await.unwrap();
    let stored = client
        .get(keys.retire("test", "owner"), None)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(stored.kvs()[0].value()).contains(r#""reason":"b""#),
        "{:?}",
        stored.kvs()[0]
    );

    leader_b.resign().await;
    assert_eq!(a.leader().await.unwrap(), None);
}
