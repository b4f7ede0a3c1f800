//! A gateway's view of its services, as its admin API serves it and the
//! autoscaler reads it (`GET /api/v1/services`, `/api/v1/services/{service}`,
//! `/healthz`).
//!
//! [`ServiceSummary`], one per service the gateway's table knows (services
//! with instances, the default service, services named by a route):
//! - `name`, `ready_instances`, `total_instances`, `ejected_instances`,
//!   `unconfirmed_instances` (left the registry while ready, still routed);
//! - [`StatsSnapshot`] of the service's client requests, whatever the
//!   instance: `in_flight`, `requests_total`, `errors_total` (5xx and
//!   failed), `rate` and `error_rate` (per second over the last 10 s),
//!   `p50_ms`, `p95_ms`, `p99_ms` (over the last 10 s; `null` when there
//!   were no requests);
//! - `held_now`, `held_total`, `hold_timeouts_total` (requests waiting for
//!   a ready instance: scale from zero), `retries_total`,
//!   `retries_refused_total` (retries and hedges refused by the retry
//!   budget), `hedges_total`, `hedges_won_total` (hedged requests: sent, and
//!   answered by the hedge), `headers_p99_ms` (the recent p99 time to
//!   response headers the hedge delay is clamped from; `null` until known).
//!
//! [`ServiceDetail`]: the summary's fields plus `instances`, one
//! [`InstanceView`] per registered instance whatever its state, sorted by id:
//! - from the registry: `id`, `addr`, `version`, `zone`, `labels`, `weight`,
//!   `registry_state` (`starting` | `ready` | `draining`), `age_secs` (since
//!   the instance's `started_at`);
//! - `state`: `registry_state`, or `ejected` while passive health has
//!   ejected it, or `unconfirmed` while it is kept routable after leaving
//!   the registry while ready; `ejected`, `ejected_for_ms` (time left,
//!   `null` when not ejected), `consecutive_failures`, `ejections` (in a
//!   row, which drive the back-off);
//! - the same [`StatsSnapshot`], counting attempts sent to this instance;
//! - `peak_ewma_ms`: the latency estimate least-request balancing uses (the
//!   worst recent latency, decaying: peak-EWMA).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::InstanceState;

/// Request statistics of a service or an instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsSnapshot {
    pub in_flight: i64,
    pub requests_total: u64,
    pub errors_total: u64,
    /// Requests per second over the recent window.
    pub rate: f64,
    /// Errors per second over the recent window.
    pub error_rate: f64,
    /// Latency percentiles over the recent window, in ms (`null` without requests).
    #[serde(deserialize_with = "super::nullable")]
    pub p50_ms: Option<f64>,
    #[serde(deserialize_with = "super::nullable")]
    pub p95_ms: Option<f64>,
    #[serde(deserialize_with = "super::nullable")]
    pub p99_ms: Option<f64>,
}

/// One service in `GET /api/v1/services` (fields on the module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceSummary {
    pub name: String,
    pub ready_instances: usize,
    pub total_instances: usize,
    pub ejected_instances: usize,
    pub unconfirmed_instances: usize,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    pub held_now: i64,
    pub held_total: u64,
    pub hold_timeouts_total: u64,
    pub retries_total: u64,
    pub retries_refused_total: u64,
    /// Hedges sent and hedges whose response was relayed (absent from
    /// gateways before hedging: read as 0).
    #[serde(default)]
    pub hedges_total: u64,
    #[serde(default)]
    pub hedges_won_total: u64,
    /// The service's recent p99 time to response headers the hedge delay is
    /// taken from; `null` until a second has had 10 responses.
    #[serde(default)]
    pub headers_p99_ms: Option<f64>,
}

/// `GET /api/v1/services/{service}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceDetail {
    #[serde(flatten)]
    pub summary: ServiceSummary,
    pub instances: Vec<InstanceView>,
}

/// One instance in [`ServiceDetail`] (fields on the module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceView {
    pub id: String,
    pub addr: String,
    pub version: String,
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub state: InstanceStatus,
    pub registry_state: InstanceState,
    pub ejected: bool,
    #[serde(deserialize_with = "super::nullable")]
    pub ejected_for_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub ejections: u32,
    pub age_secs: f64,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    pub peak_ewma_ms: f64,
}

/// An instance's state as a gateway reports it: its registry state, unless
/// passive health has ejected it or it is kept routable unconfirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Starting,
    Ready,
    Draining,
    Ejected,
    /// Left the registry while ready and kept routable for a grace period
    /// until it registers again.
    Unconfirmed,
}

