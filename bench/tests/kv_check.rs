//! The key-value checker run end to end as a test (a short run of what
//! `bench/kv-check.sh` runs): scaling 2 → 5 → 2 with a kill -9 under load
//! loses no acknowledged write, and neither does cutting an instance off
//! from etcd; the hot keys' histories are linearizable. Needs the binaries built
//! (`cargo build --workspace --bins`; `scripts/test` does).

use std::time::Duration;

use shoal_bench::kv_check::{CheckConfig, CheckReport, run, run_cut_off};
use shoal_tests::netns::NetNs;

/// A short run: 4 clients on their own keys, 4 on 3 hot keys, 3 s phases.
fn short_run() -> CheckConfig {
    CheckConfig {
        clients: 4,
        keys_per_client: 25,
        phase: Duration::from_secs(3),
        replicas: 2,
        hot_clients: 4,
        hot_keys: 3,
        check_budget: Duration::from_secs(60),
    }
}

/// Nothing lost, no stale read, every hot key's history linearizable, and
/// enough work for that to mean something.
fn assert_sound(report: &CheckReport) {
    println!("{}", report.render());
    assert_eq!(report.lost, 0, "{}", report.render());
    assert_eq!(report.stale_reads, 0, "{}", report.render());
    assert!(
        report.acknowledged > 300,
        "too little work to mean anything: {}",
        report.render()
    );
    let lin = &report.linearizability;
    assert!(lin.linearizable(), "{}", report.render());
    assert!(
        lin.operations > 300,
        "too few operations on the hot keys to mean anything: {}",
        lin.summary()
    );
}

#[tokio::test]
async fn the_checker_loses_nothing_while_scaling_and_after_a_kill() {
    let report = run(short_run()).await.expect("the checker ran");
    assert_sound(&report);
    assert_eq!(report.phases.len(), 4);
}

#[tokio::test]
async fn the_checker_loses_nothing_while_an_instance_is_cut_off_from_etcd() {
    let Some(netns) = NetNs::create_or_skip("the key-value checker's etcd partition") else {
        return;
    };
    let report = run_cut_off(short_run(), netns)
        .await
        .expect("the checker ran");
    assert_sound(&report);
}
