//! Leader election: one leader at a time, fenced transactions, takeover.

use std::time::{Duration, Instant};

use etcd_client::TxnOp;
use registry::Keys;
use registry::election::{Election, ElectionError};
use shoal_tests::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_acts_and_a_deposed_one_cannot() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let keys = Keys::default();
    let ttl = Duration::from_secs(2);
    let a = Election::new(client.clone(), &keys);
    let b = Election::new(etcd.client().await, &keys);

    let leader_a = a.campaign("controller-a", ttl).await.unwrap();
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("controller-a"));
    leader_a
        .txn(vec![TxnOp::put("/shoal/test/owner", "a", None)])
        .await
        .unwrap();

    // b campaigns in the background and must not win while a holds the lease.
    let campaign_b = tokio::spawn(async move { b.campaign("controller-b", ttl).await });
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

    let refused = leader_a
        .txn(vec![TxnOp::put("/shoal/test/owner", "a-again", None)])
        .await;
    assert!(matches!(refused, Err(ElectionError::Lost)), "{refused:?}");
    assert!(leader_a.lost().is_cancelled());
    leader_b
        .txn(vec![TxnOp::put("/shoal/test/owner", "b", None)])
        .await
        .unwrap();
    let owner = client.get("/shoal/test/owner", None).await.unwrap();
    assert_eq!(owner.kvs()[0].value(), b"b");

    leader_b.resign().await;
    assert_eq!(a.leader().await.unwrap(), None);
}