impl InstanceStatus {
    pub const ALL: [InstanceStatus; 5] = [
        InstanceStatus::Starting,
        InstanceStatus::Ready,
        InstanceStatus::Draining,
        InstanceStatus::Ejected,
        InstanceStatus::Unconfirmed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            InstanceStatus::Starting => "starting",
            InstanceStatus::Ready => "ready",
            InstanceStatus::Draining => "draining",
            InstanceStatus::Ejected => "ejected",
            InstanceStatus::Unconfirmed => "unconfirmed",
        }
    }
}

/// `GET /healthz` on the admin listener: always 200 (the gateway keeps
/// serving from its last snapshot while etcd is away).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthReport {
    /// `ok`.
    pub status: String,
    pub gateway_id: String,
    /// `connected` or `unreachable`.
    pub registry: String,
    /// The routing table's generation.
    pub generation: u64,
    /// How many services the table knows.
    pub services: usize,
    /// Only while the registry is unreachable: routing uses the last known
    /// instances and routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> StatsSnapshot {
        StatsSnapshot {
            in_flight: 3,
            requests_total: 100,
            errors_total: 2,
            rate: 9.5,
            error_rate: 0.1,
            p50_ms: Some(1.5),
            p95_ms: Some(4.0),
            p99_ms: None,
        }
    }

    fn detail() -> ServiceDetail {
        ServiceDetail {
            summary: ServiceSummary {
                name: "app".into(),
                ready_instances: 1,
                total_instances: 1,
                ejected_instances: 0,
                unconfirmed_instances: 0,
                stats: stats(),
                held_now: 1,
                held_total: 4,
                hold_timeouts_total: 0,
                retries_total: 2,
                retries_refused_total: 0,
                hedges_total: 3,
                hedges_won_total: 1,
                headers_p99_ms: Some(2.5),
            },
            instances: vec![InstanceView {
                id: "i1".into(),
                addr: "127.0.0.1:8081".into(),
                version: "1".into(),
                zone: String::new(),
                labels: BTreeMap::from([("k".into(), "v".into())]),
                weight: 1,
                state: InstanceStatus::Ejected,
                registry_state: InstanceState::Ready,
                ejected: true,
                ejected_for_ms: Some(250),
                consecutive_failures: 3,
                ejections: 1,
                age_secs: 12.5,
                stats: stats(),
                peak_ewma_ms: 2.25,
            }],
        }
    }

    #[test]
    fn a_service_detail_survives_a_round_trip() {
        let detail = detail();
        let json = serde_json::to_string(&detail).unwrap();
        assert_eq!(
            serde_json::from_str::<ServiceDetail>(&json).unwrap(),
            detail
        );
        let health = HealthReport {
            status: "ok".into(),
            gateway_id: "gw".into(),
            registry: "unreachable".into(),
            generation: 7,
            services: 2,
            detail: Some("routing uses the last table".into()),
        };
        let json = serde_json::to_string(&health).unwrap();
        assert_eq!(serde_json::from_str::<HealthReport>(&json).unwrap(), health);
    }

    #[test]
    fn version_1_is_flat_snake_case_json() {
        let json = serde_json::to_value(detail()).unwrap();
        for field in [
            "name",
            "ready_instances",
            "in_flight",
            "rate",
            "p95_ms",
            "held_now",
            "instances",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        let instance = &json["instances"][0];
        assert_eq!(instance["state"], "ejected");
        assert_eq!(instance["registry_state"], "ready");
        assert_eq!(instance["in_flight"], 3);
        assert_eq!(instance["p99_ms"], serde_json::Value::Null);
    }

    #[test]
    fn a_missing_field_is_an_error_not_a_zero() {
        let mut json = serde_json::to_value(detail()).unwrap();
        json.as_object_mut().unwrap().remove("held_now");
        let err = serde_json::from_value::<ServiceDetail>(json).unwrap_err();
        assert!(err.to_string().contains("held_now"), "{err}");

        let mut json = serde_json::to_value(detail()).unwrap();
        json.as_object_mut().unwrap().remove("p95_ms");
        let err = serde_json::from_value::<ServiceDetail>(json).unwrap_err();
        assert!(
            err.to_string().contains("p95_ms"),
            "a null is written, not left out: {err}"
        );

        let mut json = serde_json::to_value(detail()).unwrap();
        json["instances"][0]
            .as_object_mut()
            .unwrap()
            .remove("in_flight");
        let err = serde_json::from_value::<ServiceDetail>(json).unwrap_err();
        assert!(err.to_string().contains("in_flight"), "{err}");
    }
}
