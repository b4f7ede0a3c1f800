//! Time from one registry change until the gateway routes it: a new `ready`
//! instance is put (one etcd transaction) and the gateway's admin API
//! (`GET /api/v1/services`, read from the routing table the request path
//! uses) is polled every millisecond until the service's `ready_instances`
//! counts it. The instance is then deleted, and the next sample starts once
//! the table is back to where it was.

use std::time::{Duration, Instant};

use registry::Keys;
use registry::store::backend::{Backend, Op, Txn};
use registry::store::etcd::EtcdBackend;

use super::fill::ready_instance;

/// How long one change may take to show before the sample fails.
const GIVE_UP: Duration = Duration::from_secs(60);
/// Between two polls of the admin API (`shoal_tests::wait` polls every
/// 10 ms, too coarse for a figure of a few milliseconds).
const POLL: Duration = Duration::from_millis(1);

/// `samples` times: put a new instance of `service` at `addr`, wait until
/// the gateway whose admin API is at `admin` (e.g. `http://127.0.0.1:9090`)
/// routes it. Answers each sample's time, in order.
pub async fn measure(
    backend: &EtcdBackend,
    keys: &Keys,
    admin: &str,
    service: &str,
    addr: &str,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/services", admin.trim_end_matches('/'));
    let before = ready_instances(&http, &url, service).await?;
    let mut times = Vec::with_capacity(samples);
    for n in 0..samples {
        let id = format!("probe-{n}");
        let key = keys.instance(service, &id);
        let value = serde_json::to_vec(&ready_instance(service, &id, addr)?)?;
        let start = Instant::now();
        backend
            .txn(Txn::ops(vec![Op::put(key.clone(), value)]))
            .await
            .map_err(|e| anyhow::anyhow!("cannot put {key}: {e}"))?;
        wait_count(&http, &url, service, before + 1, start).await?;
        times.push(start.elapsed());
        backend
            .txn(Txn::ops(vec![Op::delete(key.clone())]))
            .await
            .map_err(|e| anyhow::anyhow!("cannot delete {key}: {e}"))?;
        wait_count(&http, &url, service, before, Instant::now()).await?;
    }
    Ok(times)
}

/// Poll until `service` has `want` ready instances; fails after [`GIVE_UP`].
async fn wait_count(
    http: &reqwest::Client,
    url: &str,
    service: &str,
    want: usize,
    start: Instant,
) -> anyhow::Result<()> {
    loop {
        // An unanswered poll (the gateway busy rebuilding its table) is one
        // more poll that did not see the change yet.
        let seen = ready_instances(http, url, service).await;
        if matches!(seen, Ok(n) if n == want) {
            return Ok(());
        }
        if start.elapsed() >= GIVE_UP {
            let seen = match seen {
                Ok(n) => format!("{n} ready instances"),
                Err(e) => format!("no answer ({e:#})"),
            };
            anyhow::bail!(
                "the gateway at {url} still shows {seen} of {service} after {GIVE_UP:?}, not {want}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `service`'s `ready_instances` in the gateway's `/api/v1/services`.
async fn ready_instances(
    http: &reqwest::Client,
    url: &str,
    service: &str,
) -> anyhow::Result<usize> {
    let services: Vec<registry::wire::gateway::ServiceSummary> = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| anyhow::anyhow!("cannot read {url}: {e}"))?
        .json()
        .await
        .map_err(|e| anyhow::anyhow!("{url} answered something else than services: {e}"))?;
    services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.ready_instances)
        .ok_or_else(|| anyhow::anyhow!("the gateway at {url} knows no service {service}"))
}
