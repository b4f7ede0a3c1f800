//! The registry store's conformance suite on a real etcd: the same checks
//! the in-memory etcd passes in the registry crate's unit tests, so the two
//! behave alike for everything the store, the watcher and the lease keeper
//! rely on.

use registry::registration::backend::EtcdLeases;
use registry::store::conformance;
use registry::{Keys, Store};
use shoal_tests::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_etcd_passes_the_conformance_suite() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let store = Store::etcd(client.clone(), Keys::default());
    conformance::run(&store, EtcdLeases::new(client.clone()), async |revision| {
        client
            .clone()
            .compact(revision, None)
            .await
            .expect("etcd compacts");
    })
    .await;
}
