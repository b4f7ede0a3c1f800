//! Reads of the registry's control data: routes, scaling policies, scaling
//! events and rollouts, served from [`control`](crate::admin::control)'s watchers (never a
//! call to etcd in the handler), and the charts' history.
//!
//! While etcd is unreachable these answer from the last snapshot with
//! `x-shoal-registry: unreachable`; before the first list has succeeded they
//! answer 503, since there is nothing to show.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderName;
use registry::keys::validate_segment;
use registry::model::{NamedRoute, Route};
use registry::{RegistryValue, Snapshot};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::admin::history::Sample;
use crate::admin::{AdminState, ApiError};

/// Says whether a read comes from a live watch or the last snapshot.
pub const REGISTRY_HEADER: HeaderName = HeaderName::from_static("x-shoal-registry");

/// Events returned when `?limit=` is absent.
pub const DEFAULT_EVENT_LIMIT: usize = 50;
/// The largest `?limit=`.
pub const MAX_EVENT_LIMIT: usize = 1000;

type Read<T> = Result<([(HeaderName, &'static str); 1], Json<T>), ApiError>;

/// The values of `snapshot`, or 503 if it never listed.
fn values<T: RegistryValue>(snapshot: Snapshot<T>, what: &str) -> Result<(Vec<T>, bool), ApiError> {
    if !snapshot.synced {
        return Err(ApiError::registry(
            &format!("read the {what}"),
            "no list has succeeded since this gateway started",
        ));
    }
    Ok((
        snapshot.entries.values().cloned().collect(),
        snapshot.connected,
    ))
}

fn answer<T>(body: T, connected: bool) -> Read<T> {
    let state = if connected {
        "connected"
    } else {
        "unreachable"
    };
    Ok(([(REGISTRY_HEADER, state)], Json(body)))
}

/// A route with its name.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteView {
    pub name: String,
    /// The route as stored: `host`, `path_prefix`, `service`, `policy`,
    /// `hash_key`, `strip_prefix`, `timeout_ms`, `try_timeout_ms`, `retries`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub route: Route,
}

/// `GET /api/v1/routes`.
#[utoipa::path(get, path = "/api/v1/routes", tag = "registry",
    responses(
        (status = 200, description = "Every route in the registry, by name", body = Vec<RouteView>),
        (status = 503, description = "The registry has not been read yet", body = crate::admin::ErrorBody),
    ))]
pub async fn routes_list(State(state): State<AdminState>) -> Read<Vec<RouteView>> {
    let (routes, connected) = values(state.control.routes(), "routes")?;
    let routes = routes
        .into_iter()
        .map(|NamedRoute { name, route }| RouteView { name, route })
        .collect();
    answer(routes, connected)
}

/// `GET /api/v1/policies`.
#[utoipa::path(get, path = "/api/v1/policies", tag = "registry",
    responses(
        (status = 200, description = "Every scaling policy (`service`, `min`, `max`, `metric`, `target`, ..., `pinned`)", body = Vec<Object>),
        (status = 503, description = "The registry has not been read yet", body = crate::admin::ErrorBody),
    ))]
pub async fn policies_list(
    State(state): State<AdminState>,
) -> Read<Vec<registry::model::ScalingPolicy>> {
    let (policies, connected) = values(state.control.policies(), "policies")?;
    answer(policies, connected)
}

/// `?limit=` of the events endpoint.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsQuery {
    /// How many of the newest events (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// `GET /api/v1/events/{service}`.
#[utoipa::path(get, path = "/api/v1/events/{service}", tag = "registry",
    params(("service" = String, Path, description = "Service name"), EventsQuery),
    responses(
        (status = 200, description = "The autoscaler's newest events for the service, newest first \
            (`at`, `kind`, `current`, `desired`, `reason`, `bounded_by`, `inputs`, `instance`)", body = Vec<Object>),
        (status = 400, description = "Bad service name or limit", body = crate::admin::ErrorBody),
        (status = 503, description = "The registry has not been read yet", body = crate::admin::ErrorBody),
    ))]
pub async fn events(
    State(state): State<AdminState>,
    Path(service): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Read<Vec<registry::model::ScalingEvent>> {
    validate_segment("service", &service)
        .map_err(|e| ApiError::bad_request("bad_request", e.to_string()))?;
    let limit = query.limit.unwrap_or(DEFAULT_EVENT_LIMIT);
    if !(1..=MAX_EVENT_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_request",
            format!(
                "limit {limit} is out of range; use 1..={MAX_EVENT_LIMIT} (default {DEFAULT_EVENT_LIMIT})"
            ),
        ));
    }
    let snapshot = state.control.events();
    if !snapshot.synced {
        return Err(ApiError::registry(
            "read the scaling events",
            "no list has succeeded since this gateway started",
        ));
    }
    answer(state.control.events_of(&service, limit), snapshot.connected)
}

/// `GET /api/v1/rollouts`.
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "registry",
    responses(
        (status = 200, description = "Rolling restarts requested and not finished \
            (`service`, `requested_at`, `requested_by`, `max_surge`, `max_unavailable`, `replacing`)", body = Vec<Object>),
        (status = 503, description = "The registry has not been read yet", body = crate::admin::ErrorBody),
    ))]
pub async fn rollouts_list(State(state): State<AdminState>) -> Read<Vec<registry::model::Rollout>> {
    let (rollouts, connected) = values(state.control.rollouts(), "rollouts")?;
    answer(rollouts, connected)
}

/// `GET /api/v1/history`.
#[utoipa::path(get, path = "/api/v1/history", tag = "stats",
    responses((status = 200, description = "Per service, one sample a second for the last 10 minutes, oldest first",
        body = BTreeMap<String, Vec<Sample>>)))]
pub async fn history(State(state): State<AdminState>) -> Json<BTreeMap<String, Vec<Sample>>> {
    Json(state.history.all())
}
