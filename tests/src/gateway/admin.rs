//! What a gateway's admin API says ([`AdminApi`]): the instances of a
//! service in its routing table (`/api/v1/services/{service}`), which of
//! them it routes to, whether it is connected to etcd (`/healthz`), and
//! waits on those. For a gateway this harness started
//! ([`super::Gateway::admin`]) or one in a container (the compose check).
//! Reading the admin API sends no proxied request, so it never changes the
//! counts a test makes of the traffic.

use std::time::Duration;

use crate::wait::wait_until_async;

/// Every admin read gives up after this long.
const ANSWER: Duration = Duration::from_secs(2);

/// A gateway's admin listener.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// `host:port`.
    pub addr: String,
}

impl AdminApi {
    /// The admin listener at `addr` (`host:port`).
    pub fn at(addr: &str) -> AdminApi {
        AdminApi {
            addr: addr.to_owned(),
        }
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `/api/v1/services/{service}` (the service's stats and its
    /// `instances`); `None` if the admin API does not answer.
    pub async fn service(
        &self,
        http: &reqwest::Client,
        service: &str,
    ) -> Option<serde_json::Value> {
        let url = self.url(&format!("/api/v1/services/{service}"));
        let resp = http.get(url).timeout(ANSWER).send().await.ok()?;
        resp.json().await.ok()
    }

    /// The gateway's view of every instance of `service` (the `instances` of
    /// `/api/v1/services/{service}`); `None` if the admin API does not answer.
    pub async fn instances(
        &self,
        http: &reqwest::Client,
        service: &str,
    ) -> Option<Vec<serde_json::Value>> {
        let detail = self.service(http, service).await?;
        detail["instances"].as_array().cloned()
    }

    /// Ids of the instances of `service` the gateway lists in one of
    /// `states`; `None` if the admin API does not answer.
    pub async fn ids_in(
        &self,
        http: &reqwest::Client,
        service: &str,
        states: &[&str],
    ) -> Option<Vec<String>> {
        let instances = self.instances(http, service).await?;
        Some(
            instances
                .iter()
                .filter(|i| states.iter().any(|s| i["state"] == *s))
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// Ids of the instances of `service` listed `ready` (not ejected, not
    /// unconfirmed).
    pub async fn ready_ids(&self, http: &reqwest::Client, service: &str) -> Option<Vec<String>> {
        self.ids_in(http, service, &["ready"]).await
    }

    /// Ids of the instances of `service` the gateway routes to: listed
    /// `ready`, or `unconfirmed` (left the registry while ready, still
    /// routed until an attempt fails or its grace ends).
    pub async fn routable_ids(&self, http: &reqwest::Client, service: &str) -> Option<Vec<String>> {
        self.ids_in(http, service, &["ready", "unconfirmed"]).await
    }

    /// Whether the gateway says etcd is connected (`/healthz`).
    pub async fn registry_connected(&self, http: &reqwest::Client) -> bool {
        let resp = http.get(self.url("/healthz")).timeout(ANSWER).send().await;
        match resp {
            Ok(resp) => resp
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["registry"] == "connected"),
            Err(_) => false,
        }
    }

    /// Wait until the gateway lists every instance in `ids` of `service` as
    /// ready: it knows them, whether or not its policy has sent them
    /// anything yet (least-request's two random choices never pick the
    /// costliest of three idle instances, so traffic alone cannot tell).
    pub async fn wait_listed_ready(
        &self,
        http: &reqwest::Client,
        service: &str,
        ids: &[&str],
        timeout: Duration,
    ) -> Result<Duration, String> {
        wait_until_async(
            timeout,
            &format!("the gateway to list {ids:?} of {service} as ready"),
            || async {
                self.ready_ids(http, service)
                    .await
                    .is_some_and(|ready| ids.iter().all(|id| ready.iter().any(|r| r == id)))
            },
        )
        .await
    }
}
