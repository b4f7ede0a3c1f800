//! The gateway end to end: a real etcd, real app servers and a real gateway
//! process, with traffic sent through the gateway's proxy listener.
//!
//! - [`balancing`]: round-robin spread, consistent-hash stability and movement, sticky cookies.
//! - [`failover`]: instances killed or drained under load, retries and ejection, held requests.
//! - [`discovery`]: registry-to-routing time, an etcd outage, malformed entries.
//! - [`limits`]: body size and slow clients.
//! - [`rate_limit`]: routes' rate limits per client, per header and shared by gateways.
//! - [`framing`]: strict HTTP/1.1 framing and forwarded headers, on raw sockets.
//! - [`registry_loss`]: keys deleted or etcd wiped under load; the table never empties.
//! - [`replace`]: a gateway replaced in place (`--reuse-port`) refuses nothing.
//! - [`access_log`]: `--access-log` lines, `x-request-id` and `traceparent` on their way through.
//! - [`admin`]: per-instance stats, Prometheus metrics, health.
//! - [`api`]: the admin API's registry reads and operator writes, the token rule.
//! - [`grpc`]: gRPC over h2c routes (tonic both ends): streaming, trailers, gRPC statuses, a kill and a drain under load.
//! - [`tls`]: `--tls-listen`: ALPN, SNI, TLS versions, start-up errors, SIGHUP reload, HTTPS redirects.
//!
//! Each test starts its platform (`shoal_tests::Platform`: etcd, app
//! servers, a gateway with the flags under test). Every proxied response
//! names the instance that served it in `x-shoal-instance`; the tests count
//! and compare those.

mod access_log;
mod admin;
mod api;
pub(crate) mod balancing;
mod discovery;
mod failover;
mod framing;
mod grpc;
mod limits;
mod rate_limit;
mod registry_loss;
mod replace;
mod tls;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_tests::wait::wait_for;
use shoal_tests::{Etcd, Gateway};

/// Header in which the gateway names the instance that served a response.
pub const INSTANCE: &str = "x-shoal-instance";

/// An HTTP client that never goes through a proxy from the environment,
/// with room for a request held 10 s by the gateway.
pub fn http() -> reqwest::Client {
    shoal_tests::http_client(Duration::from_secs(15))
}

/// `gateway`'s `/metrics` text (asserting a 200).
pub async fn metrics_text(http: &reqwest::Client, gateway: &Gateway) -> String {
    let response = http
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The sum of `metric`'s samples whose labels contain `label` in a
/// Prometheus text exposition.
pub fn metric_sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The instance that served `resp`, or "" if the header is missing.
pub fn served_by(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(INSTANCE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Send GETs to `path` through the gateway until every instance in `ids` has
/// served one; panics after `timeout`. Returns how long it took.
pub async fn wait_routed(
    http: &reqwest::Client,
    gateway: &Gateway,
    path: &str,
    ids: &[&str],
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let seen = std::sync::Mutex::new(Spread::new());
    let routed = shoal_tests::wait_until_async(timeout, "routed", || async {
        let request = http.get(gateway.url(path)).timeout(Duration::from_secs(2));
        let answer = request.send().await;
        let mut seen = seen.lock().unwrap();
        if let Ok(resp) = answer {
            *seen.entry(served_by(&resp)).or_default() += 1;
        }
        ids.iter().all(|id| seen.contains_key(*id))
    })
    .await;
    if routed.is_err() {
        panic!(
            "{path} not routed to every instance within {timeout:?}: wanted {ids:?}, served by {:?}; {}",
            seen.lock().unwrap(),
            gateway_log(gateway)
        );
    }
    started.elapsed()
}

/// The stats of instance `id` in a `/api/v1/services/{service}` answer.
pub fn instance_stats<'a>(
    service: &'a serde_json::Value,
    id: &str,
) -> Option<&'a serde_json::Value> {
    service["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
}

/// Wait until the gateway's admin API lists every instance in `ids` of
/// `service` as ready; panics after `timeout` with the gateway's log.
pub async fn wait_known(
    http: &reqwest::Client,
    gateway: &Gateway,
    service: &str,
    ids: &[&str],
    timeout: Duration,
) {
    if let Err(e) = gateway
        .admin()
        .wait_listed_ready(http, service, ids, timeout)
        .await
    {
        panic!("{e}; {}", gateway_log(gateway));
    }
}

/// GET `url` (JSON) until `cond` holds for the answer, and return it; panics
/// after `timeout` with the last answer.
pub async fn wait_json(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let found = wait_for(timeout, what, || async {
        let answer = get_json(http, url).await;
        let found = cond(&answer).then(|| answer.clone());
        *last.lock().unwrap() = answer;
        found
    })
    .await;
    found.unwrap_or_else(|e| panic!("{e}; last {url}: {:#}", last.lock().unwrap()))
}

/// Write the route `name` (JSON text) to the registry.
pub async fn put_route(etcd: &Etcd, name: &str, route: &str) {
    let mut client = etcd.client().await;
    client
        .put(registry::Keys::default().route(name), route, None)
        .await
        .expect("put route");
}

/// GET `url` and parse its JSON body (whatever the status).
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let resp = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let text = resp.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// Count of responses per serving instance.
pub type Spread = BTreeMap<String, u32>;

/// `n` sequential GETs of `path`; every one must be a 200. Returns the spread.
pub async fn spread_of(http: &reqwest::Client, gateway: &Gateway, path: &str, n: u32) -> Spread {
    let mut spread = Spread::new();
    for i in 0..n {
        let resp = http
            .get(gateway.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status(), 200, "request {i}");
        let id = served_by(&resp);
        let body = resp.text().await.unwrap();
        assert!(
            body.starts_with(&format!("Hello from instance {id} ")),
            "x-shoal-instance `{id}` does not match the body `{body}`"
        );
        *spread.entry(id).or_default() += 1;
    }
    spread
}

/// The gateway's stderr log, to attach to a failure message.
pub fn gateway_log(gateway: &Gateway) -> String {
    format!(
        "gateway log ({}):\n{}",
        gateway.proc.log_path().display(),
        gateway.proc.stderr()
    )
}
