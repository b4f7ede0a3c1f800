//! Reads of the registry's control data: routes, scaling policies, scaling
//! events and rollouts, served from [`control`](crate::admin::control)'s watchers (never a
//! call to etcd in the handler), and the charts' history.
//!
//! While etcd is unreachable these answer from the last snapshot with
//! `x-shoal-registry: unreachable`; before the first list has succeeded they
//! answer 503, since there is nothing to show.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderName;
use registry::model::{NamedRoute, Rollout, ScalingEvent, ScalingPolicy};
use registry::wire::admin::RouteView;
use registry::{RegistryValue, Snapshot};
use serde::Deserialize;
use utoipa::IntoParams;

use super::params::{ApiQuery, Name};
use crate::admin::history::Sample;
use crate::admin::{AdminState, ApiError, ErrorBody};

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

/// `GET /api/v1/routes`.
#[utoipa::path(get, path = "/api/v1/routes", tag = "registry",
    responses(
        (status = 200, description = "Every route in the registry, by name", body = Vec<RouteView>, headers(("x-shoal-registry" = String, description = "`connected`, or `unreachable` while this comes from the last snapshot"))),
        (status = 503, description = "The registry has not been read yet", body = ErrorBody),
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
        (status = 200, description = "Every scaling policy", body = Vec<ScalingPolicy>, headers(("x-shoal-registry" = String, description = "`connected`, or `unreachable` while this comes from the last snapshot"))),
        (status = 503, description = "The registry has not been read yet", body = ErrorBody),
    ))]
pub async fn policies_list(State(state): State<AdminState>) -> Read<Vec<ScalingPolicy>> {
    let (policies, connected) = values(state.control.policies(), "policies")?;
    answer(policies, connected)
}

/// `?limit=` of the events endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// How many of the newest events (default 50, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// `GET /api/v1/events/{service}`.
#[utoipa::path(get, path = "/api/v1/events/{service}", tag = "registry",
    params(("service" = String, Path, description = "Service name"), EventsQuery),
    responses(
        (status = 200, description = "The autoscaler's newest events for the service, newest first", body = Vec<ScalingEvent>, headers(("x-shoal-registry" = String, description = "`connected`, or `unreachable` while this comes from the last snapshot"))),
        (status = 400, description = "Bad service name or query string (`limit` 1..=1000)", body = ErrorBody),
        (status = 503, description = "The registry has not been read yet", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<AdminState>,
    Name(service): Name,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Read<Vec<ScalingEvent>> {
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
        (status = 200, description = "Rolling restarts requested and not finished", body = Vec<Rollout>, headers(("x-shoal-registry" = String, description = "`connected`, or `unreachable` while this comes from the last snapshot"))),
        (status = 503, description = "The registry has not been read yet", body = ErrorBody),
    ))]
pub async fn rollouts_list(State(state): State<AdminState>) -> Read<Vec<Rollout>> {
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
