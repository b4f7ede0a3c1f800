//! The admin side: everything the admin listener serves, and the gateway's
//! announcement that tells the autoscaler where that listener is. It sits on
//! top of the data plane (it reads the routing table, its pools and their
//! live stats); the data plane imports nothing from here, which a unit test
//! in the crate root checks.
//!
//! This file holds what every handler shares: [`AdminState`] and the error
//! type [`ApiError`] (`{"error","detail"}` with its status, documented as
//! [`ErrorBody`]). Files:
//! - [`stats`]: `/healthz`, `/metrics` and the routing table's services and
//!   instances with their live stats (the autoscaler reads these);
//!   [`metrics`] writes the Prometheus text.
//! - [`api`]: the router and its OpenAPI document, with the registry reads,
//!   the operator's writes (behind `--admin-token`) and the dashboard's event
//!   stream; [`dashboard`] is the page.
//! - [`control`]: routes, policies, events and rollouts as the admin API
//!   reads them, followed off the request path; [`history`]: the charts'
//!   samples.
//! - [`announce`]: the gateway's own entry under `/shoal/gateways/`, which
//!   carries the admin address: it is how the autoscaler finds this
//!   listener, and nothing on the request path needs it.

pub mod announce;
pub mod api;
pub mod control;
pub mod dashboard;
pub mod history;
pub mod metrics;
pub mod stats;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::table::TableHandle;
use api::AdminToken;
use control::Control;
use history::History;

/// What the admin handlers read and write with.
#[derive(Clone)]
pub struct AdminState {
    pub table: TableHandle,
    /// This gateway's id in the registry.
    pub gateway_id: String,
    /// Routes, policies, events and rollouts, and the client for writes.
    pub control: Control,
    /// The charts' samples.
    pub history: History,
    /// Required for writes when set (`--admin-token`).
    pub token: Option<AdminToken>,
    /// Cancelled when the gateway stops (ends the event streams).
    pub stop: tokio_util::sync::CancellationToken,
    /// `--access-log`, when on (for its dropped-lines counter).
    pub access_log: Option<crate::access_log::AccessLog>,
    /// The TLS certificates (files and registry), when `--tls-listen` is on
    /// (for their expiry metric).
    pub certs: Option<std::sync::Arc<crate::tls::Certs>>,
    /// Live gateways in the registry (the proxy's count, for the metric).
    pub live_gateways: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Client connections open and parked, on every proxy listener.
    pub clients: std::sync::Arc<crate::server::ClientConnections>,
}

/// State for unit tests: `table`, and an in-memory etcd that is down (the
/// registry reads as unreachable).
#[cfg(test)]
pub async fn test_state_with(table: TableHandle) -> AdminState {
    // An etcd that does not answer: what these tests check needs none.
    let etcd = registry::store::memory::MemoryEtcd::default();
    etcd.set_up(false);
    test_state_over(table, &etcd, None)
}

/// State for unit tests over `etcd` (an in-memory one, up or down), with
/// `token` required for writes when given.
#[cfg(test)]
pub fn test_state_over(
    table: TableHandle,
    etcd: &registry::store::memory::MemoryEtcd,
    token: Option<&str>,
) -> AdminState {
    let store = registry::Store::memory(etcd, registry::Keys::default());
    let routes = registry::Watcher::start(&store, store.keys().routes());
    AdminState {
        table,
        gateway_id: "gw-1".into(),
        control: Control::start(store, routes),
        history: History::default(),
        token: token.map(AdminToken::new),
        stop: tokio_util::sync::CancellationToken::new(),
        access_log: None,
        certs: None,
        live_gateways: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1)),
        clients: std::sync::Arc::default(),
    }
}

/// [`test_state_with`] an empty table.
#[cfg(test)]
pub async fn test_state() -> AdminState {
    test_state_with(empty_table()).await
}

/// A routing table with no service.
#[cfg(test)]
pub fn empty_table() -> TableHandle {
    let table = crate::table::LiveState::default().build(
        &Default::default(),
        &Default::default(),
        &crate::table::Defaults {
            service: "app".into(),
            policy: registry::model::BalancePolicy::RoundRobin,
        },
        false,
        0,
        std::time::Instant::now(),
    );
    TableHandle::new(table).0
}

/// An admin API error: `{"error": ..., "detail": ...}` with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }

    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// etcd did not answer (or refused): 503, saying that nothing may have
    /// been done.
    pub fn registry(what: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            format!(
                "the registry (etcd) cannot be reached to {what}: {problem}; try again once \
                 /healthz says `\"registry\":\"connected\"`"
            ),
        )
    }
}

/// Every error answer, in the OpenAPI document: the shape [`ApiError`]
/// serializes to.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // only documents
pub struct ErrorBody {
    /// A stable code: `bad_request`, `invalid`, `invalid_json`, `unauthorized`,
    /// `not_found`, `conflict`, `body_too_large`, `registry_unavailable`, ...
    error: String,
    /// What went wrong and what to do about it.
    detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            detail: &'a str,
        }
        let body = Body {
            error: self.error,
            detail: &self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}
