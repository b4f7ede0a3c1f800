//! A property of the watcher against a real etcd: after any sequence of
//! puts (valid and malformed values), deletes, prefix deletes, compactions,
//! a watcher resumed from a compacted revision, and etcd restarts, both its
//! snapshot and the set rebuilt from its update stream equal what a fresh
//! `get --prefix` reads from etcd, decoded the same way (malformed entries
//! skipped).
//!
//! Randomness is seeded: a failure prints the seed and the steps so far.
//! `SHOAL_WATCHER_SEEDS=7,8` runs those seeds instead of the default ones
//! (three fixed seeds and one taken from the clock).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, DeleteOptions, GetOptions};
use registry::{Instance, InstanceState, Keys, RegistryValue, Store, Update, Watcher};
use shoal_tests::{Etcd, wait_for, wait_until};

const STEPS: usize = 30;
const SERVICES: [&str; 2] = ["app", "app2"];
const IDS: [&str; 4] = ["i1", "i2", "i3", "i4"];
/// How long the watcher may take to catch up with one step.
const CATCH_UP: Duration = Duration::from_secs(8);

/// SplitMix64: small, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

#[derive(Debug, Clone)]
enum Step {
    Put {
        service: String,
        id: String,
        state: InstanceState,
    },
    /// A value the watcher must skip (and whose key it must drop).
    PutMalformed {
        service: String,
        id: String,
        how: &'static str,
    },
    Delete {
        service: String,
        id: String,
    },
    DeletePrefix {
        service: String,
    },
    Compact,
    /// Drop the watcher, change etcd, compact, resume from the saved snapshot.
    ResumeAfterCompaction {
        changes: Vec<Step>,
    },
    RestartEtcd,
}

fn random_change(rng: &mut Rng) -> Step {
    let service = rng.pick(&SERVICES).to_owned();
    let id = rng.pick(&IDS).to_owned();
    match rng.below(10) {
        0..=4 => Step::Put {
            service,
            id,
            state: [
                InstanceState::Starting,
                InstanceState::Ready,
                InstanceState::Draining,
            ][rng.below(3)],
        },
        5 | 6 => Step::PutMalformed {
            service,
            id,
            how: ["not json", "id mismatch", "bad address", "unknown state"][rng.below(4)],
        },
        7 | 8 => Step::Delete { service, id },
        _ => Step::DeletePrefix { service },
    }
}

fn random_step(rng: &mut Rng) -> Step {
    match rng.below(20) {
        0 | 1 => Step::Compact,
        2 => Step::ResumeAfterCompaction {
            changes: (0..1 + rng.below(3)).map(|_| random_change(rng)).collect(),
        },
        3 => Step::RestartEtcd,
        _ => random_change(rng),
    }
}

fn value(service: &str, id: &str, state: InstanceState) -> String {
    let mut i = Instance::new(service, "127.0.0.1:9");
    i.id = id.to_owned();
    i.state = state;
    i.to_json()
}

fn malformed(service: &str, id: &str, how: &str) -> String {
    let good = value(service, id, InstanceState::Ready);
    match how {
        "not json" => "{not json".to_owned(),
        "id mismatch" => value(service, "someone-else", InstanceState::Ready),
        "bad address" => good.replace("127.0.0.1:9", "0.0.0.0:0"),
        _ => good.replace("\"ready\"", "\"sleeping\""),
    }
}

/// Run an etcd call on a clone of `client`, retrying while a restarted etcd
/// comes back.
async fn retry<T, F, Fut>(client: &Client, what: &str, call: F) -> T
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let last = std::sync::Mutex::new(String::from("no answer"));
    let answer = wait_for(Duration::from_secs(10), what, || async {
        match tokio::time::timeout(Duration::from_secs(3), call(client.clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                *last.lock().expect("last error lock") = e.to_string();
                None
            }
            Err(_) => None,
        }
    })
    .await;
    answer.unwrap_or_else(|e| panic!("{e}: {}", last.lock().expect("last error lock")))
}

