//! The key-value checker run end to end as a test (a short run of what
//! `bench/kv-check.sh` runs): scaling 2 → 5 → 2 with a kill -9 under load
//! loses no acknowledged write. Needs the binaries built
//! (`cargo build --workspace --bins`; `scripts/test` does).

use std::time::Duration;

use shoal_bench::kv_check::{CheckConfig, run};

#[tokio::test]
async fn the_checker_loses_nothing_while_scaling_and_after_a_kill() {
    let config = CheckConfig {
        clients: 4,
        keys_per_client: 25,
        phase: Duration::from_secs(3),
        replicas: 2,
    };
    let report = run(config).await.expect("the checker ran");
    println!("{}", report.render());
    assert_eq!(report.lost, 0, "{}", report.render());
    assert_eq!(report.stale_reads, 0, "{}", report.render());
    assert!(
        report.acknowledged > 500,
        "too little work to mean anything: {}",
        report.render()
    );
    assert_eq!(report.phases.len(), 4);
}