async fn apply_change(client: &Client, keys: &Keys, step: &Step) {
    let put = |key: String, value: String| async move {
        retry(client, "put", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await;
    };
    match step {
        Step::Put { service, id, state } => {
            put(keys.instance(service, id), value(service, id, *state)).await
        }
        Step::PutMalformed { service, id, how } => {
            put(keys.instance(service, id), malformed(service, id, how)).await
        }
        Step::Delete { service, id } => {
            let key = keys.instance(service, id);
            retry(client, "delete", |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await;
        }
        Step::DeletePrefix { service } => {
            let prefix = keys.service_instances(service);
            retry(client, "delete --prefix", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            })
            .await;
        }
        other => unreachable!("not a change: {other:?}"),
    }
}

async fn compact(client: &Client) {
    let head = retry(client, "get", |mut c| async move { c.get("x", None).await })
        .await
        .header()
        .expect("a header")
        .revision();
    retry(client, "compact", |mut c| async move {
        match c
            .compact(head, Some(CompactionOptions::new().with_physical()))
            .await
        {
            // Nothing written since the last compaction: already done.
            Err(e)
                if e.to_string()
                    .contains("required revision has been compacted") =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    })
    .await;
}

/// Every decodable instance in etcd, as a fresh `get --prefix` reads it.
async fn etcd_state(client: &Client, keys: &Keys) -> BTreeMap<String, Instance> {
    let prefix = keys.instances();
    let resp = retry(client, "get --prefix", |mut c| {
        let prefix = prefix.clone();
        async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
    })
    .await;
    resp.kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            Instance::decode(keys, &key, kv.value())
                .ok()
                .map(|i| (key, i))
        })
        .collect()
}

/// A watcher plus the set its update stream adds up to.
struct Observed {
    watcher: Watcher<Instance>,
    from_updates: Arc<Mutex<BTreeMap<String, Instance>>>,
    follower: tokio::task::JoinHandle<()>,
}

impl Observed {
    fn new(watcher: Watcher<Instance>) -> Self {
        let from_updates = Arc::new(Mutex::new(BTreeMap::new()));
        let mut updates = watcher.subscribe();
        let set = from_updates.clone();
        let follower = tokio::spawn(async move {
            while let Some(update) = updates.next().await {
                let mut set = set.lock().expect("set lock");
                match update {
                    Update::Reset(all) => *set = (*all).clone(),
                    Update::Put(key, value) => {
                        set.insert(key, value);
                    }
                    Update::Delete(key) => {
                        set.remove(&key);
                    }
                }
            }
        });
        Observed {
            watcher,
            from_updates,
            follower,
        }
    }

    fn agrees(&self, want: &BTreeMap<String, Instance>) -> bool {
        *self.watcher.snapshot().entries == *want
            && *self.from_updates.lock().expect("set lock") == *want
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

async fn run_seed(seed: u64) {
    let mut etcd = Etcd::start().await;
    let client = etcd.client().await;
    let keys = Keys::default();
    let mut rng = Rng(seed);
    let mut observed = Observed::new(Watcher::start(
        &Store::etcd(client.clone(), keys.clone()),
        keys.instances(),
    ));
    let mut done: Vec<Step> = Vec::new();
    for _ in 0..STEPS {
        let step = random_step(&mut rng);
        match &step {
            Step::Compact => compact(&client).await,
            Step::RestartEtcd => etcd.restart().await,
            Step::ResumeAfterCompaction { changes } => {
                let saved = observed.watcher.snapshot();
                drop(observed);
                for change in changes {
                    apply_change(&client, &keys, change).await;
                }
                compact(&client).await;
                observed = Observed::new(Watcher::resume(
                    &Store::etcd(client.clone(), keys.clone()),
                    keys.instances(),
                    saved,
                ));
            }
            change => apply_change(&client, &keys, change).await,
        }
        done.push(step);
        let want = etcd_state(&client, &keys).await;
        let caught_up = wait_until(CATCH_UP, "the watcher to agree with etcd", || {
            observed.agrees(&want)
        })
        .await;
        if caught_up.is_err() {
            let got = observed.watcher.snapshot();
            let streamed = observed.from_updates.lock().expect("set lock").clone();
            panic!(
                "seed {seed}: after {} steps the watcher disagrees with etcd\n\
                 steps: {done:#?}\n\
                 etcd: {:?}\nsnapshot: {:?} (revision {}, connected {})\nfrom updates: {:?}\n\
                 rerun with SHOAL_WATCHER_SEEDS={seed}",
                done.len(),
                want.keys().collect::<Vec<_>>(),
                got.entries.keys().collect::<Vec<_>>(),
                got.revision,
                got.connected,
                streamed.keys().collect::<Vec<_>>(),
            );
        }
    }
    println!("seed {seed}: {STEPS} steps, the watcher agreed with etcd after each");
}

fn seeds() -> Vec<u64> {
    if let Ok(list) = std::env::var("SHOAL_WATCHER_SEEDS") {
        return list
            .split(',')
            .map(|s| {
                s.trim().parse().unwrap_or_else(|_| {
                    panic!("SHOAL_WATCHER_SEEDS: `{s}` is not a number; use e.g. 7,8")
                })
            })
            .collect();
    }
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(4);
    vec![1, 2, 3, clock]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_equals_etcd_after_random_changes_compactions_and_restarts() {
    for seed in seeds() {
        println!("seed {seed} (rerun with SHOAL_WATCHER_SEEDS={seed})");
        run_seed(seed).await;
    }
}
